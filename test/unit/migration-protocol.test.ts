import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { serviceConfigFromEnv } from '../../core/config.js';
import { namesHost, selfSignedArgs } from '../../worker/migration/credentials.js';
import { headerChecksumOk, receiveFiles, sendFiles, tarArgs, tarNumber, type FileSpec } from '../../worker/migration/files.js';
import {
  checkEnvelope, checkpointFiles, DISK_MARGIN_BYTES, IMAGES_MARGIN_BYTES, MAX_CLOCK_SKEW_MS, MESSAGE_TTL_MS, nonceTtlMs, parseAnswer, parseMessage, seal,
} from '../../worker/migration/protocol.js';
import { SocketReader } from '../../worker/migration/reader.js';

const MiB = 1024 * 1024;
let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-migproto-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const spec = { template: { name: 'base', hash: 'a'.repeat(16) }, hostname: 'h', network: 'none' as const, memoryMb: 64, cpus: 1, pids: 64, diskMb: 256 };
const moveBody = { kind: 'move' as const, jobId: 'job1', migrationId: 'm1', vpsId: 'v1', spec, network: { mode: 'none' as const }, frozenAt: 1, mode: 'stop-and-copy' as const };

describe('messages', () => {
  it('seal makes a valid request with a fresh nonce and a bounded expiry', () => {
    const a = parseMessage(JSON.stringify(seal(moveBody, { from: 'h1', to: 'h2' }, 1000)));
    const b = seal(moveBody, { from: 'h1', to: 'h2' }, 1000);
    expect(a).toMatchObject({ v: 1, kind: 'move', from: 'h1', to: 'h2', expiresAt: 1000 + MESSAGE_TTL_MS });
    expect(a.nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(b.nonce).not.toBe(a.nonce);
  });

  it.each([
    ['not JSON', 'secret=x'],
    ['the old shared-secret header', JSON.stringify({ secret: 'x', jobId: 'j', prepare: { template: { name: 'base', hash: 'x' } } })],
    ['an unknown field', JSON.stringify({ ...seal(moveBody, { from: 'h1', to: 'h2' }), secret: 'x' })],
    ['a path in a template name', JSON.stringify(seal({ ...moveBody, spec: { ...spec, template: { name: '../etc', hash: 'x' } } }, { from: 'h1', to: 'h2' }))],
    ['a page server that is no address', JSON.stringify(seal({ ...moveBody, mode: 'post-copy', pageServer: { address: 'evil.example', port: 1 } }, { from: 'h1', to: 'h2' }))],
    ['a job id with a slash', JSON.stringify(seal({ ...moveBody, jobId: 'a/b' }, { from: 'h1', to: 'h2' }))],
    ['another protocol version', JSON.stringify({ ...seal(moveBody, { from: 'h1', to: 'h2' }), v: 2 })],
  ])('refuses %s without echoing it', (_what, line) => {
    let err: unknown;
    try {
      parseMessage(line);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'invalid_argument', message: expect.stringMatching(/^migration refused/) });
    expect((err as Error).message).not.toContain('evil.example');
  });

  const now = 10_000_000;
  const m = seal(moveBody, { from: 'h1', to: 'h2' }, now);
  it.each([
    ['the sender its certificate names', { peer: 'h1', self: 'h2', now }, undefined],
    ['another sender than the certificate', { peer: 'h3', self: 'h2', now }, /comes from h1.*h3/],
    ['another target', { peer: 'h1', self: 'h3', now }, /for host h2, not h3/],
    ['an expired request', { peer: 'h1', self: 'h2', now: now + MESSAGE_TTL_MS + MAX_CLOCK_SKEW_MS + 1 }, /expired/],
    ['a request within the clock skew', { peer: 'h1', self: 'h2', now: now + MESSAGE_TTL_MS + MAX_CLOCK_SKEW_MS }, undefined],
    ['a request from the far future', { peer: 'h1', self: 'h2', now: now - MAX_CLOCK_SKEW_MS - 1 }, /too far in the future/],
  ])('envelope: %s', (_what, o, error) => {
    if (error) expect(() => checkEnvelope(m, o)).toThrow(error);
    else expect(() => checkEnvelope(m, o)).not.toThrow();
  });

  it('remembers a nonce as long as its request could pass', () => {
    expect(nonceTtlMs(m, now)).toBeGreaterThan(MESSAGE_TTL_MS + MAX_CLOCK_SKEW_MS);
    expect(nonceTtlMs(m, now + 10 * MESSAGE_TTL_MS)).toBe(1000);
  });

  it('answers are validated too', () => {
    expect(parseAnswer('{"ok":true,"resumedAt":5}')).toEqual({ ok: true, resumedAt: 5 });
    expect(() => parseAnswer('{"ok":"yes"}')).toThrow(/malformed/);
    expect(() => parseAnswer('{"ok":false,"code":"rm -rf"}')).toThrow(/malformed/);
  });

  it('caps a move by the job memory and disk limits', () => {
    expect(checkpointFiles('/t', { memoryMb: 64, diskMb: 256 })).toEqual([
      { name: 'images', path: '/t/images', dir: true, maxBytes: 64 * MiB + IMAGES_MARGIN_BYTES },
      { name: 'disk.img', path: '/t/disk.img', maxBytes: 256 * MiB + DISK_MARGIN_BYTES },
    ]);
  });
});

