import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../../core/job.js';
import { ObjectArtifactStore } from '../../core/objects/artifacts.js';
import { S3ObjectStore } from '../../core/objects/s3.js';
import { JobStore } from '../../core/store/jobs.js';
import { Keys } from '../../core/store/keys.js';
import { createLogger } from '../../core/log.js';
import { ArtifactSweeper } from '../../worker/artifact-sweeper.js';
import { testS3, type TestS3 } from '../helpers/s3.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * With RUNBOX_OBJECT_STORE=s3://…, artifacts go to the object store (not Redis), are served by the
 * API from there (checked against their recorded size), and go when their job's record is gone.
 */
let s3: TestS3;
let st: Stack;
beforeAll(async () => {
  s3 = await testS3('artifacts');
  st = await startStack({ objectStore: { kind: 's3', location: { ...s3.server.location, prefix: 'stack/' } } });
}, 120_000);
afterAll(async () => {
  await st?.stop();
  await s3?.cleanup();
});

const run = async (body: object): Promise<Job> => (await (await st.call('/v1/jobs?wait=60', { method: 'POST', body: JSON.stringify(body) })).json()) as Job;
const artifactKeys = async (jobId: string) => (await s3.objects.list(`stack/artifacts/${jobId}/`)).map((o) => o.key);

describe('artifacts in the object store', () => {
  it('are stored as objects, none in Redis, and downloaded through the API as written', async () => {
    const job = await run({ script: 'mkdir -p /out/d; printf "one" > /out/a.txt; head -c 300000 /dev/urandom > /out/d/b.bin; sha256sum /out/d/b.bin', artifacts: ['/out'] });
    expect(job.status).toBe('succeeded');
    expect(job.artifacts.map((a) => [a.path, a.size]).sort()).toEqual([['/out/a.txt', 3], ['/out/d/b.bin', 300000]]);
    expect(await artifactKeys(job.id)).toEqual([ObjectArtifactStore.key(job.id, '/out/a.txt'), ObjectArtifactStore.key(job.id, '/out/d/b.bin')].map((k) => `stack/${k}`).sort());
    expect(await st.redis.client().exists(new Keys(st.cfg.redisPrefix).artifacts(job.id))).toBe(0);
    expect(await (await st.call(`/v1/jobs/${job.id}/artifacts/out/a.txt`)).text()).toBe('one');
    const bin = Buffer.from(await (await st.call(`/v1/jobs/${job.id}/artifacts/out/d/b.bin`)).arrayBuffer());
    expect(`${createHash('sha256').update(bin).digest('hex')}  /out/d/b.bin\n`).toBe(await (await st.call(`/v1/jobs/${job.id}/logs`)).text());
    // Another tenant sees none of it.
    expect((await st.call(`/v1/jobs/${job.id}/artifacts/out/a.txt`, { as: 'b' })).status).toBe(404);
  });

  it('an object that is not as recorded (replaced in the store) is refused with 503, never served', async () => {
    const job = await run({ script: 'mkdir -p /out; printf "genuine" > /out/x.txt', artifacts: ['/out'] });
    for (const forged of ['longer than genuine', 'short']) {
      await s3.objects.put(`stack/${ObjectArtifactStore.key(job.id, '/out/x.txt')}`, Buffer.from(forged));
      const res = await st.call(`/v1/jobs/${job.id}/artifacts/out/x.txt`);
      expect(res.status).toBe(503);
      const body = await res.text();
      expect(body).toMatch(/"code":"unavailable"/);
      expect(body).not.toContain(forged);
    }
  });

  it("go from the store once their job's record is gone (expired); others stay", async () => {
    const [gone, kept] = [await run({ script: 'mkdir -p /out; echo 1 > /out/f', artifacts: ['/out'] }), await run({ script: 'mkdir -p /out; echo 2 > /out/f', artifacts: ['/out'] })];
    const keys = new Keys(st.cfg.redisPrefix);
    const stackObjects = new S3ObjectStore({ ...s3.server.location, prefix: 'stack/' });
    await st.redis.client().del(keys.job(gone.id), keys.history(gone.id), keys.request(gone.id)); // as its TTL would
    const sweeper = new ArtifactSweeper(
      { store: new ObjectArtifactStore(stackObjects), jobs: new JobStore(st.redis.client(), st.cfg.redisPrefix), redis: st.redis.client(), instance: 'test', log: createLogger('silent') },
      1000,
    );
    expect(await sweeper.sweep()).toContain(gone.id);
    expect(await artifactKeys(gone.id)).toEqual([]);
    expect(await artifactKeys(kept.id)).toHaveLength(1);
    expect(await sweeper.sweep()).toEqual([]); // the round is taken (one host per interval)
    stackObjects.close();
  });
});
