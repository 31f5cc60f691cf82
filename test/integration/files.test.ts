import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CollectResult } from '../../runtime/agent/collect.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';

/**
 * Files in and out of a VPS through its agent. The agent runs in the VPS's own mount namespace, so
 * a symlink a job plants can only lead to the VPS's own files, never to the host's: the defence
 * against the Judge0-style escapes (CVE-2024-28185, CVE-2024-28189).
 */
let t: TestEngine;
let secretDir: string;
let secretFile: string;
const SECRET = 'HOST-SECRET';
const CAPS = { maxBytes: 16 * 1024 * 1024, maxFiles: 1000 };

beforeAll(async () => {
  t = await testEngine('files');
  secretDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-files-secret-'));
  secretFile = path.join(secretDir, 'secret.txt');
  await fs.writeFile(secretFile, `${SECRET}\n`);
});
afterAll(async () => {
  await t?.cleanup();
  if (secretDir) await fs.rm(secretDir, { recursive: true, force: true });
});

/** Runs `script` in `vps` (workdir /tmp) and expects success; the VPS stays, in state exited. */
async function runIn(vps: RuncVps, script: string): Promise<string> {
  const out: Buffer[] = [];
  const r = await vps.run({
    argv: ['sh', '-c', script],
    workdir: '/tmp',
    timeoutSec: 30,
    outputBytes: 1024 * 1024,
    onOutput: (_s, d) => out.push(Buffer.from(d)),
  });
  const text = Buffer.concat(out).toString();
  expect(r.exitCode, text).toBe(0);
  expect(vps.state).toBe('exited');
  return text;
}

/** A fresh VPS for `fn`, destroyed afterwards. */
async function withVps<T>(fn: (vps: RuncVps) => Promise<T>): Promise<T> {
  const vps = await t.create();
  try {
    return await fn(vps);
  } finally {
    await t.engine.destroy(vps.id);
  }
}

function byPath(r: CollectResult): Map<string, { mode: number; content: Buffer }> {
  return new Map(r.files.map((f) => [f.path, f]));
}

/** Host content that must never come out of a VPS. */
async function hostShadow(): Promise<string | undefined> {
  const s = await fs.readFile('/etc/shadow', 'utf8').catch(() => undefined);
  return s && s.trim() ? s : undefined;
}

