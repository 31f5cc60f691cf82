import { Hono } from 'hono';
import type { ApiEnv, RouteDeps } from '../deps.js';

/** GET /v1/hosts: live hosts with their pools (the heartbeat records workers write). */
export function hostRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  app.get('/', async (c) => c.json({ hosts: await deps.hosts.list() }));
  return app;
}
