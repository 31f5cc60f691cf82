import { Hono } from 'hono';
import { RunboxError } from '../../core/errors.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { hostCommand } from '../host-command.js';

/** Draining a host moves every running job; the answer waits for that (within this limit). */
const DRAIN_TIMEOUT_SEC = 600;

/**
 * GET /v1/hosts: live hosts with their pools (the heartbeat records workers write).
 * POST /v1/hosts/:id/drain and /resume: operator actions, allowed to the tenants in
 * RUNBOX_ADMIN_TENANTS only (a host serves every tenant).
 */
export function hostRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  app.get('/', async (c) => c.json({ hosts: await deps.hosts.list() }));

  const admin = (tenant: string) => {
    if (!(deps.config.adminTenants ?? ['default']).includes(tenant)) {
      throw new RunboxError('not_found', 'no such host action for this tenant');
    }
  };

  app.post('/:id/drain', async (c) => {
    admin(c.get('tenant'));
    const id = c.req.param('id');
    const host = await deps.hosts.get(id);
    if (!host) throw new RunboxError('not_found', `host ${id} not found`);
    const result = await hostCommand(deps, id, { op: 'drain' }, DRAIN_TIMEOUT_SEC);
    return c.json({ host: await deps.hosts.get(id), ...(result as object) });
  });

  app.post('/:id/resume', async (c) => {
    admin(c.get('tenant'));
    const id = c.req.param('id');
    if (!(await deps.hosts.get(id))) throw new RunboxError('not_found', `host ${id} not found`);
    await hostCommand(deps, id, { op: 'resume' }, 30);
    return c.json({ host: await deps.hosts.get(id) });
  });
  return app;
}