describe('collecting files from a VPS', () => {
  it('returns files and directory trees, with contents and modes, relative patterns from the workdir', async () => {
    const bin = crypto.randomBytes(100 * 1024);
    await withVps(async (vps) => {
      await vps.writeFile('/in/b.bin', bin);
      await runIn(
        vps,
        'mkdir -p /out/sub && echo hello > /out/a.txt && chmod 640 /out/a.txt && ' +
          'cp /in/b.bin /out/sub/b.bin && chmod 600 /out/sub/b.bin && echo \'{"ok":true}\' > result.json',
      );
      const r = await vps.collect(['/out', 'result.json'], CAPS);
      const files = byPath(r);
      expect([...files.keys()].sort()).toEqual(['/out/a.txt', '/out/sub/b.bin', '/tmp/result.json']);
      expect(files.get('/out/a.txt')).toEqual({ path: '/out/a.txt', mode: 0o640, content: Buffer.from('hello\n') });
      expect(files.get('/out/sub/b.bin')!.mode).toBe(0o600);
      expect(files.get('/out/sub/b.bin')!.content.equals(bin)).toBe(true);
      expect(files.get('/tmp/result.json')).toEqual({ path: '/tmp/result.json', mode: 0o644, content: Buffer.from('{"ok":true}\n') });
      expect(r.truncated).toBe(false);
      expect(r.notes).toEqual([]);

      // overlapping patterns give every file once; a pattern without a match is noted
      const again = await vps.collect(['/out/*', '/out', '/out/sub/b.bin', '/nothing/*.txt'], CAPS);
      expect(again.files.map((f) => f.path).sort()).toEqual(['/out/a.txt', '/out/sub/b.bin']);
      expect(again.notes).toEqual(['no match: /nothing/*.txt']);
    });
  });

  it('never follows a planted symlink to a host file, another VPS or the host /etc/shadow', async () => {
    const other = await t.create();
    try {
      // Host paths of the other VPS: its record, and a file in its disk (upper dir and merged view).
      await runIn(other, 'echo OTHER-VPS-MARKER > /root/marker');
      const otherPaths = t.engine.layout.vps(other.id);
      const otherMeta = path.join(otherPaths.dir, 'vps.json');
      const otherUpper = path.join(otherPaths.layerMount, 'upper/root/marker');
      const otherMerged = path.join(otherPaths.rootfs, 'root/marker');
      const otherMetaContent = await fs.readFile(otherMeta, 'utf8');
      expect(await fs.readFile(otherUpper, 'utf8')).toBe('OTHER-VPS-MARKER\n'); // the targets are real on the host
      const shadow = await hostShadow();

      await withVps(async (vps) => {
        const links: Record<string, string> = {
          shadow: '/etc/shadow',
          root: '/proc/1/root',
          hostfile: otherMeta,
          otherupper: otherUpper,
          othermerged: otherMerged,
          secret: secretFile,
          relsecret: `../../../../../../../..${secretFile}`,
          'deep/secretdir': secretDir,
          'deep/hostetc': '/etc',
        };
        const script = [
          'mkdir -p /out/deep && echo fine > /out/ok.txt && cat /etc/hostname',
          ...Object.entries(links).map(([name, target]) => `ln -s '${target}' '/out/${name}'`),
        ].join(' && ');
        const hostnameInVps = await runIn(vps, script);

        const r = await vps.collect(['/out', '/out/*'], CAPS);
        const check = (res: CollectResult) => {
          for (const f of res.files) {
            const text = f.content.toString('latin1');
            expect(text).not.toContain(SECRET);
            expect(text).not.toContain('OTHER-VPS-MARKER');
            expect(text).not.toContain(otherMetaContent);
            if (shadow) expect(text).not.toContain(shadow);
          }
        };
        check(r);
        expect(r.files.map((f) => f.path)).toEqual(['/out/ok.txt']);
        // every symlink is reported, once, and nothing else
        expect([...r.notes].sort()).toEqual(Object.keys(links).map((n) => `skipped /out/${n}: symlink`).sort());
        expect(r.truncated).toBe(false);

        // asked for directly, or through a glob below them: still skipped or no match
        const direct = await vps.collect(['/out/secret', '/out/hostfile', '/out/deep/secretdir/*', `/out/deep/secretdir/secret.txt`], CAPS);
        check(direct);
        expect(direct.files).toEqual([]);
        expect(direct.notes).toEqual([
          'skipped /out/secret: symlink',
          'skipped /out/hostfile: symlink',
          'no match: /out/deep/secretdir/*',
          'no match: /out/deep/secretdir/secret.txt',
        ]);

        // a symlinked *directory* in the middle of a pattern resolves inside the VPS: to its own files
        // (both patterns reach the same file of the VPS, which is sent once)
        const inside = await vps.collect(['/out/root/etc/hostname', '/out/deep/hostetc/hostname'], CAPS);
        check(inside);
        expect(inside.files.map((f) => [f.path, f.content.toString()])).toEqual([['/out/root/etc/hostname', hostnameInVps]]);
        const etc = await vps.collect(['/out/deep/hostetc/shadow'], CAPS);
        check(etc);
        expect(etc.files[0]!.content.equals(await fs.readFile(path.join((await t.base()).rootfs, 'etc/shadow')))).toBe(true);
      });
    } finally {
      await t.engine.destroy(other.id);
    }
  });

  it("returns the VPS's own /etc/shadow (the template's), not the host's", async () => {
    const tplShadow = await fs.readFile(path.join((await t.base()).rootfs, 'etc/shadow'));
    const shadow = await hostShadow();
    await withVps(async (vps) => {
      const r = await vps.collect(['/etc/shadow'], CAPS); // state ready: no job ran
      expect(vps.state).toBe('ready');
      expect(r.files).toHaveLength(1);
      expect(r.files[0]!.path).toBe('/etc/shadow');
      expect(r.files[0]!.mode).toBe(0o640);
      expect(r.files[0]!.content.equals(tplShadow)).toBe(true);
      if (shadow) expect(r.files[0]!.content.toString()).not.toBe(shadow);
      // with no job, a relative pattern is relative to /
      expect((await vps.collect(['etc/shadow'], CAPS)).files.map((f) => f.path)).toEqual(['/etc/shadow']);
    });
  });

  it('enforces the byte and file caps', async () => {
    await withVps(async (vps) => {
      await runIn(
        vps,
        'mkdir -p /out /many && head -c 200000 /dev/urandom > /out/big && echo one > /out/s1 && echo two > /out/s2 && ' +
          'for i in 1 2 3 4 5; do echo $i > /many/f$i; done',
      );
      const bytes = await vps.collect(['/out'], { maxBytes: 1000, maxFiles: 100 });
      expect(bytes.files.map((f) => [f.path, f.content.toString()]).sort()).toEqual([
        ['/out/s1', 'one\n'],
        ['/out/s2', 'two\n'],
      ]);
      expect(bytes.truncated).toBe(true);
      expect(bytes.notes).toHaveLength(1); // what is left depends on the directory order
      expect(bytes.notes[0]).toMatch(/^skipped \/out\/big: over the size cap \(200000 bytes, (1000|996|992) left\)$/);

      const count = await vps.collect(['/many/*'], { maxBytes: 1000, maxFiles: 2 });
      expect(count.files.map((f) => f.path)).toEqual(['/many/f1', '/many/f2']);
      expect(count.truncated).toBe(true);
      expect(count.notes).toEqual(['skipped /many/f3: over the file count cap (2); collection stopped']);

      const all = await vps.collect(['/many/*'], { maxBytes: 10, maxFiles: 5 });
      expect(all.files).toHaveLength(5);
      expect(all.truncated).toBe(false);

      // collections issued together run one after the other, each getting its own files
      const [a, b, c] = await Promise.all([
        vps.collect(['/out/s1'], CAPS),
        vps.collect(['/many'], CAPS),
        vps.collect(['/out/big'], CAPS),
      ]);
      expect(a.files.map((f) => f.path)).toEqual(['/out/s1']);
      expect(b.files.map((f) => f.path).sort()).toEqual(['/many/f1', '/many/f2', '/many/f3', '/many/f4', '/many/f5']);
      expect(c.files.map((f) => f.content.length)).toEqual([200000]);
    });
  });

  it('skips a FIFO and a symlink to /dev/zero without hanging', async () => {
    await withVps(async (vps) => {
      await runIn(vps, 'mkdir -p /out && mkfifo /out/fifo && ln -s /dev/zero /out/zero && echo x > /out/real');
      const t0 = Date.now();
      const r = await vps.collect(['/out', '/dev/zero', '/out/fifo'], { ...CAPS, timeoutMs: 10_000 });
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(r.files.map((f) => f.path)).toEqual(['/out/real']);
      expect([...r.notes].sort()).toEqual(['skipped /dev/zero: character device', 'skipped /out/fifo: FIFO', 'skipped /out/zero: symlink']);
    });
  });

  it('times out with a clear error, and the late frames do not leak into the next collection', async () => {
    await withVps(async (vps) => {
      await runIn(vps, 'mkdir -p /out && head -c 20000000 /dev/urandom > /out/huge && echo small > /out/small');
      const err = await vps.collect(['/out/huge'], { ...CAPS, maxBytes: 32_000_000, timeoutMs: 1 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'unavailable' });
      expect(String(err)).toMatch(/collecting \["\/out\/huge"\]: no end of collection \(Z frame\) within 1 ms/);
      const r = await vps.collect(['/out/small'], CAPS);
      expect(r.files).toEqual([{ path: '/out/small', mode: 0o644, content: Buffer.from('small\n') }]);
      expect(r.notes).toEqual([]);
    });
  });

  it('rejects bad arguments and a destroyed VPS', async () => {
    const vps = await t.create();
    await expect(vps.collect([], CAPS)).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(vps.collect([''], CAPS)).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(vps.collect(['/a\0b'], CAPS)).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(vps.collect(['/a'], { maxBytes: -1, maxFiles: 1 })).rejects.toMatchObject({ code: 'invalid_argument' });
    await t.engine.destroy(vps.id);
    await expect(vps.collect(['/etc/hostname'], CAPS)).rejects.toMatchObject({ code: 'conflict' });
  });
});

