import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { QUEUE_JOB_NAME, type QueuePayload } from './job.js';
import { Keys } from './store/keys.js';

export const QUEUE_NAME = 'jobs';

/**
 * BullMQ priority: lower number = served first, and 0 ("no priority") would jump ahead of every
 * prioritized job, so map our 0..100 (higher first) onto 1..101.
 */
export const bullPriority = (priority: number): number => 101 - Math.max(0, Math.min(100, Math.round(priority)));

/**
 * Infrastructure retries: a job whose VPS could not be started is retried with backoff; a job
 * that ran and failed on its own is never re-run (the processor completes it normally).
 */
export const INFRA_ATTEMPTS = 3;

export class JobQueue {
  readonly queue: Queue<QueuePayload>;
  private readonly keys: Keys;

  constructor(
    readonly connection: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
    this.queue = new Queue<QueuePayload>(QUEUE_NAME, { connection, prefix: this.keys.bullPrefix() });
  }

  async enqueue(payload: QueuePayload, priority: number): Promise<void> {
    await this.queue.add(QUEUE_JOB_NAME, payload, {
      jobId: payload.jobId,
      priority: bullPriority(priority),
      attempts: INFRA_ATTEMPTS,
      backoff: { type: 'exponential', delay: 500 },
      removeOnComplete: true,
      removeOnFail: { age: 24 * 3600 },
    });
  }

  /** Jobs waiting (incl. prioritized and delayed) and active, for /metrics. */
  async depth(): Promise<{ waiting: number; active: number; delayed: number }> {
    const c = await this.queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed');
    return { waiting: (c.waiting ?? 0) + (c.prioritized ?? 0), active: c.active ?? 0, delayed: c.delayed ?? 0 };
  }

  /** Tells whichever worker runs the job to stop it (it also re-checks the record periodically). */
  async publishCancel(jobId: string): Promise<void> {
    await this.connection.publish(this.keys.cancelChannel(), jobId);
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
