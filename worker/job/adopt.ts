import { RunboxError } from '../../core/errors.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { RunningJobs } from '../running.js';
import type { JobDeps } from './deps.js';
import { JobSession } from './session.js';

/**
 * Supervises a job that arrived here already running (moved in by live migration; the caller
 * took its lease from the source before restoring it, worker/migration/target.ts) until it ends, under
 * a session like any other job. `gate`: see SuperviseMode.
 *
 * Should this fail before the session exists (Redis unreachable, …), the VPS is killed and
 * destroyed: this host then holds the job's lease without running it, which its reconciler turns
 * into a restore from the newest checkpoint (worker/job/reconcile.ts). Never a VPS nobody watches.
 */
export async function adoptJob(deps: JobDeps, running: RunningJobs, jobId: string, vps: RuncVps, note: string, gate?: Promise<boolean>): Promise<void> {
  let session: JobSession;
  let stored: Awaited<ReturnType<JobDeps['jobs']['get']>>;
  let req: Awaited<ReturnType<JobDeps['jobs']['getRequest']>>;
  try {
    stored = await deps.jobs.get(jobId);
    req = await deps.jobs.getRequest(jobId);
    if (!stored || !req) throw new RunboxError('not_found', `adopted job ${jobId} has no record`);
    session = new JobSession(deps, running, jobId, stored.tenant, deps.log.child({ jobId, tenant: stored.tenant }));
  } catch (e) {
    await vps.killAll().catch(() => undefined);
    await deps.engine.destroy(vps.id).catch((err: unknown) => deps.log.error({ err, vpsId: vps.id }, 'destroying an unadopted VPS failed'));
    throw e;
  } finally {
    running.incoming.delete(jobId);
  }
  try {
    // It holds a slot wherever it runs (the set is per job id: the source's entry is this one).
    await deps.slots.acquire(stored.tenant, jobId, Number.MAX_SAFE_INTEGER).catch((e: unknown) => deps.log.warn({ err: e, jobId }, 'taking the tenant slot failed'));
    await session.drive(stored.job, req, vps, { kind: 'adopt', startedAt: stored.job.startedAt ?? new Date().toISOString(), note, gate }, (v) => deps.engine.destroy(v.id));
  } finally {
    session.close();
  }
}
