import { Hono } from 'hono';
import { z } from 'zod';
import { canCheckpoint, nonRootMessage } from '../../core/checkpointable.js';
import { tenantCaps } from '../../core/config.js';
import { RunboxError } from '../../core/errors.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { hostCommand } from '../host-command.js';
import { assertAdmin } from '../middleware/auth.js';
import { ownJob } from '../own-job.js';
import { ApiError } from '../problem.js';
import { readJson } from '../request-input.js';
import { parseOr400 } from '../validate.js';

/** How long the API waits for the host running the job to checkpoint or move it. */
const COMMAND_TIMEOUT_SEC = 180;

export const MigrateRequestSchema = z
  .object({
    host: z.string().regex(/^[A-Za-z0-9._-]{1,63}$/).optional(),
    /** auto: post-copy when both hosts can, else stop-and-copy. */
    mode: z.enum(['auto', 'post-copy', 'stop-and-copy']).optional(),
  })
  .strict();

/**
 * POST /v1/jobs/:id/checkpoint: the host running the job checkpoints it now (it keeps running);
 * 201 with the checkpoint. POST /v1/jobs/:id/migrate {host?, mode?}: the job moves, live, to `host`
 * (or the host with the most free capacity), with post-copy where both hosts can unless `mode` says
 * otherwise; 200 with the job, whose `migrations` show the timings.
 */
export function checkpointRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  const runningJob = async (tenant: string, id: string, what: string) => {
    const job = await ownJob(deps.jobs, tenant, id);
    if (job.status !== 'running' && job.status !== 'checkpointing') {
      throw new RunboxError('conflict', `job ${id} is ${job.status}; only a running job can be ${what}`, { meta: { jobStatus: job.status } });
    }
    const host = job.host ? await deps.hosts.get(job.host) : null;
    if (!host) throw new RunboxError('unavailable', `the host running job ${id} (${job.host}) is not reachable`);
    // Refused up front (the job keeps running): a dump would fail on this host anyway.
    if (!canCheckpoint(job.runAs, host)) throw new RunboxError('checkpoint_unsupported', nonRootMessage(id, job.runAs!, [host.id]));
    return { job, host };
  };

  app.post('/:id/checkpoint', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    const { host } = await runningJob(c.get('tenant'), id, 'checkpointed');
    const done = await claimCheckpointSlot(deps, id);
    try {
      return c.json((await hostCommand(deps, host.id, { op: 'checkpoint', jobId: id }, COMMAND_TIMEOUT_SEC)) as object, 201);
    } finally {
      await done();
    }
  });

  app.post('/:id/migrate', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    // The body is optional: no body (or {}) lets runbox pick the target.
    const raw = (await c.req.text()).trim() ? await readJson(c) : {};
    const body = parseOr400(MigrateRequestSchema, raw, 'migrate request');
    // Placement is the operator's: a tenant choosing hosts could pile its jobs onto one victim host.
    if (body.host) assertAdmin(c, 'choosing the target host of a migration', 'leave out "host" and runbox picks one');
    const { job, host } = await runningJob(c.get('tenant'), id, 'migrated');
    if (body.host) {
      const target = await deps.hosts.get(body.host);
      if (!target) throw new RunboxError('invalid_argument', `host ${body.host} is not a live host`);
      if (target.id === host.id) throw new RunboxError('invalid_argument', `job ${id} already runs on ${host.id}`);
      if (target.draining) throw new RunboxError('conflict', `host ${target.id} is draining`);
      if (!canCheckpoint(job.runAs, target)) throw new RunboxError('checkpoint_unsupported', nonRootMessage(id, job.runAs!, [target.id]));
    }
    await hostCommand(deps, host.id, { op: 'migrate', jobId: id, target: body.host, mode: body.mode }, COMMAND_TIMEOUT_SEC);
    return c.json(await ownJob(deps.jobs, c.get('tenant'), id), 200);
  });

  return app;
}

/**
 * Every checkpoint freezes the job and runs CRIU on its host's CPU: one request per job per
 * RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC, counted from the end of the previous one (whatever its
 * outcome: a failed dump costs the host as much), in Redis so every API process shares it.
 * Returns what to call when the checkpoint ended.
 */
export async function claimCheckpointSlot(deps: RouteDeps, id: string): Promise<() => Promise<void>> {
  const sec = tenantCaps(deps.config).checkpointMinIntervalSec;
  if (sec <= 0) return async () => undefined;
  const key = deps.keys.checkpointRequested(id);
  const floorMs = Math.round(sec * 1000);
  // Held while the checkpoint runs (an API that dies meanwhile lets it expire), then for the floor.
  if ((await deps.redis.set(key, '1', 'PX', COMMAND_TIMEOUT_SEC * 1000 + floorMs, 'NX')) === 'OK') {
    return async () => void (await deps.redis.set(key, '1', 'PX', floorMs).catch(() => undefined));
  }
  const retry = Math.max(1, Math.ceil((await deps.redis.pttl(key)) / 1000));
  throw new ApiError(
    'rate_limited',
    `job ${id} was checkpointed less than ${sec} s ago (or is being checkpointed): at most one checkpoint request per ${sec} s per job (RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC); retry in ${retry} s`,
    { meta: { minIntervalSec: sec, retryAfterSec: retry }, headers: { 'Retry-After': String(retry) } },
  );
}
