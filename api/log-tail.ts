import { isTerminal, type JobStatus } from '../core/job.js';
import type { LogChunk, LogStore } from '../core/store/logs.js';

const BATCH = 512;

export interface TailOptions {
  /** Keep reading until the job is terminal and everything is sent. */
  follow: boolean;
  pollMs: number;
  signal: AbortSignal;
  /** The job's current status (null: the job is gone). */
  status(): Promise<JobStatus | null>;
}

/**
 * Yields a job's output chunks whose offset is >= `from`, in order. Following, it polls the
 * stream: the status is read *before* each drain, so once a terminal status has been seen, the
 * drain that follows includes every chunk written before the job ended (the worker appends output
 * before its final transition).
 */
export async function* tailLogs(logs: LogStore, jobId: string, from: number, opts: TailOptions): AsyncGenerator<LogChunk> {
  let next = from;
  for (;;) {
    const status = opts.follow ? await opts.status() : null;
    for (;;) {
      const chunks = await logs.read(jobId, next, BATCH);
      for (const ch of chunks) {
        if (opts.signal.aborted) return;
        yield ch;
        next = ch.offset + Math.max(1, ch.data.length);
      }
      if (chunks.length < BATCH) break;
    }
    if (!opts.follow || status === null || isTerminal(status) || opts.signal.aborted) return;
    await sleep(opts.pollMs, opts.signal);
  }
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
