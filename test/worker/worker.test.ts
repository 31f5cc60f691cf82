import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import type { WorkerHandle } from '../../worker/main.js';
import { removeState, startTestWorker, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
let cfg: ServiceConfig;
let worker: WorkerHandle;
let s: Submitter;

beforeAll(async () => {
  redis = await startRedis();
  cfg = await testServiceConfig(redis);
  worker = await startTestWorker(cfg, redis.url);
  s = new Submitter(cfg, redis.url);
});
afterAll(async () => {
  await s?.close();
  await worker?.close();
  await removeState(cfg, worker?.engine);
  await redis?.stop();
});

describe('worker', () => {
  it('runs a command from the warm pool and records the result', async () => {
    const id = await s.submit({ command: ['sh', '-c', 'echo hello; echo oops >&2; exit 3'] });
    const job = await s.wait(id);
    expect(job).toMatchObject({ status: 'failed', exitCode: 3, host: worker.hostId, attempt: 1, outputBytes: 11 });
    expect(await s.output(id)).toBe('hello\noops\n');
    expect(job.history.map((h) => h.status)).toEqual(['queued', 'starting', 'running', 'failed']);
    expect(job.usage?.wallMs).toBeGreaterThan(0);
  });

  it('runs a script with files, stdin, env and collects artifacts', async () => {
    const id = await s.submit({
      script: 'cat /work/data.txt; read line; echo "stdin=$line env=$NAME"; mkdir -p /out; echo result > /out/r.txt',
      files: { '/work/data.txt': { content: 'ZmlsZQo=', encoding: 'base64' } },
      stdin: 'piped\n',
      env: { NAME: 'runbox' },
      artifacts: ['/out'],
    });
    const job = await s.wait(id);
    expect(job.status).toBe('succeeded');
    expect(await s.output(id)).toBe('file\nstdin=piped env=runbox\n');
    expect(job.artifacts).toEqual([{ path: '/out/r.txt', size: 7, mode: expect.any(Number) }]);
  });

  it('reports limits: OOM, timeout, output cap', async () => {
    const [oom, slow, loud] = await Promise.all([
      s.submit({ command: ['tail', '/dev/zero'], limits: { memoryMb: 32 } }),
      s.submit({ command: ['sleep', '30'], limits: { timeoutSec: 1 } }),
      s.submit({ script: 'yes | head -c 100000', limits: { outputBytes: 1000 } }),
    ]);
    expect(await s.wait(oom)).toMatchObject({ status: 'failed', oomKilled: true, error: { code: 'oom_killed' } });
    expect(await s.wait(slow)).toMatchObject({ status: 'timed_out', error: { code: 'timeout' } });
    expect(await s.wait(loud)).toMatchObject({ status: 'succeeded', outputBytes: 1000, outputTruncated: true });
  });

  it('uses a fresh VPS for every job', async () => {
    const a = await s.submit({ script: 'test ! -e /tmp/mark && touch /tmp/mark && hostname' });
    const b = await s.submit({ script: 'test ! -e /tmp/mark && touch /tmp/mark && hostname' });
    const [ja, jb] = [await s.wait(a), await s.wait(b)];
    expect([ja.status, jb.status]).toEqual(['succeeded', 'succeeded']);
    expect(await s.output(a)).not.toBe(await s.output(b));
  });

  it('sets the requested hostname on a pooled VPS', async () => {
    const id = await s.submit({ command: ['hostname'], hostname: 'my-box' });
    await s.wait(id);
    expect(await s.output(id)).toBe('my-box\n');
  });

  it('cancels a running job within a second', async () => {
    const id = await s.submit({ command: ['sleep', '60'] });
    while ((await s.jobs.get(id))!.job.status !== 'running') await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    await s.jobs.update(id, { cancelRequested: true });
    await s.queue.publishCancel(id);
    const job = await s.wait(id);
    expect(job.status).toBe('canceled');
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('fails a job whose template does not exist without retrying', async () => {
    const id = await s.submit({ template: 'no-such-template', command: ['true'] });
    const job = await s.wait(id);
    expect(job).toMatchObject({ status: 'failed', error: { code: 'template_missing' }, attempt: 1 });
  });
});
