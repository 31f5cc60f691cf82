import { RunboxError } from '../core/errors.js';
import { JOB_ID } from '../core/ids.js';
import type { Job } from '../core/job.js';
import type { JobStore } from '../core/store/jobs.js';

/**
 * The tenant's job `id`. Another tenant's job is "not found" exactly like an unknown id (same
 * status, same message), so ids cannot be probed across tenants.
 */
export async function ownJob(jobs: JobStore, tenant: string, id: string): Promise<Job> {
  const stored = JOB_ID.test(id) ? await jobs.get(id) : null;
  if (!stored || stored.tenant !== tenant) throw new RunboxError('not_found', `job ${id} not found`);
  return stored.job;
}
