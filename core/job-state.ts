import { RunboxError } from './errors.js';
import { isTerminal, type JobStatus } from './job.js';

/**
 * Job lifecycle (PRODUCT.md): queued → starting → running → (checkpointing | migrating → running)*
 * → succeeded | failed | canceled | timed_out. `starting` may go back to `queued` (an infrastructure
 * failure before the job ran is retried); a job may be canceled or fail from any live state.
 */
const NEXT: Record<JobStatus, readonly JobStatus[]> = {
  queued: ['starting', 'canceled', 'failed'],
  starting: ['running', 'queued', 'failed', 'canceled', 'timed_out'],
  running: ['checkpointing', 'migrating', 'succeeded', 'failed', 'canceled', 'timed_out'],
  checkpointing: ['running', 'failed', 'canceled', 'timed_out', 'succeeded'],
  migrating: ['running', 'failed', 'canceled', 'timed_out', 'succeeded'],
  succeeded: [],
  failed: [],
  canceled: [],
  timed_out: [],
};

export function canTransition(from: JobStatus, to: JobStatus): boolean {
  return NEXT[from].includes(to);
}

export function allowedFrom(to: JobStatus): JobStatus[] {
  return (Object.keys(NEXT) as JobStatus[]).filter((s) => NEXT[s].includes(to));
}

export function assertTransition(from: JobStatus, to: JobStatus): void {
  if (!canTransition(from, to)) {
    throw new RunboxError('conflict', isTerminal(from) ? `job already ${from}` : `a ${from} job cannot become ${to}`);
  }
}

/** Final status from a run's outcome (PRODUCT.md "Job lifecycle"). */
export function finalStatus(r: { exitCode: number | null; timedOut: boolean; canceled: boolean }): JobStatus {
  if (r.canceled) return 'canceled';
  if (r.timedOut) return 'timed_out';
  return r.exitCode === 0 ? 'succeeded' : 'failed';
}