describe('configuration', () => {
  const cfg = (env: NodeJS.ProcessEnv) => serviceConfigFromEnv(env, 'h');
  it('defaults: no fault injection, own certificates, the primary address', () => {
    expect(cfg({})).toMatchObject({ faultInjection: false, migrationTls: { ca: undefined, cert: undefined, key: undefined }, migrationAddress: undefined });
  });
  it.each([
    ['1', true],
    ['true', true],
    ['0', false],
    ['false', false],
    ['', false],
  ])('RUNBOX_FAULT_INJECTION=%j is %s', (v, on) => expect(cfg({ RUNBOX_FAULT_INJECTION: v }).faultInjection).toBe(on));
  it.each([
    [{ RUNBOX_FAULT_INJECTION: 'yes' }, /RUNBOX_FAULT_INJECTION/],
    [{ RUNBOX_MIGRATION_ADDRESS: '0.0.0.0.1' }, /RUNBOX_MIGRATION_ADDRESS/],
    [{ RUNBOX_MIGRATION_CERT: '/c.pem' }, /set both/],
    [{ RUNBOX_MIGRATION_CA: '/ca.pem' }, /set both/],
  ])('refuses %j', (env, error) => expect(() => cfg(env)).toThrow(error));
  it('takes a PKI as absolute paths', () => {
    expect(cfg({ RUNBOX_MIGRATION_CA: 'ca.pem', RUNBOX_MIGRATION_CERT: '/c.pem', RUNBOX_MIGRATION_KEY: '/k.pem', RUNBOX_MIGRATION_ADDRESS: '10.0.0.5' })).toMatchObject({
      migrationTls: { ca: path.resolve('ca.pem'), cert: '/c.pem', key: '/k.pem' },
      migrationAddress: '10.0.0.5',
    });
  });
});

describe('credentials', () => {
  it('openssl argv: a P-256 self-signed certificate named after the host, never a shell string', () => {
    const args = selfSignedArgs('/k', '/c', 'h1; rm -rf /');
    expect(args.slice(0, 3)).toEqual(['openssl', 'req', '-x509']);
    expect(args).toContain('/CN=h1--rm--rf--');
    expect(args).toContain('ec_paramgen_curve:prime256v1');
  });
  it.each([
    [{ subject: 'CN=h1', subjectAltName: undefined }, 'h1', true],
    [{ subject: 'O=x\nCN=h2', subjectAltName: 'DNS:h1, DNS:h3' }, 'h3', true],
    [{ subject: 'CN=h10', subjectAltName: 'IP Address:10.0.0.1' }, 'h1', false],
  ])('namesHost(%j, %s) = %s', (cert, host, ok) => expect(namesHost(cert, host)).toBe(ok));
});

