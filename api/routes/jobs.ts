import { Hono, type Context } from 'hono';
import { isRunboxError, RunboxError } from '../../core/errors.js';
import { tenantCaps } from '../../core/config.js';
import { isTerminal, JobRequestSchema, type Job } from '../../core/job.js';
import { QueuedQuotaExceeded } from '../../core/store/jobs.js';
import { submitJob, type Submission } from '../../core/submit.js';
import { aborted, anySignal } from '../abort.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { ownJob } from '../own-job.js';
import { ApiError } from '../problem.js';
import { ListQuerySchema } from '../schemas.js';
import { parseIdempotencyKey, parseWait, readJson } from '../request-input.js';
import { parseOr400 } from '../validate.js';

/** One index prune per this many creates keeps the tenant index bounded without a cron. */
const PRUNE_EVERY = 100;
/** Retry-After of a queued-work quota refusal: when jobs start is up to the workers. */
const QUEUED_QUOTA_RETRY_SEC = 10;

/** POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/:id, POST /v1/jobs/:id/cancel. */
export function jobRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  app.post('/', async (c) => {
    const tenant = c.get('tenant');
    const wait = parseWait(c.req.query('wait'), c.req.header('prefer'));
    const idemKey = parseIdempotencyKey(c.req.header('idempotency-key'));
    const req = parseOr400(JobRequestSchema, await readJson(c), 'job request');

    const { job, created } = await submitWithinQuota(deps, c, { tenant, request: req, idempotencyKey: idemKey });
    c.set('jobId', job.id);
    if (created && Math.random() < 1 / PRUNE_EVERY) pruneIndex(deps, c, tenant);

    let out = job;
    if (wait.sec > 0 && !isTerminal(job.status)) out = await holdUntilDone(deps, c, job, wait.sec);
    if (wait.fromPrefer) c.header('Preference-Applied', `wait=${wait.sec}`);
    c.header('Location', `/v1/jobs/${job.id}`);
    return c.json(out, created ? 201 : 200);
  });

  app.get('/', async (c) => {
    const q = c.req.queries();
    const query = parseOr400(
      ListQuerySchema,
      { status: q.status?.[0], label: q.label ?? [], limit: q.limit?.[0], cursor: q.cursor?.[0] },
      'query',
    );
    const labels = Object.fromEntries(query.label.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    const page = await deps.jobs.list(c.get('tenant'), {
      limit: query.limit,
      cursor: query.cursor,
      status: query.status,
      labels: query.label.length ? labels : undefined,
    });
    return c.json({ jobs: page.jobs, nextCursor: page.nextCursor });
  });

  app.get('/:id', async (c) => {
    c.set('jobId', c.req.param('id'));
    return c.json(await ownJob(deps.jobs, c.get('tenant'), c.req.param('id')));
  });

  app.post('/:id/cancel', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    const job = await ownJob(deps.jobs, c.get('tenant'), id);
    if (job.status === 'queued') {
      try {
        await deps.jobs.transition(id, 'canceled', { finishedAt: new Date().toISOString(), error: null }, { from: ['queued'], note: 'canceled by API' });
        await deps.jobs.expire(id, deps.config.resultTtlSec);
        // Best effort: a worker that already took the queue entry sees the canceled record and skips it.
        await deps.queue.queue.remove(id).catch(() => 0);
        return c.json(await ownJob(deps.jobs, c.get('tenant'), id), 200);
      } catch (e) {
        if (!isRunboxError(e, 'conflict')) throw e; // a worker took it meanwhile: cancel it running
      }
    }
    const current = await ownJob(deps.jobs, c.get('tenant'), id);
    if (isTerminal(current.status)) {
      throw new RunboxError('conflict', `job ${id} already ${current.status}`, { meta: { jobStatus: current.status } });
    }
    await deps.jobs.update(id, { cancelRequested: true });
    await deps.queue.publishCancel(id);
    return c.json({ ...current, cancelRequested: true }, 202);
  });

  return app;
}

/** submitJob (core/submit.ts) with the tenant's queued-work caps, a cap reached answered 429 with Retry-After. */
async function submitWithinQuota(deps: RouteDeps, c: Context<ApiEnv>, s: Submission): Promise<{ job: Job; created: boolean }> {
  const caps = tenantCaps(deps.config);
  try {
    return await submitJob(
      {
        jobs: deps.jobs,
        queue: deps.queue,
        limits: deps.config,
        quota: { maxQueued: caps.tenantMaxQueued, maxQueuedBytes: caps.tenantMaxQueuedBytes },
        knownTemplates: deps.knownTemplates,
        log: c.get('log'),
      },
      s,
    );
  } catch (e) {
    if (!(e instanceof QueuedQuotaExceeded)) throw e;
    const { tenant, request: req } = s;
    const detail =
      e.quota === 'jobs'
        ? `tenant "${tenant}" already has ${e.used} queued jobs, the most allowed (RUNBOX_TENANT_MAX_QUEUED=${e.limit}); retry when some have started`
        : `tenant "${tenant}"'s queued jobs already hold ${e.used} bytes of requests; this one (${Buffer.byteLength(JSON.stringify(req))} bytes) would pass the cap (RUNBOX_TENANT_MAX_QUEUED_BYTES=${e.limit}); retry when some have started`;
    throw new ApiError('quota_exceeded', detail, {
      meta: { quota: e.quota === 'jobs' ? 'queued_jobs' : 'queued_bytes', limit: e.limit, used: e.used },
      headers: { 'Retry-After': String(QUEUED_QUOTA_RETRY_SEC) },
    });
  }
}

function pruneIndex(deps: RouteDeps, c: Context<ApiEnv>, tenant: string): void {
  deps.jobs.pruneIndex(tenant, Date.now() - deps.config.resultTtlSec * 1000).catch((e: unknown) => c.get('log').warn({ err: e }, 'index prune failed'));
}

/** Holds until the job ends, the wait expires, the client goes away or the server shuts down. */
async function holdUntilDone(deps: RouteDeps, c: Context<ApiEnv>, job: Job, sec: number): Promise<Job> {
  const stop = anySignal([deps.shutdown, c.req.raw.signal]);
  try {
    const current = async () => (await deps.jobs.get(job.id))?.job.status ?? null;
    await Promise.race([deps.events.waitTerminal(job.id, sec * 1000, current), aborted(stop.signal)]);
  } finally {
    stop.abort(); // settles aborted() if the wait won
    stop.dispose();
  }
  return (await deps.jobs.get(job.id))?.job ?? job;
}