describe('writing files into a VPS', () => {
  it('refuses a planted symlink as the final component and stays inside the VPS through a symlinked directory', async () => {
    const name = `runbox-files-test-${crypto.randomBytes(6).toString('hex')}`;
    const tplPasswd = await fs.readFile(path.join((await t.base()).rootfs, 'etc/passwd'));
    await withVps(async (vps) => {
      await runIn(vps, 'ln -s /etc/passwd /tmp/link && ln -s /etc /tmp/dirlink');

      const err = await vps.writeFile('/tmp/link', Buffer.from('pwned\n')).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'invalid_argument' });
      expect(String(err)).toMatch(/Too many levels of symbolic links/); // ELOOP from O_NOFOLLOW

      await vps.writeFile(`/tmp/dirlink/${name}`, Buffer.from('inside\n'));
      await expect(fs.access(path.join('/etc', name))).rejects.toThrow(); // never the host's /etc

      const r = await vps.collect([`/etc/${name}`, '/etc/passwd'], CAPS);
      expect(byPath(r).get(`/etc/${name}`)?.content.toString()).toBe('inside\n'); // the VPS's own /etc
      expect(byPath(r).get('/etc/passwd')?.content.equals(tplPasswd)).toBe(true); // untouched
    });
    await expect(fs.access(path.join('/etc', name))).rejects.toThrow();
  });

  it('rejects relative paths and NUL bytes', async () => {
    await withVps(async (vps) => {
      await expect(vps.writeFile('tmp/x', Buffer.from('x'))).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(vps.writeFile('', Buffer.from('x'))).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(vps.writeFile('/tmp/a\0b', Buffer.from('x'))).rejects.toMatchObject({ code: 'invalid_argument' });
    });
  });
});
