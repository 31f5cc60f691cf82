import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { criuErrors } from '../../runtime/checkpoint/checkpoint.js';
import { DirectoryCheckpointStore, type CheckpointMeta } from '../../runtime/checkpoint/store.js';
import { gc } from '../../runtime/gc.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';

/**
 * What runbox reads back from a checkpoint or a VPS's host records and then acts on as root, or
 * quotes to a tenant: a checkpoint's meta.json (a shared checkpoint store: another host writes
 * it), CRIU's log (its lines quote what the VPS or the images chose), vps.json (gc and destroy
 * delete the host objects it names). The attacker writes them as a hostile host or store would.
 */
const SECRET = `S3CR3T-${randomBytes(8).toString('hex')}`;
let dir: string;
let tokenFile: string;

const errorOf = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as Error & { code?: string });
const within = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_r, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))]);

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'rbA-checkpoint-data-'));
  tokenFile = path.join(dir, 'api-tokens');
  // A token file whose line also looks like a CRIU error line.
  await fs.writeFile(tokenFile, `default:admin=${SECRET} Error (criu/x.c:1): ${SECRET}\n`, { mode: 0o600 });
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe("a checkpoint's meta.json written by a hostile host", () => {
  const jobId = `job${randomBytes(5).toString('hex')}`;
  let store: DirectoryCheckpointStore;
  let metaFile: string;
  const meta: CheckpointMeta = {
    id: 'a1b2c3d4e5f6',
    jobId,
    seq: 1,
    createdAt: new Date().toISOString(),
    host: 'host-a',
    template: { name: 'base', hash: '0123456789abcdef' },
    network: { mode: 'private', address: '10.88.0.7' },
    hostname: 'box',
    outputOffset: 12,
    frozenMs: 30,
    imagesBytes: 1000,
    diskBytes: 2000,
  };

  beforeAll(async () => {
    store = new DirectoryCheckpointStore(path.join(dir, 'checkpoints'));
    const staged = await store.stage(jobId, 1);
    await store.commit(jobId, meta, staged.dir);
    metaFile = path.join(store.root, jobId, `000001-${meta.id}`, 'meta.json');
  });

  it('a genuine one is read as written', async () => {
    expect((await store.restorable(jobId, { memoryMb: 64, diskMb: 64 }))?.meta).toEqual(meta);
    expect(await store.list(jobId)).toEqual([meta]);
  });

  it.each([
    ['a template version that climbs out of the templates dir', { template: { name: 'base', hash: '../../../../etc' } }, 'template.hash'],
    ['a template name with a slash', { template: { name: '../x', hash: '0123456789abcdef' } }, 'template.name'],
    ['an address that is a path (the lease file it names is removed later)', { network: { mode: 'private', address: '../../../../etc/passwd' } }, 'network.address'],
    ['a hostname with a newline', { hostname: 'box\nx' }, 'hostname'],
    ['an unknown network mode', { network: { mode: 'host' } }, 'network.mode'],
    ['a negative offset', { outputOffset: -1 }, 'outputOffset'],
    ['a job id of another job', { jobId: 'otherjob0000' }, 'jobId'],
  ])('refuses %s, naming the field, quoting nothing', async (_what, over, field) => {
    await fs.writeFile(metaFile, JSON.stringify({ ...meta, ...over }));
    for (const read of [() => store.restorable(jobId), () => store.list(jobId)]) {
      const e = await errorOf(read());
      expect(e).toMatchObject({ code: 'checkpoint_incompatible' });
      expect(e!.message).toContain(field === 'jobId' ? 'a meta.json of another checkpoint' : `field ${field}`);
      expect(e!.message).not.toMatch(/etc|passwd|\.\.\/|box\n|otherjob/);
    }
  });

  it('refuses one of another checkpoint (seq or id not those of its directory)', async () => {
    await fs.writeFile(metaFile, JSON.stringify({ ...meta, seq: 2 }));
    expect(await errorOf(store.restorable(jobId, { memoryMb: 64, diskMb: 64 }))).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining('another checkpoint') });
  });

  it('a symlink to the token file, a FIFO, a huge file, text that is not JSON: refused, never quoted, never blocking', async () => {
    const cases: Array<[string, () => Promise<void>]> = [
      ['a symlink to the token file', () => fs.symlink(tokenFile, metaFile)],
      ['a FIFO', async () => void execFileSync('mkfifo', [metaFile])],
      ['a 1 MiB file', () => fs.writeFile(metaFile, JSON.stringify({ ...meta, pad: 'x'.repeat(1 << 20) }))],
      ['the token file copied in', () => fs.copyFile(tokenFile, metaFile)],
    ];
    for (const [what, plant] of cases) {
      await fs.rm(metaFile, { force: true });
      await plant();
      const e = await errorOf(within(store.restorable(jobId, { memoryMb: 64, diskMb: 64 }), 5000, `reading ${what}`));
      expect(e, what).toMatchObject({ code: 'checkpoint_incompatible' });
      expect(e!.message, what).not.toContain(SECRET.slice(0, 6));
      expect(e!.message, what).not.toContain('default:ad');
    }
    await fs.rm(metaFile, { force: true });
    await fs.writeFile(metaFile, JSON.stringify(meta));
  });
});