/** A GNU tar header block (what files.ts accepts), for streams GNU tar would not write. */
function header(name: string, o: { type?: string; size?: number; magic?: string; linkname?: string } = {}): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'utf8');
  b.write('0000600\0', 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  b.write(`${(o.size ?? 0).toString(8).padStart(11, '0')}\0`, 124);
  b.write('00000000000\0', 136);
  b.write(o.type ?? '0', 156);
  if (o.linkname) b.write(o.linkname, 157);
  b.write(o.magic ?? 'ustar  \0', 257, 'latin1');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : b[i]!;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}
const endOfArchive = Buffer.alloc(1024);

async function receive(stream: Buffer | ((out: PassThrough) => Promise<void>), files: FileSpec[]): Promise<void> {
  const pipe = new PassThrough();
  const reader = new SocketReader(pipe, 5000);
  const sending = typeof stream === 'function' ? stream(pipe) : Promise.resolve(void pipe.write(stream));
  await Promise.all([receiveFiles(reader, files), sending]);
}

describe('checkpoint files on the wire', () => {
  it('tar argv (pure): sparse GNU format, each entry from its own dir, names checked', () => {
    expect(tarArgs([{ name: 'images', path: '/t/x/images', maxBytes: 1, dir: true }, { name: 'disk.img', path: '/d/disk.img', maxBytes: 1 }])).toEqual([
      'tar', '--create', '--sparse', '--format=gnu', '--blocking-factor=128', '--file', '-', '-C', '/t/x', 'images', '-C', '/d', 'disk.img',
    ]);
    expect(() => tarArgs([{ name: 'disk.img', path: 'rel/disk.img', maxBytes: 1 }])).toThrow(/absolute/);
    expect(() => tarArgs([{ name: 'fs.tar', path: '/t/disk.img', maxBytes: 1 }])).toThrow(/basename/);
  });

  it.each([
    ['0000644\0', 0o644],
    ['   17 \0', 0o17],
    ['', 0],
  ])('octal field %j', (text, n) => expect(tarNumber(Buffer.from(text.padEnd(12, '\0'), 'latin1'))).toBe(n));
  it('base-256 field (sizes above 8 GiB)', () => {
    const f = Buffer.alloc(12);
    f[0] = 0x80;
    f.writeUIntBE(64 * 1024 * MiB, 6, 6);
    expect(tarNumber(f)).toBe(64 * 1024 * MiB);
    expect(headerChecksumOk(header('x'))).toBe(true);
  });

  it('a directory of images and a sparse disk image arrive intact; holes stay holes', async () => {
    const src = path.join(dir, 'src');
    await fs.mkdir(path.join(src, 'images'), { recursive: true });
    await fs.writeFile(path.join(src, 'images', 'pages-1.img'), Buffer.alloc(3 * MiB + 7, 0xab));
    await fs.writeFile(path.join(src, 'images', 'descriptors.json'), '["pipe:[1]"]');
    const disk = path.join(src, 'disk.img');
    const fh = await fs.open(disk, 'w');
    await fh.write(Buffer.from('superblock'), 0, 10, 1024);
    await fh.write(Buffer.alloc(70_000, 1), 0, 70_000, 100 * MiB);
    await fh.truncate(256 * MiB);
    await fh.close();
    const out = path.join(dir, 'out');
    await fs.mkdir(out);
    const files = checkpointFiles(out, { memoryMb: 16, diskMb: 256 });
    await receive((pipe) => sendFiles(checkpointFiles(src, { memoryMb: 16, diskMb: 256 }), pipe), files);
    expect(await fs.readdir(path.join(out, 'images'))).toEqual(['descriptors.json', 'pages-1.img']);
    expect((await fs.readFile(path.join(out, 'images', 'pages-1.img'))).equals(Buffer.alloc(3 * MiB + 7, 0xab))).toBe(true);
    const st = await fs.stat(path.join(out, 'disk.img'));
    expect(st.size).toBe(256 * MiB);
    expect(st.blocks * 512).toBeLessThan(4 * MiB); // sparse: only the data was written
    expect(execFileSync('cmp', [disk, path.join(out, 'disk.img')]).toString()).toBe('');
    expect((st.mode & 0o777).toString(8)).toBe('600');
  });

  it('a fresh ext4 disk image (data at both ends, a hole at the end) keeps its apparent size', async () => {
    const src = path.join(dir, 'disk.img');
    await fs.truncate(await fs.open(src, 'w').then(async (h) => (await h.close(), src)), 64 * MiB);
    execFileSync('mkfs.ext4', ['-q', '-F', src]);
    const out = path.join(dir, 'out.img');
    await receive((pipe) => sendFiles([{ name: 'disk.img', path: src, maxBytes: 0 }], pipe), [{ name: 'disk.img', path: out, maxBytes: 64 * MiB }]);
    expect((await fs.stat(out)).size).toBe(64 * MiB);
    expect(execFileSync('cmp', [src, out]).toString()).toBe('');
  });

  it('a sparse disk image larger than its cap is refused from its header, before any of it is written', async () => {
    const src = path.join(dir, 'disk.img');
    await fs.writeFile(src, 'x');
    await fs.truncate(src, 64 * MiB);
    const out = path.join(dir, 'out.img');
    await expect(receive((pipe) => sendFiles([{ name: 'disk.img', path: src, maxBytes: 1 }], pipe), [{ name: 'disk.img', path: out, maxBytes: 32 * MiB }])).rejects.toMatchObject({
      code: 'limit_exceeded',
    });
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
  });

  it('images together larger than their cap are refused', async () => {
    const stream = Buffer.concat([header('images/', { type: '5' }), header('images/a.img', { size: 600 }), Buffer.alloc(1024), header('images/b.img', { size: 600 }), Buffer.alloc(1024), endOfArchive]);
    await expect(receive(stream, [{ name: 'images', path: path.join(dir, 'images'), maxBytes: 1000, dir: true }])).rejects.toMatchObject({ code: 'limit_exceeded' });
  });

  const images = () => [{ name: 'images', path: path.join(dir, 'images'), maxBytes: MiB, dir: true }];
  it.each([
    ['a symlink', [header('images/', { type: '5' }), header('images/core.img', { type: '2', linkname: '/etc/shadow' })], /not a plain file/],
    ['a hard link', [header('images/', { type: '5' }), header('images/core.img', { type: '1', linkname: '/etc/shadow' })], /not a plain file/],
    ['a block device', [header('images/', { type: '5' }), header('images/sda', { type: '4' })], /not a plain file/],
    ['a FIFO', [header('images/', { type: '5' }), header('images/p', { type: '6' })], /not a plain file/],
    ['a path out of the dir', [header('images/', { type: '5' }), header('images/../../etc/cron.d/x', { size: 1 })], /unexpected entry/],
    ['an absolute path', [header('/etc/passwd', { size: 1 })], /unexpected entry/],
    ['a subdirectory', [header('images/', { type: '5' }), header('images/sub/', { type: '5' })], /unexpected entry/],
    ['a dot file', [header('images/', { type: '5' }), header('images/.x', { size: 1 })], /unexpected entry/],
    ['an entry nobody asked for', [header('fs.tar', { size: 1 })], /unexpected entry/],
    ['a GNU long name', [header('././@LongLink', { type: 'L', size: 200 })], /unexpected entry/],
    ['a POSIX pax header', [header('images/', { type: '5' }), header('images/PaxHeaders/x', { type: 'x', magic: 'ustar\u000000' })], /not the GNU tar format/],
    ['a file before its directory', [header('images/core.img', { size: 1 })], /before its directory/],
    ['the same file twice', [header('images/', { type: '5' }), header('images/a', {}), header('images/a', {})], /EEXIST/],
    ['a broken checksum', [Buffer.concat([header('images/', { type: '5' })]).fill(0x41, 300, 301)], /checksum/],
    ['a missing entry', [header('images/', { type: '5' })], /lacks disk.img/],
  ])('refuses %s', async (_what, blocks, error) => {
    const files = [...images(), { name: 'disk.img', path: path.join(dir, 'disk.img'), maxBytes: MiB }];
    await expect(receive(Buffer.concat([...blocks, endOfArchive]), files)).rejects.toThrow(error);
    expect(await fs.readdir(dir).then((l) => l.filter((n) => n !== 'images'))).toEqual([]);
  });
});

