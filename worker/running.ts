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
}

/** Jobs running on this worker, by id. */
export class RunningJobs {
  readonly byId = new Map<string, RunningJob>();

  cancel(id: string): boolean {
    const j = this.byId.get(id);
    j?.abort.abort();
    return !!j;
  }
}
