import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newId } from '../../core/ids.js';
import { S3ObjectStore } from '../../core/objects/s3.js';
import { snapshot } from '../../runtime/checkpoint/checkpoint.js';
import { DirectoryCheckpointStore, type CheckpointMeta, type CheckpointStore } from '../../runtime/checkpoint/store.js';
import { ObjectCheckpointStore } from '../../worker/object-checkpoints.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';
import { testS3, type TestS3 } from '../helpers/s3.js';

/**
 * Checkpoint stores: the directory store (one machine or a shared mount) and the object store
 * (S3: here the embedded server over real HTTP), one conformance suite for both; then what only
 * the object store faces (data read back over the network from a store another host wrote), and
 * a VPS checkpointed on one engine and restored on another that share nothing but the store.
 */
let s3: TestS3;
let work: string;
const caps = { memoryMb: 64, diskMb: 64 };
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  s3 = await testS3('checkpoints');
  work = path.join(s3.dir, 'work');
  await fs.mkdir(work);
});
afterAll(async () => {
  await s3?.cleanup();
});

function metaFor(jobId: string, seq: number): CheckpointMeta {
  return {
    id: `cp${seq}${randomBytes(3).toString('hex')}`,
    jobId,
    seq,
    createdAt: new Date().toISOString(),
    host: 'h1',
    template: { name: 'base', hash: '0123456789abcdef' },
    network: { mode: 'private', address: '10.88.0.9' },
    hostname: 'box',
    outputOffset: seq * 100,
    frozenMs: 12,
    imagesBytes: 3,
    diskBytes: 4096,
  };
}

/** Stages and commits checkpoint `seq`: two image files and a sparse 32 MiB disk with data at 1 MiB and at its end. */
async function commitOne(store: CheckpointStore, jobId: string, seq: number): Promise<{ meta: CheckpointMeta; image: Buffer; diskData: Buffer }> {
  const staged = await store.stage(jobId, seq);
  const image = randomBytes(200_000);
  await fs.writeFile(path.join(staged.imagesDir, 'pages-1.img'), image);
  await fs.writeFile(path.join(staged.imagesDir, 'core-1.img'), `seq ${seq}`);
  const diskData = randomBytes(70_000);
  const fh = await fs.open(staged.diskImage, 'w');
  await fh.write(diskData, 0, diskData.length, 1 << 20);
  await fh.truncate(32 << 20);
  await fh.write(Buffer.from('end'), 0, 3, (32 << 20) - 3);
  await fh.close();
  const meta = metaFor(jobId, seq);
  await store.commit(jobId, meta, staged.dir);
  return { meta, image, diskData };
}

const stores: Array<[string, () => CheckpointStore]> = [
  ['directory store', () => new DirectoryCheckpointStore(path.join(work, 'dir-store'))],
  ['object store (S3)', () => new ObjectCheckpointStore(s3.objects, path.join(work, 'obj-local'))],
];