describe("CRIU's log quoted in error messages", () => {
  let work: string;
  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(dir, 'work-'));
  });

  it('cuts lines short, strips control characters, reads only the tail', async () => {
    const huge = `(00.1) Error (criu/files-reg.c:1): Can't open /tmp/${'A'.repeat(200_000)}`;
    const escapes = "(00.2) Error (criu/sk-unix.c:2): bad socket /tmp/\x1b[2J\x1b]0;owned\x07\r\x00name";
    const filler = `${'(00.0) just a line\n'.repeat(200_000)}`; // ~3.8 MB before the last errors
    await fs.writeFile(path.join(work, 'restore.log'), `(00.0) Error (criu/early.c:0): far before the tail\n${filler}${huge}\n${escapes}\n`);
    const msg = await criuErrors(work, 'restore.log');
    expect(msg.length).toBeLessThan(1000);
    expect(msg).not.toContain('far before the tail');
    expect(msg).toMatch(/^: Error \(criu\/files-reg\.c:1\): Can't open \/tmp\/A+…; Error \(criu\/sk-unix\.c:2\): bad socket \/tmp\/\?\[2J\?\]0;owned\?\?\?name$/);
  });

  it('follows no symlink (the token file) and does not block on a FIFO', async () => {
    await fs.symlink(tokenFile, path.join(work, 'dump.log'));
    expect(await within(criuErrors(work, 'dump.log'), 5000, 'a symlinked log')).toBe('');
    execFileSync('mkfifo', [path.join(work, 'fifo.log')]);
    expect(await within(criuErrors(work, 'fifo.log'), 5000, 'a FIFO log')).toBe('');
  });
});

describe('a vps.json that names host objects other than its own', () => {
  let t: TestEngine;
  beforeAll(async () => {
    t = await testEngine('vpsrecord');
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('gc does not delete the file its address names, nor the netns it names', async () => {
    const victim = path.join(dir, `victim-${randomBytes(3).toString('hex')}`);
    await fs.writeFile(victim, 'keep me');
    const victimNs = `rbAv${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', victimNs]);
    try {
      const id = `rec${randomBytes(4).toString('hex')}`;
      const p = t.engine.layout.vps(id);
      await fs.mkdir(p.dir, { recursive: true });
      const relative = path.relative(t.engine.layout.addrDir, victim);
      await fs.writeFile(p.meta, JSON.stringify({
        id,
        spec: {},
        network: { mode: 'private', netns: victimNs, hostVeth: 'rvxx', address: relative },
        owner: { pid: 999_999_999, start: 1 }, // gone: gc removes the VPS
        createdAt: new Date().toISOString(),
      }));
      const record = await t.engine.readRecord(id);
      const report = await gc(t.engine);
      expect(existsSync(victim), 'gc removed the file the record named').toBe(true);
      expect(existsSync(`/run/netns/${victimNs}`), 'gc removed the netns the record named').toBe(true);
      expect(record).toBeUndefined();
      expect(report.vps).toContain(id);
      expect(existsSync(p.dir)).toBe(false);
    } finally {
      if (existsSync(`/run/netns/${victimNs}`)) execFileSync('ip', ['netns', 'del', victimNs]);
    }
  });
});