describe('socket reader', () => {
  it('reads a line split into a thousand pieces; a line over the limit destroys the stream', async () => {
    const pipe = new PassThrough();
    const r = new SocketReader(pipe, 5000);
    const line = 'x'.repeat(1000);
    for (const ch of line) pipe.write(ch);
    pipe.write('\nrest');
    expect(await r.line(64 * 1024)).toBe(line);
    expect((await r.exact(4)).toString()).toBe('rest');

    const big = new PassThrough();
    const r2 = new SocketReader(big, 5000);
    const reading = r2.line(64 * 1024);
    for (let i = 0; i < 100; i++) big.write(Buffer.alloc(100_000, 0x61)); // 10 MB, no newline
    await expect(reading).rejects.toThrow(/longer than 65536/);
    expect(big.destroyed).toBe(true);
  });

  it('a peer that goes silent mid-read is cut off after the idle timeout', async () => {
    const pipe = new PassThrough();
    const r = new SocketReader(pipe, 200);
    pipe.write('abc');
    const t0 = Date.now();
    await expect(r.exact(10)).rejects.toThrow(/sent nothing for 200 ms/);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(pipe.destroyed).toBe(true);
  });
});

describe('moves between OCI runtimes', () => {
  it('are refused before the job stops; a host that does not say runs runc', async () => {
    const { runtimeMismatch } = await import('../../worker/migration/source.js');
    expect(runtimeMismatch('crun', 'crun')).toBeUndefined();
    expect(runtimeMismatch(undefined, 'runc')).toBeUndefined();
    expect(runtimeMismatch('runc', undefined)).toBeUndefined();
    expect(runtimeMismatch('crun', undefined)).toMatch(/runs its VPSs with runc, this host with crun/);
    expect(runtimeMismatch('runc', 'crun')).toMatch(/with crun, this host with runc/);
  });

  it("the target's answer names its runtime; anything else is refused", async () => {
    const { AnswerSchema } = await import('../../worker/migration/protocol.js');
    expect(AnswerSchema.parse({ ok: true, postCopy: true, runtime: 'crun' })).toEqual({ ok: true, postCopy: true, runtime: 'crun' });
    expect(AnswerSchema.safeParse({ ok: true, runtime: 'youki' }).success).toBe(false);
  });
});

