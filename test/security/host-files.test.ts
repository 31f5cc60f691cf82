import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { checkpoint, restore } from '../../runtime/checkpoint/checkpoint.js';
import { privacyAction } from '../../runtime/host/private-dirs.js';
import { Layout } from '../../runtime/layout.js';
import { TEMPLATES_DIR, testEngine } from '../helpers/engine.js';
import { freePort, waitFor } from '../helpers/net.js';

/**
 * A local unprivileged user of the host (uid 65534) goes after what tenants leave on it: a
 * tenant's setuid-root binary and a block device node of the host's disk, both made by root
 * inside a real VPS of `runbox up`, reached through the host path of the VPS's root; the
 * tenant's files, its checkpoint (CRIU images: process memory), the token file, Redis's data,
 * the templates. The state and checkpoint dirs start as an older runbox left them (0755), so
 * `runbox up` itself must make them private. Then the mount layer on its own: nosuid on the
 * overlay root (and nodev on the layer disk) hold even with the directories opened up. With user
 * namespaces (the default) the tenant's "root" files are not host root's and it cannot mknod.
 */
const NOBODY = 65534;
let stateDir: string;
let checkpointDir: string;
let probeDir: string;
let env: NodeJS.ProcessEnv;
let up: ChildProcess | undefined;
let out = '';
let err = '';
const adminToken = randomBytes(24).toString('base64url');

/** A static program that prints its effective uid: what a setuid-root binary runs as. */
const EUID_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("euid=%d\\n", (int)geteuid()); return 0; }\n';

/** major:minor of the block device under the host's `/` (mountinfo), else the first disk in /sys/block. */
function hostDisk(): string {
  const root = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((f) => f[4] === '/');
  if (root?.[2] && !root[2].startsWith('0:')) return root[2];
  const disk = execFileSync('sh', ['-c', 'cat /sys/block/*/dev'], { encoding: 'utf8' })
    .split('\n')
    .find((d) => /^\d+:\d+$/.test(d) && !/^(7|1):/.test(d));
  if (!disk) throw new Error('no block device found for the host disk');
  return disk;
}

