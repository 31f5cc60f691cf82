import { DelayedError, type Job as BullJob } from 'bullmq';
import { errorMessage, isRunboxError, RunboxError } from '../../core/errors.js';
import { isTerminal, QueuePayloadSchema, type Job } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import type { VpsPool } from '../../runtime/pool.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { JobDeps } from '../job/deps.js';
import { acquireVps, prepareVps } from '../job/launch.js';
import { recoverJob } from '../job/recover.js';
import { holderAlive } from '../job/restore.js';
import { JobSession, type Dispose } from '../job/session.js';
import type { RunningJobs } from '../running.js';

const SLOT_RETRY_MS = 250;

/**
 * The BullMQ processor: one queued job → one fresh VPS → a recorded result (worker/job/session.ts).
 *
 * Retries are for infrastructure only: if no VPS can be made, the job goes back to `queued` and
 * BullMQ retries it with backoff; a job whose command ran is completed whatever its exit status.
 * A live job delivered again (BullMQ's stalled-job handling, or the reaper's recovery entries) is
 * recovered: restored from its newest checkpoint, or recorded host_lost (worker/job/recover.ts).
 */
export function createProcessor(deps: JobDeps, running: RunningJobs) {
  return async (bull: BullJob, token?: string): Promise<void> => {
    const { jobId, tenant, orphanOf } = QueuePayloadSchema.parse(bull.data);
    const log = deps.log.child({ jobId, tenant });
    const stored = await deps.jobs.get(jobId);
    if (!stored) return; // expired or deleted: nothing to do
    const job = stored.job;
    if (isTerminal(job.status)) return; // e.g. canceled while queued
    if (running.byId.has(jobId)) return; // a duplicate delivery of a job this worker is running
    if (job.status === 'running' || job.status === 'checkpointing' || job.status === 'migrating') {
      await recoverJob(deps, running, job, tenant, log, { orphanOf });
      return;
    }
    if (job.status === 'starting') {
      // Taken by a worker that stopped before the job ran: it can simply start over, here.
      const lease = await deps.leases.get(jobId);
      if (orphanOf === undefined && lease && lease.holder !== deps.instance && (await holderAlive(deps, lease.holder))) return;
      if (!(await deps.leases.claim(jobId, lease?.holder ?? '', deps.instance)).ok) return;
      await deps.jobs.transition(jobId, 'queued', { host: null }, { from: ['starting'], note: `host ${job.host} stopped before the job ran` });
      await deps.leases.release(jobId, deps.instance);
      job.status = 'queued';
    }
    if (job.cancelRequested) {
      await deps.jobs.transition(jobId, 'canceled', { finishedAt: new Date().toISOString() }, { host: deps.hostId }).catch(() => undefined);
      return;
    }
    if (!(await deps.slots.acquire(tenant, jobId, deps.tenantConcurrency))) {
      await bull.moveToDelayed(Date.now() + SLOT_RETRY_MS, token);
      throw new DelayedError();
    }
    const session = new JobSession(deps, running, jobId, tenant, log);
    try {
      await start(deps, bull, job, session, log);
    } finally {
      session.close();
    }
  };
}

async function start(deps: JobDeps, bull: BullJob, job: Job, session: JobSession, log: Logger): Promise<void> {
  const req = await deps.jobs.getRequest(job.id);
  if (!req) throw new RunboxError('internal', `job ${job.id} has no stored request`);
  await deps.jobs.transition(job.id, 'starting', { host: deps.hostId, attempt: job.attempt + 1 }, { host: deps.hostId });
  // The queue gave it to this worker alone (queued → starting is atomic): its lease is ours.
  await deps.leases.claim(job.id, '*', deps.instance);

  let vps: RuncVps | undefined;
  let pool: VpsPool | undefined;
  const dispose: Dispose = (v) => (pool ? pool.release(v) : deps.engine.destroy(v.id));
  try {
    ({ vps, pool } = await acquireVps(deps, req, job));
    await prepareVps(vps, req, job);
  } catch (e) {
    if (vps) void dispose(vps).catch((err: unknown) => log.error({ err, vpsId: vps!.id }, 'destroying the VPS failed'));
    // Nothing of the job ran: put it back for a retry, or fail it on the last attempt.
    const last = bull.attemptsMade + 1 >= (bull.opts.attempts ?? 1);
    log.warn({ err: e, last }, 'could not start the job');
    if (last || !isInfraError(e)) {
      await session.fail(isRunboxError(e) ? e.code : 'internal', errorMessage(e));
      return;
    }
    await session.requeue(errorMessage(e));
    throw e;
  }
  await session.drive(job, req, vps, { kind: 'run' }, dispose);
}

const USER_ERRORS = new Set(['invalid_argument', 'template_missing', 'limit_exceeded']);

function isInfraError(e: unknown): boolean {
  return !(isRunboxError(e) && USER_ERRORS.has(e.code));
}
