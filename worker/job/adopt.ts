import { RunboxError } from '../../core/errors.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { RunningJobs } from '../running.js';
import type { JobDeps } from './deps.js';
import { JobSession } from './session.js';

/**
 * Supervises a job that arrived here already running (moved in by live migration; the caller
 * took its lease before restoring it) until it ends, under a session like any other job.
 * `gate`: see SuperviseMode.
 */
export async function adoptJob(deps: JobDeps, running: RunningJobs, jobId: string, vps: RuncVps, note: string, gate?: Promise<boolean>): Promise<void> {
  const stored = await deps.jobs.get(jobId);
  const req = await deps.jobs.getRequest(jobId);
  if (!stored || !req) {
    running.incoming.delete(jobId);
    await deps.engine.destroy(vps.id);
    throw new RunboxError('not_found', `adopted job ${jobId} has no record`);
  }
  // The lease comes from the job's source (worker/migration.ts claims the move before restoring).
  const lease = await deps.leases.get(jobId);
  await deps.leases.claim(jobId, lease?.holder ?? '', deps.instance);
  const log = deps.log.child({ jobId, tenant: stored.tenant });
  const session = new JobSession(deps, running, jobId, stored.tenant, log);
  running.incoming.delete(jobId);
  try {
    // It holds a slot wherever it runs (the set is per job id: the source's entry is this one).
    await deps.slots.acquire(stored.tenant, jobId, Number.MAX_SAFE_INTEGER);
    await session.drive(stored.job, req, vps, { kind: 'adopt', startedAt: stored.job.startedAt ?? new Date().toISOString(), note, gate }, (v) => deps.engine.destroy(v.id));
  } finally {
    session.close();
  }
}
