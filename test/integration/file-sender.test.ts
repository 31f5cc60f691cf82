import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../core/log.js';
import type { Host } from '../../core/store/hosts.js';
import { loadCredentials, type MigrationCredentials } from '../../worker/migration/credentials.js';
import { receiveFiles } from '../../worker/migration/files.js';
import { checkpointFiles } from '../../worker/migration/protocol.js';
import { FileSender } from '../../worker/migration/sender.js';
import { ChannelServer, type ChannelRequest } from '../../worker/migration/transport.js';

/**
 * The file sender's thread (worker/migration/sender.ts) against a real channel server: mutual
 * TLS, GNU tar, the strict reader. The thread runs the compiled copy in dist/ (setup builds it).
 */
const MiB = 1024 * 1024;
let tmp: string;
let a: MigrationCredentials;
let b: MigrationCredentials;
let server: ChannelServer;
let port: number;
let onRequest: (r: ChannelRequest) => Promise<void>;
const host = (id: string, p: number, c: MigrationCredentials): Host => {
  const now = new Date().toISOString();
  return { id, address: '127.0.0.1', startedAt: now, heartbeatAt: now, draining: false, running: 0, capacity: 1, pools: [], templates: [], version: 't', migrationPort: p, migrationFingerprint: c.fingerprint };
};

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-sender-'));
  const log = createLogger('silent');
  a = await loadCredentials({ stateDir: path.join(tmp, 'a'), hostId: 'a', files: {}, log });
  b = await loadCredentials({ stateDir: path.join(tmp, 'b'), hostId: 'b', files: {}, log });
  server = new ChannelServer({ credentials: b, hosts: { list: async () => [host('a', 0, a)] }, log, onRequest: (r) => onRequest(r) });
  port = await server.listen('127.0.0.1', 0);
  // A checkpoint's files: 8 MiB of memory images and a sparse disk image.
  await fs.mkdir(path.join(tmp, 'src/images'), { recursive: true });
  await fs.writeFile(path.join(tmp, 'src/images/pages-1.img'), Buffer.alloc(8 * MiB, 0x5a));
  execFileSync('truncate', ['-s', '64M', path.join(tmp, 'src/disk.img')]);
});
afterAll(async () => {
  await server?.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

const spec = { memoryMb: 16, diskMb: 64 };

/** The receiving side: the files into a fresh dir, then an answer naming what arrived. */
function receiver(): { dirs: string[] } {
  const dirs: string[] = [];
  onRequest = async (r) => {
    const out = await fs.mkdtemp(path.join(tmp, 'in-'));
    dirs.push(out);
    try {
      await receiveFiles(r.reader, checkpointFiles(out, spec));
      r.done();
      r.answer({ ok: true, message: JSON.parse(r.line).hello });
    } catch (e) {
      r.answer({ ok: false, code: 'invalid_argument', message: (e as Error).message });
    }
  };
  return { dirs };
}

describe('the file sender thread', () => {
  it('sends a move with its files from its own thread: they arrive intact; the answer comes back', async () => {
    const { dirs } = receiver();
    const sender = new FileSender();
    try {
      for (const hello of ['first', 'second']) {
        const answer = await sender.send(a, host('b', port, b), { hello }, { files: checkpointFiles(path.join(tmp, 'src'), spec), timeoutMs: 30_000 });
        expect(answer).toEqual({ ok: true, message: hello });
      }
      for (const d of dirs) {
        expect((await fs.readFile(path.join(d, 'images/pages-1.img'))).equals(Buffer.alloc(8 * MiB, 0x5a))).toBe(true);
        expect((await fs.stat(path.join(d, 'disk.img'))).size).toBe(64 * MiB);
      }
    } finally {
      await sender.close();
    }
  });

  it('a connection broken mid-transfer (fault injection) and a peer with another certificate fail as errors of the move, not of the thread', async () => {
    receiver();
    const sender = new FileSender();
    try {
      const files = checkpointFiles(path.join(tmp, 'src'), spec);
      const broken = await sender.send(a, host('b', port, b), { hello: 'x' }, { files, breakMidway: true, timeoutMs: 30_000 }).catch((e: Error) => e);
      expect(broken instanceof Error ? broken.message : JSON.stringify(broken)).toMatch(/injected fault|malformed|ended early|closed/);
      // Host b's address, but a's fingerprint: refused by the client before a byte is sent.
      await expect(sender.send(a, { ...host('b', port, b), migrationFingerprint: a.fingerprint }, { hello: 'x' }, { files, timeoutMs: 30_000 })).rejects.toMatchObject({
        code: 'unavailable',
        message: expect.stringMatching(/is not host b/),
      });
      // And it goes on working.
      receiver();
      expect(await sender.send(a, host('b', port, b), { hello: 'after' }, { files, timeoutMs: 30_000 })).toEqual({ ok: true, message: 'after' });
    } finally {
      await sender.close();
    }
  });

  it('a thread that dies mid-send fails its request as unavailable; the next request starts a new thread', async () => {
    // The receiver never answers: the send is under way when the thread is killed.
    let hung: ChannelRequest | undefined;
    onRequest = (r) => {
      hung = r;
      return new Promise<void>(() => undefined);
    };
    const sender = new FileSender();
    const files = checkpointFiles(path.join(tmp, 'src'), spec);
    try {
      const pending = sender.send(a, host('b', port, b), { hello: 'x' }, { files, timeoutMs: 30_000 });
      await new Promise((r) => setTimeout(r, 300));
      await sender.close(); // terminates the thread
      await expect(pending).rejects.toMatchObject({ code: 'unavailable', message: expect.stringMatching(/file sender thread exited/) });
      expect(sender.threaded).toBe(true); // it ran: a later send starts another thread
      hung?.abort(new Error('the test is over')); // its connection goes (the server closes at the end)
      receiver();
      expect(await sender.send(a, host('b', port, b), { hello: 'again' }, { files, timeoutMs: 30_000 })).toEqual({ ok: true, message: 'again' });
    } finally {
      await sender.close();
    }
  });

  it('a thread that cannot start (its script missing: an unbuilt checkout) sends from the main thread instead, also the request that found out', async () => {
    receiver();
    const sender = new FileSender({ script: new URL(`file://${path.join(tmp, 'no-such-thread.js')}`) });
    const files = checkpointFiles(path.join(tmp, 'src'), spec);
    try {
      expect(await sender.send(a, host('b', port, b), { hello: 'inline' }, { files, timeoutMs: 30_000 })).toEqual({ ok: true, message: 'inline' });
      expect(sender.threaded).toBe(false);
      expect(await sender.send(a, host('b', port, b), { hello: 'still' }, { files, timeoutMs: 30_000 })).toEqual({ ok: true, message: 'still' });
    } finally {
      await sender.close();
    }
  });

  it('an idle thread keeps no process alive (a worker that shuts down is not held by it)', () => {
    const script = `import('${path.resolve('dist/worker/migration/sender.js')}').then(({ FileSender }) => { new FileSender().warm(); console.log('warm'); });`;
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, encoding: 'utf8' });
    expect(r.stdout.trim()).toBe('warm');
    expect(r.status).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });
});
