import type { RuncVps } from '../runtime/runc-vps.js';

/** A job this worker is running, as cancellation, checkpoints and shutdown see it. */
export interface RunningJob {
  jobId: string;
  tenant: string;
  abort: AbortController;
  /** Set once the job has its VPS. */
  vps?: RuncVps;
  /** Output bytes received from the VPS so far. */
  outputBytes: number;
  /** Set while it moves to another host (its lease passes to the target before this host lets go). */
  leaving?: boolean;
  /** Another holder took its lease (worker/job/reconcile.ts): nothing of it is recorded here. */
  fenced?: boolean;
}

/** Jobs running on this worker, by id. */
export class RunningJobs {
  readonly byId = new Map<string, RunningJob>();
  /** Jobs arriving by migration: their lease is this host's before their VPS runs here. */
  readonly incoming = new Set<string>();

  cancel(id: string): boolean {
    const j = this.byId.get(id);
    j?.abort.abort();
    return !!j;
  }

  /** What this host holds: running jobs and jobs on their way in (reported in its heartbeat). */
  held(): string[] {
    return [...new Set([...this.byId.keys(), ...this.incoming])];
  }
}