/** Runs argv as uid/gid 65534 without supplementary groups: the local attacker. */
function asNobody(argv: string[]): { status: number | null; stdout: string; stderr: string; errno?: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { uid: NOBODY, gid: NOBODY, encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', errno: (r.error as NodeJS.ErrnoException | undefined)?.code };
}

/** Per-mount options of the mount at `mountPoint` in this process's mount namespace (the host's). */
function mountOptions(mountPoint: string): string[] {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((f) => f[4] === mountPoint);
  if (!line) throw new Error(`${mountPoint} is not a mount point`);
  return line[5]!.split(',');
}

const mode = async (p: string) => (await fs.stat(p)).mode & 0o7777;

async function api<T>(p: string, init: { method?: string; body?: unknown } = {}): Promise<{ status: number; body: T }> {
  const res = await fetch(`http://127.0.0.1:${env.RUNBOX_API_PORT}${p}`, {
    method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await res.text();
  return { status: res.status, body: (res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text) as T };
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

beforeAll(async () => {
  probeDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-hostfiles-probe-'));
  await fs.writeFile(path.join(probeDir, 'euid.c'), EUID_C);
  execFileSync('gcc', ['-static', '-Os', '-o', path.join(probeDir, 'euid'), path.join(probeDir, 'euid.c')]);

  // As an older runbox (or a package, or an operator's mkdir) left them: readable by everyone.
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-hostfiles-'));
  checkpointDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-hostfiles-cp-'));
  await fs.mkdir(path.join(stateDir, 'redis'));
  for (const d of [stateDir, checkpointDir, path.join(stateDir, 'redis')]) await fs.chmod(d, 0o755);
  await fs.writeFile(path.join(stateDir, 'api-tokens'), `ops:admin=${adminToken}\n`, { mode: 0o644 });
  await fs.chmod(path.join(stateDir, 'api-tokens'), 0o644);

  const port = await freePort();
  env = {
    ...process.env,
    RUNBOX_STATE_DIR: stateDir,
    RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
    RUNBOX_CHECKPOINT_DIR: checkpointDir,
    RUNBOX_API_PORT: String(port),
    RUNBOX_NET_CIDR: `10.${200 + (process.pid % 50)}.251.0/24`,
    RUNBOX_POOL_MIN_IDLE: '0',
    RUNBOX_PREBUILD_TEMPLATES: '',
    RUNBOX_SHUTDOWN_GRACE_SEC: '1',
    RUNBOX_LOG_LEVEL: 'warn',
  };
  delete env.RUNBOX_REDIS_URL;
  delete env.RUNBOX_API_TOKENS;
  up = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['up'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout!.on('data', (d) => (out += d));
  up.stderr!.on('data', (d) => (err += d));
  await waitFor(() => out.includes('Ctrl-C stops everything') || up!.exitCode !== null, 'runbox up to print its banner', 60_000);
  if (up.exitCode !== null) throw new Error(`runbox up exited ${up.exitCode}: ${err}`);
});

afterAll(async () => {
  if (up && up.exitCode === null) {
    up.kill('SIGTERM');
    const exited = await new Promise<boolean>((r) => {
      const t = setTimeout(() => r(false), 30_000);
      up!.once('exit', () => (clearTimeout(t), r(true)));
    });
    if (!exited) up.kill('SIGKILL');
  }
  if (env) spawnSync(path.join(REPO_ROOT, 'bin/runbox'), ['gc', '--all'], { env, stdio: 'ignore', timeout: 60_000 });
  for (const d of [stateDir, checkpointDir, probeDir]) if (d) await fs.rm(d, { recursive: true, force: true });
});

describe('private state (runbox up)', () => {
  it('made the state, checkpoint, templates and Redis dirs 0700 and the token file 0600, and said so', async () => {
    expect(await mode(stateDir)).toBe(0o700);
    expect(await mode(checkpointDir)).toBe(0o700);
    expect(await mode(TEMPLATES_DIR)).toBe(0o700);
    expect(await mode(path.join(stateDir, 'redis'))).toBe(0o700);
    expect(await mode(path.join(stateDir, 'api-tokens'))).toBe(0o600);
    expect(err).toMatch(new RegExp(`"path":"${stateDir}","was":"0755","now":"0700".*made a state directory private`));
    expect(err).toMatch(new RegExp(`"path":"${checkpointDir}".*made a state directory private`));
    expect(err).toMatch(/"was":"0644","now":"0600".*made a secret file private/);
  });

  it("a local user can neither run a tenant's setuid binary, open its device node, nor read its files, checkpoint, tokens, Redis or templates", async () => {
    const probe = (await fs.readFile(path.join(probeDir, 'euid'))).toString('base64');
    const [major, minor] = hostDisk().split(':');
    const created = await api<Job>('/v1/jobs', {
      body: {
        script: [
          'chown 0:0 /suid && chmod 4755 /suid',
          // In a user namespace (the default) mknod of a real device fails: no node to go after.
          `if mknod /blk-root b ${major} ${minor} 2>/dev/null; then chmod 666 /blk-root; echo mknod-ok; else echo mknod-refused; fi`,
          'echo tenant-secret > /secret.txt && chmod 644 /secret.txt',
          'echo ready',
          // The host's disk cannot be opened even by root on some sandboxed hosts (EPERM): the
          // loop device under this VPS's own layer can, so a node for it is made too.
          'if [ -e /blk-root ]; then i=0; while [ ! -s /devnum ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; mknod /blk b $(cat /devnum) && chmod 666 /blk && echo made-blk; fi',
          'sleep 120',
        ].join('; '),
        files: { '/suid': { content: probe, encoding: 'base64', mode: 0o755 } },
        limits: { timeoutSec: 150 },
      },
    });
    expect(created.status).toBe(201);
    const id = created.body.id;
    try {
      await waitFor(async () => (await api<string>(`/v1/jobs/${id}/logs`)).body.includes('ready'), 'the job to plant its files', 60_000);
      const { hosts } = (await api<{ hosts: Array<{ userns?: boolean }> }>('/v1/hosts')).body;
      const userns = hosts[0]?.userns === true;
      expect(userns).toBe((process.env.RUNBOX_USERNS ?? 'auto') !== 'off');
      const nodes = (await api<string>(`/v1/jobs/${id}/logs`)).body.includes('mknod-ok');
      expect(nodes).toBe(!userns);
      const cp = await api<{ id: string; sizeBytes: number }>(`/v1/jobs/${id}/checkpoint`, { method: 'POST' });
      expect(cp.status).toBe(201);

      const layout = new Layout(stateDir);
      const vpsId = (await fs.readdir(layout.vpsRoot)).find((v) => spawnSync('test', ['-e', path.join(layout.vps(v).rootfs, 'suid')]).status === 0);
      expect(vpsId, 'the VPS holding /suid').toBeDefined();
      const paths = layout.vps(vpsId!);
      const vps = paths.dir;
      const rootfs = paths.rootfs;
      if (nodes) {
        const loop = /^(\/dev\/loop\d+):/.exec(execFileSync('losetup', ['-j', path.join(vps, 'disk.img')], { encoding: 'utf8' }))![1]!;
        const loopDev = readFileSync(`/sys/block/${path.basename(loop)}/dev`, 'utf8').trim().replace(':', ' ');
        await fs.writeFile(path.join(rootfs, 'devnum'), `${loopDev}\n`);
        await waitFor(async () => (await api<string>(`/v1/jobs/${id}/logs`)).body.includes('made-blk'), 'the job to make its loop device node', 30_000);
      }
      const cpFiles = await filesUnder(checkpointDir);
      const image = cpFiles.find((f) => /pages-\d+\.img$/.test(f)) ?? cpFiles[0];
      expect(image, 'a checkpoint image').toBeDefined();

      // Root on the host sees what the attacker is after: the paths are right.
      expect(readFileSync(path.join(rootfs, 'secret.txt'), 'utf8')).toBe('tenant-secret\n');
      const suid = await fs.stat(path.join(rootfs, 'suid'));
      expect(suid.mode & 0o4000).toBe(0o4000);
      // "root" inside: host root without a user namespace, the VPS's own unprivileged base uid with one.
      expect(suid.uid === 0).toBe(!userns);
      if (nodes) {
        expect((await fs.stat(path.join(rootfs, 'blk'))).isBlockDevice()).toBe(true);
        expect(spawnSync('head', ['-c', '16', path.join(rootfs, 'blk')]).stdout.length).toBe(16); // the node opens, for root
      }
      // The VPS's root dir: its root's alone (0700); the dirs above it can be searched, not listed.
      expect((await fs.stat(paths.rootDir)).mode & 0o777).toBe(0o700);
      expect((await fs.stat(layout.rootsDir)).mode & 0o777).toBe(0o711);
      expect(asNobody(['ls', layout.rootsDir]).status).not.toBe(0);

      expect(asNobody([path.join(rootfs, 'suid')]).errno).toBe('EACCES');
      for (const target of [
        ...(nodes ? [path.join(rootfs, 'blk-root'), path.join(rootfs, 'blk'), path.join(vps, 'layer/upper/blk')] : []),
        path.join(rootfs, 'secret.txt'),
        path.join(vps, 'layer/upper/secret.txt'),
        path.join(vps, 'vps.json'),
        image!,
        path.join(stateDir, 'api-tokens'),
      ]) {
        const r = asNobody(['head', '-c', '16', target]);
        expect(r.status, target).not.toBe(0);
        expect(r.stderr, target).toMatch(/Permission denied/);
        expect(r.stdout, target).toBe('');
      }
      for (const dir of [path.join(stateDir, 'redis'), TEMPLATES_DIR, checkpointDir]) {
        const r = asNobody(['ls', dir]);
        expect(r.status, dir).not.toBe(0);
        expect(r.stderr, dir).toMatch(/Permission denied/);
      }

      // The second layer, on its own: even with the way in opened, the overlay root is nosuid
      // (a setuid-root file runs as its caller) and the layer disk nodev (the node does not open).
      await fs.chmod(stateDir, 0o711);
      await fs.chmod(paths.rootDir, 0o711);
      try {
        const run = asNobody([path.join(rootfs, 'suid')]);
        expect(run.errno).toBeUndefined();
        expect(run.stdout).toBe(`euid=${NOBODY}\n`);
        if (nodes) {
          const dev = asNobody(['head', '-c', '16', path.join(vps, 'layer/upper/blk')]);
          expect(dev.status).not.toBe(0);
          expect(dev.stderr).toMatch(/Permission denied/);
        }
      } finally {
        await fs.chmod(stateDir, 0o700);
        await fs.chmod(paths.rootDir, 0o700);
      }
      expect(mountOptions(rootfs)).toEqual(expect.arrayContaining(['nosuid']));
      expect(mountOptions(path.join(vps, 'layer'))).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    } finally {
      await api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    }
  });
});

describe('the nosuid overlay root and CRIU', () => {
  it('a VPS whose root is mounted nosuid checkpoints and restores, and stays nosuid', async () => {
    const t = await testEngine('hostfiles');
    try {
      const vps = await t.create();
      let text = '';
      const running = vps.run({
        argv: ['sh', '-c', 'i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.05; done'],
        timeoutSec: 60,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => (text += d.toString()),
      });
      try {
        await waitFor(() => text.split('\n').length > 5, 'five lines', 10_000);
        const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
        expect(mountOptions(t.engine.layout.vps(vps.id).rootfs)).toContain('nosuid');
        await restore(t.engine, vps, cp.imagePath);
        expect((await running).exitCode).toBe(0);
        expect(text.trim().split('\n')).toEqual(Array.from({ length: 30 }, (_, i) => String(i)));
        expect(mountOptions(t.engine.layout.vps(vps.id).rootfs)).toContain('nosuid');
      } finally {
        await t.engine.destroy(vps.id);
      }
    } finally {
      await t.cleanup();
    }
  });
});

describe('privacyAction', () => {
  const me = 0;
  it.each([
    ['a private dir', { mode: 0o40700, uid: 0, isDirectory: true }, 'dir', 'ok'],
    ['a 0755 dir', { mode: 0o40755, uid: 0, isDirectory: true }, 'dir', 'tighten'],
    ['a 0750 dir', { mode: 0o40750, uid: 0, isDirectory: true }, 'dir', 'tighten'],
    ['a 0600 file', { mode: 0o100600, uid: 0, isDirectory: false }, 'file', 'ok'],
    ['a 0644 file', { mode: 0o100644, uid: 0, isDirectory: false }, 'file', 'tighten'],
  ] as const)('%s: %s', (_name, st, kind, want) => {
    expect(privacyAction(st, kind, me)).toBe(want);
  });

  it.each([
    ['/tmp itself', { mode: 0o41777, uid: 0, isDirectory: true }, 'dir', /shared directory \(mode 1777\)/],
    ['a world-writable dir', { mode: 0o40777, uid: 0, isDirectory: true }, 'dir', /shared directory/],
    ["another user's dir", { mode: 0o40700, uid: 1000, isDirectory: true }, 'dir', /belongs to uid 1000/],
    ['a file where a dir should be', { mode: 0o100600, uid: 0, isDirectory: false }, 'dir', /not a directory/],
  ] as const)('refuses %s', (_name, st, kind, why) => {
    const a = privacyAction(st, kind, me);
    expect(typeof a === 'object' && a.refuse).toMatch(why);
  });
});
