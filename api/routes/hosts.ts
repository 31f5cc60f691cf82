import { Hono } from 'hono';
import { z } from 'zod';
import { RunboxError } from '../../core/errors.js';
import { HostSchema, type Host } from '../../core/store/hosts.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { hostCommand } from '../host-command.js';
import { adminOnly } from '../middleware/auth.js';

/** Draining a host moves every running job; the answer waits for that (within this limit). */
const DRAIN_TIMEOUT_SEC = 600;

/**
 * What a host record shows a tenant's token: an allowlist, so a field added to heartbeats later
 * stays admin-only until someone decides otherwise. Not shown: `address` and `migrationPort`
 * (where to attack the migration channel), `jobs` (other tenants' job ids), `instance`.
 */
export const TenantHostSchema = HostSchema.pick({
  id: true,
  startedAt: true,
  heartbeatAt: true,
  draining: true,
  running: true,
  capacity: true,
  pools: true,
  templates: true,
  version: true,
  checkpointNonRoot: true,
  runtime: true,
  userns: true,
});
export type TenantHost = z.infer<typeof TenantHostSchema>;

export function tenantView(h: Host): TenantHost {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(TenantHostSchema.shape)) if (h[k as keyof Host] !== undefined) out[k] = h[k as keyof Host];
  return out as TenantHost;
}

/**
 * GET /v1/hosts: live hosts with their pools (the heartbeat records workers write); the whole
 * record for admin tokens, TenantHostSchema's fields for the others.
 * POST /v1/hosts/:id/drain and /resume: operator actions, admin tokens only (a host serves every
 * tenant); anyone else gets 403 before the host is even looked up.
 */
export function hostRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  app.get('/', async (c) => {
    const hosts = await deps.hosts.list();
    return c.json({ hosts: c.get('admin') ? hosts : hosts.map(tenantView) });
  });

  app.post('/:id/drain', adminOnly('draining a host'), async (c) => {
    const id = c.req.param('id');
    const host = await deps.hosts.get(id);
    if (!host) throw new RunboxError('not_found', `host ${id} not found`);
    const result = await hostCommand(deps, id, { op: 'drain' }, DRAIN_TIMEOUT_SEC);
    return c.json({ host: await deps.hosts.get(id), ...(result as object) });
  });

  app.post('/:id/resume', adminOnly('resuming a host'), async (c) => {
    const id = c.req.param('id');
    if (!(await deps.hosts.get(id))) throw new RunboxError('not_found', `host ${id} not found`);
    await hostCommand(deps, id, { op: 'resume' }, 30);
    return c.json({ host: await deps.hosts.get(id) });
  });
  return app;
}
