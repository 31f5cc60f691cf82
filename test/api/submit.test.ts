import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobRequestSchema, type JobRequestInput } from '../../core/job.js';
import { JobQueue } from '../../core/queue.js';
import { JobStore, QueuedQuotaExceeded } from '../../core/store/jobs.js';
import { submitJob, type SubmitDeps } from '../../core/submit.js';
import { runtimeConfigFromEnv } from '../../core/config.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/**
 * core/submit.ts is the one way a job enters runbox (the API, the test helpers and the benchmarks
 * call it): what it checks, stores and queues, against a real Redis and BullMQ queue.
 */
const LIMITS = runtimeConfigFromEnv({});
let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

function deps(extra: Partial<SubmitDeps> = {}): SubmitDeps & { close(): Promise<void> } {
  const client = redis.client();
  const prefix = redis.prefix();
  const queue = new JobQueue(client, prefix);
  return { jobs: new JobStore(client, prefix), queue, limits: LIMITS, ...extra, close: () => queue.close() };
}
const request = (input: JobRequestInput) => JobRequestSchema.parse(input);

describe('submitJob', () => {
  it('stores the record with the limits resolved and queues it once', async () => {
    const d = deps();
    try {
      const { job, created } = await submitJob(d, { tenant: 't1', request: request({ command: ['true'], limits: { memoryMb: 64 } }) });
      expect(created).toBe(true);
      expect(job).toMatchObject({ status: 'queued', limits: { memoryMb: 64, cpus: LIMITS.defaultLimits.cpus } });
      expect((await d.jobs.get(job.id))?.job.status).toBe('queued');
      expect(await d.queue.queue.getJob(job.id)).toMatchObject({ data: { jobId: job.id, tenant: 't1' } });
    } finally {
      await d.close();
    }
  });

  it('the same idempotency key and request give the same job, queued once; another request under it is refused', async () => {
    const d = deps();
    try {
      const req = request({ command: ['echo', 'x'] });
      const a = await submitJob(d, { tenant: 't1', request: req, idempotencyKey: 'k1' });
      const b = await submitJob(d, { tenant: 't1', request: req, idempotencyKey: 'k1' });
      expect(b).toMatchObject({ created: false, job: { id: a.job.id } });
      expect((await d.queue.queue.getJobs(['waiting', 'prioritized'])).filter((j) => j.id === a.job.id)).toHaveLength(1);
      await expect(submitJob(d, { tenant: 't1', request: request({ command: ['echo', 'y'] }), idempotencyKey: 'k1' })).rejects.toMatchObject({ code: 'conflict' });
    } finally {
      await d.close();
    }
  });

  it('refuses, storing nothing: an unknown template, limits above the maximum, bad base64, files larger than the disk, a tenant at its queued cap', async () => {
    const d = deps({ knownTemplates: async () => ['base'], quota: { maxQueued: 1, maxQueuedBytes: 0 } });
    try {
      await expect(submitJob(d, { tenant: 't2', request: request({ command: ['true'], template: 'nope' }) })).rejects.toMatchObject({ code: 'template_missing' });
      await expect(submitJob(d, { tenant: 't2', request: request({ command: ['true'], limits: { memoryMb: 1 << 30 } }) })).rejects.toMatchObject({ code: 'limit_exceeded' });
      await expect(submitJob(d, { tenant: 't2', request: request({ command: ['true'], files: { '/a': { content: '!!!', encoding: 'base64' } } }) })).rejects.toMatchObject({ code: 'invalid_argument' });
      const big = 'x'.repeat(16 * 1024 * 1024 + 1);
      await expect(submitJob(d, { tenant: 't2', request: request({ command: ['true'], limits: { diskMb: 16 }, files: { '/a': { content: big } } }) })).rejects.toMatchObject({ code: 'limit_exceeded' });
      expect((await d.jobs.list('t2', { limit: 10 })).jobs).toEqual([]);
      await submitJob(d, { tenant: 't2', request: request({ command: ['true'] }) });
      await expect(submitJob(d, { tenant: 't2', request: request({ command: ['true'] }) })).rejects.toBeInstanceOf(QueuedQuotaExceeded);
      expect((await d.jobs.list('t2', { limit: 10 })).jobs).toHaveLength(1);
    } finally {
      await d.close();
    }
  });
});