describe('pickTarget', () => {
  it('takes the live, non-draining host of the same OCI runtime with the most free capacity', async () => {
    const { pickTarget } = await import('../../core/store/hosts.js');
    const host = (id: string, o: Partial<import('../../core/store/hosts.js').Host> = {}) => ({
      id, address: '10.0.0.1', startedAt: '', heartbeatAt: '', draining: false, running: 0, capacity: 4, pools: [], templates: [], version: '0.1.0',
      migrationPort: 7000, migrationFingerprint: Array(32).fill('AB').join(':'), ...o,
    });
    const hosts = [host('a'), host('b', { runtime: 'crun', running: 1 }), host('c', { runtime: 'crun' }), host('d', { runtime: 'crun', draining: true }), host('e', { runtime: 'runc', capacity: 8 })];
    expect(pickTarget(hosts, 'c', 'crun')?.id).toBe('b');
    expect(pickTarget(hosts, 'b', 'crun')?.id).toBe('c');
    expect(pickTarget(hosts, 'a', 'runc')?.id).toBe('e'); // a host that does not say runs runc
    expect(pickTarget(hosts, 'e')?.id).toBe('a');
    expect(pickTarget([host('x', { runtime: 'runc' })], 'y', 'crun')).toBeUndefined();
  });
});