describe.each(stores)('%s: the CheckpointStore contract', (_name, make) => {
  it('commits, lists, restores the newest with identical files (sparse disk stays sparse), prunes, removes', async () => {
    const store = make();
    const jobId = `job${randomBytes(5).toString('hex')}`;
    expect(await store.restorable(jobId, caps)).toBeUndefined();
    const one = await commitOne(store, jobId, 1);
    const two = await commitOne(store, jobId, 2);
    const three = await commitOne(store, jobId, 3);
    expect((await store.list(jobId)).map((m) => m.id)).toEqual([one.meta.id, two.meta.id, three.meta.id]);

    const cp = (await store.restorable(jobId, caps))!;
    try {
      expect(cp.meta).toEqual(three.meta);
      expect(await fs.readFile(path.join(cp.imagesDir, 'pages-1.img'))).toEqual(three.image);
      expect(await fs.readFile(path.join(cp.imagesDir, 'core-1.img'), 'utf8')).toBe('seq 3');
      const disk = await fs.readFile(cp.diskImage);
      expect(disk.length).toBe(32 << 20);
      expect(disk.subarray(1 << 20, (1 << 20) + 70_000)).toEqual(three.diskData);
      expect(disk.subarray(-3).toString()).toBe('end');
      expect((await fs.stat(cp.diskImage)).blocks * 512).toBeLessThan(1 << 20); // holes stay holes
    } finally {
      await cp.release();
    }

    await store.prune(jobId, 2);
    expect((await store.list(jobId)).map((m) => m.id)).toEqual([two.meta.id, three.meta.id]);
    await store.removeAll(jobId);
    expect(await store.list(jobId)).toEqual([]);
    expect(await store.restorable(jobId, caps)).toBeUndefined();
  });

  it('refuses job ids that are not ids (a path in disguise)', async () => {
    const store = make();
    await expect(store.stage('../../etc', 1)).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(store.restorable('../x', caps)).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});

describe('object store: what is read back is checked before use', () => {
  const store = () => new ObjectCheckpointStore(s3.objects, path.join(work, 'obj-hostile'));
  // What a hostile host or store writes: plain objects under the same keys, past the checkpoint store.
  const put = (key: string, body: Buffer | string) => s3.objects.put(key, Buffer.from(body));
  const keyOf = (jobId: string, m: CheckpointMeta, file: string) => `checkpoints/${jobId}/${String(m.seq).padStart(6, '0')}-${m.id}/${file}`;

  it('a checkpoint whose upload never finished (data without a manifest) does not exist for readers, and prune removes it', async () => {
    const s = store();
    const jobId = `job${randomBytes(5).toString('hex')}`;
    const one = await commitOne(s, jobId, 1);
    // Host died mid-upload of checkpoint 2: part of its data, no manifest.
    const half = metaFor(jobId, 2);
    await put(keyOf(jobId, half, 'data.tar'), randomBytes(5000));
    expect((await s.list(jobId)).map((m) => m.id)).toEqual([one.meta.id]);
    const cp = (await s.restorable(jobId, caps))!;
    expect(cp.meta.id).toBe(one.meta.id);
    await cp.release();
    const three = await commitOne(s, jobId, 3);
    await s.prune(jobId, 1);
    expect((await s3.objects.list(`checkpoints/${jobId}/`)).map((o) => o.key)).toEqual([keyOf(jobId, three.meta, 'data.tar'), keyOf(jobId, three.meta, 'manifest.json')]);
    await s.removeAll(jobId);
  });

  it('data changed in the store after its manifest (a flipped byte, a truncation) is refused by its SHA-256; the restore falls back to the checkpoint before', async () => {
    const s = store();
    const jobId = `job${randomBytes(5).toString('hex')}`;
    const one = await commitOne(s, jobId, 1);
    const two = await commitOne(s, jobId, 2);
    const data = (await s3.objects.getSmall(keyOf(jobId, two.meta, 'data.tar'), 1 << 26))!;
    const flipped = Buffer.from(data);
    flipped[Math.floor(data.length / 2)]! ^= 0x40; // inside the images' data: the tar frame stays valid
    for (const bad of [flipped, data.subarray(0, data.length - 512)]) {
      await put(keyOf(jobId, two.meta, 'data.tar'), bad);
      const cp = (await s.restorable(jobId, caps))!;
      expect(cp.meta.id).toBe(one.meta.id);
      expect(await fs.readFile(path.join(cp.imagesDir, 'pages-1.img'))).toEqual(one.image);
      await cp.release();
    }
    // With no good checkpoint left: checkpoint_incompatible, and no downloaded file stays behind.
    await put(keyOf(jobId, one.meta, 'data.tar'), flipped);
    await expect(s.restorable(jobId, caps)).rejects.toMatchObject({ code: 'checkpoint_incompatible' });
    expect(await fs.readdir(path.join(work, 'obj-hostile', jobId)).catch(() => [])).toEqual([]);
    await s.removeAll(jobId);
  });

  it('forged manifests: more data than the job may hold, a hash of other data, a meta naming a path, not JSON, huge: refused without downloading', async () => {
    const s = store();
    const jobId = `job${randomBytes(5).toString('hex')}`;
    const one = await commitOne(s, jobId, 1);
    const manifestKey = keyOf(jobId, one.meta, 'manifest.json');
    const genuine = JSON.parse((await s3.objects.getSmall(manifestKey, 65536))!.toString()) as { meta: CheckpointMeta; data: { bytes: number; sha256: string } };
    const cases: Array<[string, string, RegExp]> = [
      ['a data size beyond the job limits', JSON.stringify({ ...genuine, data: { ...genuine.data, bytes: 50 * 2 ** 30 } }), /more than job .* limits allow/],
      ['a hash of other data', JSON.stringify({ ...genuine, data: { ...genuine.data, sha256: sha(Buffer.from('x')) } }), /SHA-256/],
      ['a template version that climbs out', JSON.stringify({ ...genuine, meta: { ...genuine.meta, template: { name: 'base', hash: '../../../etc' } } }), /field template\.hash/],
      ['text that is not JSON', 'not json {', /not valid JSON/],
      ['a 100 KiB manifest', JSON.stringify({ ...genuine, pad: 'x'.repeat(100_000) }), /larger than 64 KiB/],
    ];
    for (const [what, body, message] of cases) {
      await put(manifestKey, body);
      const e = await s.restorable(jobId, caps).then(() => undefined, (x: unknown) => x as Error & { code: string });
      expect(e, what).toMatchObject({ code: 'checkpoint_incompatible' });
      expect(e!.message, what).toMatch(message);
      expect(e!.message, what).not.toContain('/etc');
    }
    await s.removeAll(jobId);
  });

  it('a store that is down is an error to retry (unavailable), not a reason to use an older checkpoint', async () => {
    const s = new ObjectCheckpointStore(new S3ObjectStore({ ...s3.server.location, endpoint: 'http://127.0.0.1:1' }), path.join(work, 'obj-down'));
    await expect(s.restorable(`job${randomBytes(5).toString('hex')}`, caps)).rejects.toMatchObject({ code: 'unavailable' });
  });
});

describe('a VPS checkpointed to the object store on one host continues on another that shares nothing else', () => {
  let a: TestEngine;
  let b: TestEngine;
  beforeAll(async () => {
    a = await testEngine('obj-a');
    b = await testEngine('obj-b');
  });
  afterAll(async () => {
    await a?.cleanup();
    await b?.cleanup();
  });

  it('its processes, memory and files come back from the store; nothing is left in either local dir', async () => {
    const storeA = new ObjectCheckpointStore(s3.objects, path.join(work, 'host-a'));
    const storeB = new ObjectCheckpointStore(s3.objects, path.join(work, 'host-b'));
    const jobId = `job${randomBytes(5).toString('hex')}`;
    const vps = await a.create({ hostname: 'stored-box' });
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'head -c 3000000 /dev/urandom > /tmp/blob; sum=$(md5sum < /tmp/blob); echo ready; i=0; while [ $i -lt 40 ]; do echo "$i $(hostname)"; i=$((i+1)); sleep 0.1; done; [ "$(md5sum < /tmp/blob)" = "$sum" ] && echo blob-kept'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    let restored: Awaited<ReturnType<TestEngine['engine']['create']>> | undefined;
    try {
      await waitFor(() => out.split('\n').length > 5, 'five lines on host a', 15_000);
      const staged = await storeA.stage(jobId, 1);
      const snap = await snapshot(a.engine, vps, staged);
      const spec = vps.info().spec;
      await storeA.commit(jobId, { ...metaFor(jobId, 1), template: { name: spec.template.name, hash: spec.template.hash }, network: { mode: 'none' }, hostname: spec.hostname, imagesBytes: snap.imagesBytes, diskBytes: snap.diskBytes }, staged.dir);
      // Host a is gone (its VPS with it); host b has only the store.
      await a.engine.destroy(vps.id);
      await running.catch(() => undefined);
      const linesBefore = out.trim().split('\n').length;
      const cp = (await storeB.restorable(jobId, { memoryMb: spec.memoryMb, diskMb: spec.diskMb }))!;
      expect(cp.disposable).toBe(true);
      restored = await b.engine.create(newId(), spec, { imagesDir: cp.imagesDir, disk: { path: cp.diskImage, move: cp.disposable } });
      await cp.release();
      let after = '';
      const rest = await restored.adopt({ argv: [], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (after += d.toString()) }, { startedAt: new Date().toISOString() });
      expect(rest.exitCode).toBe(0);
      const lines = after.trim().split('\n');
      expect(lines.at(-1)).toBe('blob-kept');
      const counted = lines.slice(0, -1).map((l) => Number(l.split(' ')[0]));
      // It went on from where the checkpoint was taken (at most the lines printed after it repeat), up to the end.
      expect(counted[0]).toBeGreaterThan(0);
      expect(counted[0]).toBeLessThanOrEqual(linesBefore);
      expect(counted).toEqual(Array.from({ length: 40 - counted[0]! }, (_, i) => counted[0]! + i));
      expect(lines[0]).toMatch(/ stored-box$/);
      expect(await fs.readdir(path.join(work, 'host-a', jobId))).toEqual([]);
      expect(await fs.readdir(path.join(work, 'host-b', jobId))).toEqual([]);
    } finally {
      if (restored) await b.engine.destroy(restored.id);
      await storeA.removeAll(jobId);
      await storeB.removeAll(jobId);
    }
  });
});
