import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import { newId } from '../../core/ids.js';
import type { WorkerHandle } from '../../worker/main.js';
import { removeState, startTestWorker, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { TEMPLATES_DIR } from '../helpers/engine.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { waitFor } from '../helpers/net.js';

let redis: TestRedis;
let cfg: ServiceConfig;
let worker: WorkerHandle;
let s: Submitter;
const broken = `broken-${newId(3)}`;

beforeAll(async () => {
  redis = await startRedis();
  // One job at a time on this worker, one per tenant: ordering and slots become observable.
  cfg = await testServiceConfig(redis, { workerConcurrency: 2, tenantConcurrency: 1 });
  worker = await startTestWorker(cfg, redis.url);
  s = new Submitter(cfg, redis.url);
  // A template whose "rootfs" is a file: mounting the overlay fails, an infrastructure error.
  const dir = path.join(TEMPLATES_DIR, broken, '0000000000000000');
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'rootfs'), 'not a directory');
  await fs.symlink('0000000000000000', path.join(TEMPLATES_DIR, broken, 'current'));
});
afterAll(async () => {
  await fs.rm(path.join(TEMPLATES_DIR, broken), { recursive: true, force: true });
  await s?.close();
  await worker?.close();
  await removeState(cfg, worker?.engine);
  await redis?.stop();
});

const sleepJob = (sec: number) => ({ command: ['sleep', String(sec)] });

describe('queue policies', () => {
  it('per-tenant concurrency: a tenant runs one job at a time, another tenant is not held up', async () => {
    const a1 = await s.submit(sleepJob(1), 'tenant-a');
    const a2 = await s.submit(sleepJob(1), 'tenant-a');
    const b1 = await s.submit(sleepJob(1), 'tenant-b');
    const [ja1, ja2, jb1] = [await s.wait(a1), await s.wait(a2), await s.wait(b1)];
    expect([ja1.status, ja2.status, jb1.status]).toEqual(['succeeded', 'succeeded', 'succeeded']);
    // a2 started only after a1 finished; b1 overlapped with a1.
    expect(Date.parse(ja2.startedAt!)).toBeGreaterThanOrEqual(Date.parse(ja1.finishedAt!) - 5);
    expect(Date.parse(jb1.startedAt!)).toBeLessThan(Date.parse(ja1.finishedAt!));
  });

  it('priorities: among waiting jobs the higher priority runs first', async () => {
    // Both worker slots busy (different tenants, so no tenant slot is in the way); the first slot
    // to free up must go to the high-priority job, the low one waits for the second.
    const b1 = await s.submit(sleepJob(1), 'tenant-x');
    const b2 = await s.submit(sleepJob(2.5), 'tenant-y');
    await waitFor(async () => (await s.jobs.get(b2))!.job.status === 'running' && (await s.jobs.get(b1))!.job.status === 'running', 'both blockers running');
    const low = await s.submit({ ...sleepJob(0), priority: 10 }, 'tenant-p');
    const high = await s.submit({ ...sleepJob(0), priority: 90 }, 'tenant-q');
    const [jl, jh] = [await s.wait(low), await s.wait(high)];
    expect(Date.parse(jh.startedAt!)).toBeLessThan(Date.parse(jl.startedAt!));
  });

  it('infrastructure failures are retried with backoff, then recorded', async () => {
    const id = await s.submit({ template: broken, command: ['true'] });
    const job = await s.wait(id, 30_000);
    expect(job.status).toBe('failed');
    expect(job.attempt).toBe(3);
    expect(job.history.map((h) => h.status)).toEqual(['queued', 'starting', 'queued', 'starting', 'queued', 'starting', 'failed']);
  });

  it('a job that ran and failed on its own is never re-run', async () => {
    const id = await s.submit({ script: 'echo ran; exit 1' });
    const job = await s.wait(id);
    await new Promise((r) => setTimeout(r, 1000));
    expect((await s.jobs.get(id))!.job).toMatchObject({ status: 'failed', exitCode: 1, attempt: 1 });
    expect(await s.output(id)).toBe('ran\n');
    expect(job.history.filter((h) => h.status === 'starting')).toHaveLength(1);
  });
});
