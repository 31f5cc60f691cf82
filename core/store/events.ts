import type { Redis } from 'ioredis';
import { isTerminal, type JobStatus } from '../job.js';
import { Keys } from './keys.js';

type Waiter = (status: JobStatus) => void;

/**
 * Job status events over Redis pub/sub (published by the transition script). One subscriber
 * connection per process serves every waiter: `?wait=` requests, SSE followers.
 */
export class JobEvents {
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly keys: Keys;
  private started?: Promise<void>;

  constructor(
    private readonly sub: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
  }

  private start(): Promise<void> {
    this.started ??= (async () => {
      this.sub.on('message', (_ch: string, msg: string) => {
        let ev: { id: string; status: JobStatus };
        try {
          ev = JSON.parse(msg) as { id: string; status: JobStatus };
        } catch {
          return;
        }
        for (const w of this.waiters.get(ev.id) ?? []) w(ev.status);
      });
      await this.sub.subscribe(this.keys.eventsChannel());
    })();
    return this.started;
  }

  /** Calls `fn` on every status change of job `id` until the returned function is called. */
  async watch(id: string, fn: Waiter): Promise<() => void> {
    await this.start();
    let set = this.waiters.get(id);
    if (!set) this.waiters.set(id, (set = new Set()));
    set.add(fn);
    return () => {
      set!.delete(fn);
      if (set!.size === 0) this.waiters.delete(id);
    };
  }

  /**
   * Resolves when job `id` reaches a terminal status or after `timeoutMs`. `current` re-reads the
   * status after subscribing, so a job that finished in between is not missed.
   */
  async waitTerminal(id: string, timeoutMs: number, current: () => Promise<JobStatus | null>): Promise<void> {
    let stop = () => {};
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      void this.watch(id, (s) => isTerminal(s) && resolve())
        .then(async (unwatch) => {
          stop = unwatch;
          const s = await current();
          if (s === null || isTerminal(s)) resolve();
        })
        // The connection went away (shutdown): stop waiting, the caller re-reads the job.
        .catch(() => resolve());
    });
    clearTimeout(timer);
    stop();
  }

  async close(): Promise<void> {
    this.waiters.clear();
    this.sub.disconnect();
  }
}
