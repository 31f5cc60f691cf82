import type { Job } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import type { RunningJobs } from '../running.js';
import type { JobDeps } from './deps.js';
import { holderAlive } from './restore.js';
import { JobSession } from './session.js';

/**
 * A live job (running, checkpointing, migrating) whose lease holder is gone, or (with `orphanOf`)
 * whose holder is alive but does not run it: this host takes the lease with a compare-and-set
 * from exactly that holder, then restores the job from its newest checkpoint, or records it failed
 * (`host_lost`) without one. Both BullMQ's stalled-job handling and the reaper deliver such jobs.
 *
 * Returns false when the job turns out to be held by a live holder (a duplicate delivery), or
 * another host took it first.
 */
export async function recoverJob(
  deps: JobDeps,
  running: RunningJobs,
  job: Job,
  tenant: string,
  log: Logger,
  o: { why?: string; orphanOf?: string; code?: 'host_lost' | 'restore_failed' | 'vps_lost' } = {},
): Promise<boolean> {
  // Reserved in this process at once: two deliveries of one job (the reaper's and BullMQ's) must
  // not both get past the checks below while the other awaits Redis.
  if (running.byId.has(job.id) || running.incoming.has(job.id)) return false;
  running.incoming.add(job.id);
  let session: JobSession;
  try {
    const lease = await deps.leases.get(job.id);
    const holder = lease?.holder ?? '';
    if (o.orphanOf !== undefined) {
      if (holder !== o.orphanOf) return false; // someone took it since the reaper looked
    } else if (holder && holder !== deps.instance && (await holderAlive(deps, holder))) {
      return false;
    }
    if (!(await deps.leases.claim(job.id, holder, deps.instance)).ok) return false;
    session = new JobSession(deps, running, job.id, tenant, log);
  } finally {
    running.incoming.delete(job.id);
  }
  // It holds a slot wherever it runs (the set is per job id: taking it again is a no-op).
  await deps.slots.acquire(tenant, job.id, Number.MAX_SAFE_INTEGER);
  const why = o.why ?? `the host running this job (${job.host}) stopped before it finished`;
  const req = await deps.jobs.getRequest(job.id);
  if (!req) {
    await session.fail('host_lost', `${why}, and its request is gone`);
    return true;
  }
  await session.restoreOrFail(job, req, o.code ?? 'host_lost', why);
  return true;
}
