import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import fsSync from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newId } from '../../core/ids.js';
import { exec } from '../../runtime/exec.js';
import { copySparse, freezeFs, idmapMount, mount, mountAs, mountLoop, MOUNT_ATTR, MS, netnsAdd, netnsAttach, netnsDel, seccompFilter, spawnProcess, thawFs, umount } from '../../runtime/native/sys.js';
import { mkfsArgs } from '../../runtime/storage/layer.js';

/**
 * build/sys.node against the real kernel: the syscalls the engine makes in-process instead of
 * running cp, mount, umount, ip netns and fsfreeze. Each must do what the tool did, fail with the
 * errno the tool would have reported, and leave nothing behind when it fails.
 */

let dir: string;
let golden: string;

const loopsOf = (file: string): string[] =>
  execFileSync('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']).toString().split('\n').filter((l) => l.includes(file));
const mounted = (target: string): boolean =>
  fsSync.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === target);

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-native-sys-'));
  golden = path.join(dir, 'golden.ext4');
  const fh = await fs.open(golden, 'w');
  await fh.truncate(64 * 1024 * 1024);
  await fh.close();
  const [cmd, ...args] = mkfsArgs(golden);
  execFileSync(cmd!, args);
});

afterAll(async () => {
  for (const t of ['root', 'layer'].map((d) => path.join(dir, d))) if (mounted(t)) await umount(t, { lazy: true });
  await fs.rm(dir, { recursive: true, force: true });
});

describe('copySparse', () => {
  it('copies the data, keeps the size and the holes', async () => {
    const copy = path.join(dir, 'copy.ext4');
    const bytes = await copySparse(golden, copy);
    const [a, b] = [await fs.stat(golden), await fs.stat(copy)];
    expect(b.size).toBe(a.size);
    expect(b.blocks * 512).toBeLessThanOrEqual(a.blocks * 512);
    expect(b.blocks * 512).toBeLessThan(a.size / 10);
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThan(a.size);
    expect((await fs.readFile(copy)).equals(await fs.readFile(golden))).toBe(true);
    expect((b.mode & 0o777).toString(8)).toBe('600');
  });

  it('a missing source is ENOENT and makes no file', async () => {
    const out = path.join(dir, 'never.ext4');
    await expect(copySparse(path.join(dir, 'missing'), out)).rejects.toMatchObject({ code: 'ENOENT', syscall: 'open' });
    expect(fsSync.existsSync(out)).toBe(false);
  });

  it('does not write through a symlink at the destination', async () => {
    const target = path.join(dir, 'victim');
    await fs.writeFile(target, 'keep');
    const link = path.join(dir, 'link.ext4');
    await fs.symlink(target, link);
    await expect(copySparse(golden, link)).rejects.toMatchObject({ code: 'ELOOP' });
    expect(await fs.readFile(target, 'utf8')).toBe('keep');
  });
});

describe('mountLoop, mount, umount, freeze', () => {
  it('mounts an image on a loop device that goes away with the unmount; an overlay on top', async () => {
    const image = path.join(dir, 'disk.ext4');
    const layer = path.join(dir, 'layer');
    const root = path.join(dir, 'root');
    const lower = path.join(dir, 'lower');
    await Promise.all([layer, root, lower].map((d) => fs.mkdir(d, { recursive: true })));
    await fs.writeFile(path.join(lower, 'from-lower'), 'l');
    await copySparse(golden, image);
    const dev = await mountLoop(image, layer, 'ext4', { flags: MS.NOSUID | MS.NODEV });
    expect(dev).toMatch(/^\/dev\/loop\d+$/);
    expect(loopsOf(image)).toHaveLength(1);
    const info = fsSync.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === layer)!;
    expect(info).toMatch(/nosuid/);
    expect(info).toMatch(/nodev/);
    await fs.mkdir(path.join(layer, 'upper'));
    await fs.mkdir(path.join(layer, 'work'));
    await mount('overlay', root, 'overlay', { flags: MS.NOSUID, data: `lowerdir=${lower},upperdir=${layer}/upper,workdir=${layer}/work` });
    await fs.writeFile(path.join(root, 'new'), 'n');
    expect(await fs.readFile(path.join(root, 'from-lower'), 'utf8')).toBe('l');
    expect(await fs.readFile(path.join(layer, 'upper', 'new'), 'utf8')).toBe('n');

    await freezeFs(layer);
    await thawFs(layer);
    await expect(thawFs(layer)).rejects.toMatchObject({ code: 'EINVAL' }); // not frozen

    await umount(root);
    await umount(layer);
    expect(mounted(root) || mounted(layer)).toBe(false);
    expect(loopsOf(image), 'autoclear detached the loop device').toEqual([]);
    await expect(umount(layer)).rejects.toMatchObject({ code: 'EINVAL', syscall: 'umount2' });
  });

  it('an image that is not that file system fails the mount and leaves no loop device', async () => {
    const junk = path.join(dir, 'junk.img');
    await fs.writeFile(junk, Buffer.alloc(1 << 20));
    const layer = path.join(dir, 'layer');
    await expect(mountLoop(junk, layer, 'ext4')).rejects.toMatchObject({ code: 'EINVAL', syscall: 'mount' });
    expect(loopsOf(junk)).toEqual([]);
    expect(mounted(layer)).toBe(false);
  });

  it('a missing image is ENOENT', async () => {
    await expect(mountLoop(path.join(dir, 'missing.img'), path.join(dir, 'layer'), 'ext4')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('many at once each get a device of their own', async () => {
    const n = 6;
    const images = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const image = path.join(dir, `many-${i}.ext4`);
        const target = path.join(dir, `many-${i}`);
        await fs.mkdir(target, { recursive: true });
        await copySparse(golden, image);
        return { image, target };
      }),
    );
    const devs = await Promise.all(images.map((m) => mountLoop(m.image, m.target, 'ext4')));
    expect(new Set(devs).size).toBe(n);
    await Promise.all(images.map((m) => umount(m.target)));
    for (const m of images) expect(loopsOf(m.image)).toEqual([]);
  });

  it('refuses arguments it cannot pass to the kernel', async () => {
    expect(() => mount('a\0b', '/x', 'tmpfs')).toThrow(/NUL/);
    expect(() => mount('x'.repeat(5000), '/x', 'tmpfs')).toThrow(/at most 4095 bytes/);
  });
});

describe('netnsAdd, netnsDel', () => {
  const names: string[] = [];
  const name = () => {
    const n = `rbsys-${newId().slice(0, 10)}`;
    names.push(n);
    return n;
  };
  afterAll(() => {
    for (const n of names) {
      try {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
    }
  });
  const netnsOf = (tid: string) => fsSync.readlinkSync(`/proc/self/task/${tid}/ns/net`);

  it('makes a netns ip sees (loopback up when asked), and changes no thread of this process', async () => {
    const before = new Set(fsSync.readdirSync('/proc/self/task').map(netnsOf));
    const a = name();
    const b = name();
    await Promise.all([netnsAdd(a), netnsAdd(b, { loopbackUp: true })]);
    const list = execFileSync('ip', ['netns', 'list']).toString();
    expect(list).toContain(a);
    expect(list).toContain(b);
    expect(execFileSync('ip', ['-n', a, '-o', 'link', 'show', 'lo']).toString()).not.toMatch(/[<,]UP[,>]/);
    expect(execFileSync('ip', ['-n', b, '-o', 'link', 'show', 'lo']).toString()).toMatch(/[<,]UP[,>]/);
    const inode = (n: string) => fsSync.statSync(`/run/netns/${n}`).ino;
    expect(inode(a)).not.toBe(inode(b));
    const after = new Set(fsSync.readdirSync('/proc/self/task').map(netnsOf));
    expect([...after]).toEqual([...before]);
    expect(before.size).toBe(1);

    await expect(netnsAdd(a)).rejects.toMatchObject({ code: 'EEXIST' });
    await netnsDel(a);
    await netnsDel(b);
    expect(execFileSync('ip', ['netns', 'list']).toString()).not.toContain(a);
    await expect(netnsDel(a)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses names that are not plain names', () => {
    for (const bad of ['', '.', '..', '../etc', 'a/b', 'x'.repeat(65), 'a b']) expect(() => netnsAdd(bad), bad).toThrow(/invalid netns name/);
    expect(() => netnsDel('../../etc/passwd')).toThrow(/invalid netns name/);
  });
});

describe('seccompFilter', () => {
  it('EINVAL for a process without a filter, ESRCH for one that is gone, and the process carries on', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      await expect(seccompFilter(child.pid!)).rejects.toMatchObject({ code: 'EINVAL' }); // the kernel's answer: not in filter mode
      expect(child.exitCode).toBeNull();
      expect(fsSync.readFileSync(`/proc/${child.pid}/status`, 'utf8')).toMatch(/^TracerPid:\s+0$/m); // detached
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((r) => child.once('exit', r));
    await expect(seccompFilter(child.pid!)).rejects.toMatchObject({ code: 'ESRCH' });
    expect(() => seccompFilter(1)).toThrow(/invalid pid/);
    expect(() => seccompFilter(-5)).toThrow(/invalid pid/);
  });
});

describe('spawnProcess and exec (posix_spawn, exit watched by a pidfd)', () => {
  it('exit codes, signals, stdin, stdout and stderr as child_process gives them', async () => {
    expect(await exec(['sh', '-c', 'echo out; echo err >&2; cat; exit 3'], { input: 'in\n' })).toEqual({ code: 3, signal: null, stdout: 'out\nin\n', stderr: 'err\n' });
    expect(await exec(['sh', '-c', 'kill -TERM $$'])).toMatchObject({ code: null, signal: 'SIGTERM' });
    expect((await exec(['sh', '-c', 'pwd; echo "$RB_X"'], { cwd: '/tmp', env: { PATH: process.env.PATH, RB_X: 'y' } })).stdout).toBe('/tmp\ny\n');
  });

  it('the child gets default signal dispositions (Node ignores SIGPIPE) and an empty mask', async () => {
    const r = await exec(['sh', '-c', 'yes | head -n 1; grep -E "^Sig(Blk|Ign):" /proc/self/status']);
    expect(r.stderr).toBe(''); // yes died of SIGPIPE instead of complaining of EPIPE
    expect(r.stdout).toMatch(/^SigBlk:\s+0+$/m);
  });

  it('a missing program is an error naming it; nothing is left open', async () => {
    const fds = fsSync.readdirSync('/proc/self/fd').length;
    await expect(exec(['/nonexistent/prog'])).rejects.toThrow(/cannot run \/nonexistent\/prog: .*No such file/);
    expect(fsSync.readdirSync('/proc/self/fd').length).toBe(fds);
  });

  it('a timeout kills the whole group of a `group` process, and no zombie is left', async () => {
    const marker = path.join(dir, 'grandchild.pid');
    await expect(exec(['sh', '-c', `sleep 30 & echo $! > ${marker}; wait`], { timeoutMs: 300, group: true })).rejects.toThrow(/did not finish within 300 ms/);
    const grandchild = Number(await fs.readFile(marker, 'utf8'));
    await new Promise((r) => setTimeout(r, 100));
    // Dead: gone, or a zombie left to PID 1 (which reaps it when it gets to it).
    const state = fsSync.existsSync(`/proc/${grandchild}`) ? fsSync.readFileSync(`/proc/${grandchild}/stat`, 'utf8').split(') ')[1]?.[0] : 'gone';
    expect(['gone', 'Z', 'X']).toContain(state);
    const p = spawnProcess(['true']);
    expect(await p.exit).toEqual({ code: 0, signal: null });
    expect(fsSync.existsSync(`/proc/${p.pid}`), 'reaped').toBe(false);
  });

  it('hands fds over as 0/1/2 and starts a new session when asked', async () => {
    const out = path.join(dir, 'fd-out');
    const fd = fsSync.openSync(out, 'w');
    try {
      const p = spawnProcess(['sh', '-c', 'echo hi; ps -o sid= -p $$ 2>/dev/null || cut -d" " -f6 /proc/$$/stat'], { fds: [-1, fd, -1], newSession: true });
      expect((await p.exit).code).toBe(0);
      const [line, sid] = fsSync.readFileSync(out, 'utf8').trim().split('\n');
      expect(line).toBe('hi');
      expect(Number(sid)).toBe(p.pid);
    } finally {
      fsSync.closeSync(fd);
    }
  });

  it('caps what it captures at 1 MiB and still drains the rest', async () => {
    const r = await exec(['sh', '-c', 'head -c 3000000 /dev/zero | tr "\\0" x']);
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBeGreaterThanOrEqual(1024 * 1024);
    expect(r.stdout.length).toBeLessThan(3_000_000);
  });

  it('many at once', async () => {
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => exec(['sh', '-c', `echo ${i}`])));
    expect(rs.map((r) => r.stdout.trim())).toEqual(Array.from({ length: 50 }, (_, i) => String(i)));
  });
});

describe('idmapMount, mountAs, netnsAttach (user namespaces)', () => {
  const base = 2 ** 30 + 65536 * 7;

  it('idmapMount shows a file system with its ids shifted, read-only when asked, and refuses bad mappings or sources', async () => {
    const src = path.join(dir, 'idm-src');
    const dst = path.join(dir, 'idm-dst');
    await fs.mkdir(src);
    await fs.mkdir(dst);
    await fs.writeFile(path.join(src, 'f'), 'x');
    await fs.chown(path.join(src, 'f'), 1000, 1000);
    await idmapMount(src, dst, { hostId: base, count: 65536 }, { attrs: MOUNT_ATTR.RDONLY });
    try {
      const st = await fs.stat(path.join(dst, 'f'));
      expect([st.uid, st.gid]).toEqual([base + 1000, base + 1000]);
      expect((await fs.stat(dst)).uid).toBe(base); // root of the source (0) is the base
      await expect(fs.writeFile(path.join(dst, 'g'), 'y')).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await umount(dst);
    }
    expect((await fs.stat(path.join(src, 'f'))).uid).toBe(1000); // the source is unchanged
    expect(() => idmapMount(src, dst, { hostId: 0, count: 65536 })).toThrow(/invalid id mapping/);
    expect(() => idmapMount(src, dst, { hostId: 2 ** 32 - 10, count: 65536 })).toThrow(/invalid id mapping/);
    await expect(idmapMount(path.join(dir, 'missing'), dst, { hostId: base, count: 65536 })).rejects.toMatchObject({ code: 'ENOENT', syscall: 'open_tree' });
    expect(mounted(dst)).toBe(false);
  });

  it('mountAs makes an overlay over idmapped layers writable (as the mapped root), and this thread keeps its own ids', async () => {
    const lower = path.join(dir, 'as-lower');
    const layer = path.join(dir, 'as-layer');
    const [lowerMap, layerMap, root] = ['as-lower-m', 'as-layer-m', 'as-root'].map((d) => path.join(dir, d));
    for (const d of [lower, layer, path.join(layer, 'upper'), path.join(layer, 'work'), lowerMap!, layerMap!, root!]) await fs.mkdir(d);
    await fs.writeFile(path.join(lower, 'from-template'), 't');
    await idmapMount(lower, lowerMap!, { hostId: base, count: 65536 }, { attrs: MOUNT_ATTR.RDONLY });
    await idmapMount(layer, layerMap!, { hostId: base, count: 65536 });
    await fs.chmod(dir, 0o711); // the mapped root below walks to the overlay
    try {
      await mountAs(base, 'overlay', root!, 'overlay', { data: `lowerdir=${lowerMap},upperdir=${layerMap}/upper,workdir=${layerMap}/work` });
      expect(mountOptionsOf(root!)).toContain('rw');
      // A file made through the overlay by the mapped root lands as 0 on the layer.
      execFileSync('setpriv', [`--reuid=${base}`, `--regid=${base}`, '--clear-groups', 'sh', '-c', `echo hi > ${root}/made`]);
      expect((await fs.stat(path.join(layer, 'upper', 'made'))).uid).toBe(0);
      expect((await fs.stat(path.join(root!, 'made'))).uid).toBe(base);
      // The pool thread that ran mountAs has its ids back: files made here are root's.
      await fs.writeFile(path.join(dir, 'after-mount-as'), '');
      expect((await fs.stat(path.join(dir, 'after-mount-as'))).uid).toBe(0);
    } finally {
      await fs.chmod(dir, 0o700);
      if (mounted(root!)) await umount(root!);
      await umount(lowerMap!);
      await umount(layerMap!);
    }
  });

  it('netnsAttach names the network namespace of a process, and refuses a taken name or a bad pid', async () => {
    const child = spawn('unshare', ['--net', 'sleep', '30'], { stdio: 'ignore' });
    const name = `rbtest-${newId(4)}`;
    try {
      await new Promise((r) => setTimeout(r, 200));
      await netnsAttach(name, child.pid!);
      expect(fsSync.readlinkSync(`/proc/${child.pid}/ns/net`)).toBe(execFileSync('ip', ['netns', 'exec', name, 'readlink', '/proc/self/ns/net']).toString().trim());
      await expect(netnsAttach(name, child.pid!)).rejects.toMatchObject({ code: 'EEXIST' });
      await expect(netnsAttach(`${name}x`, 1)).rejects.toThrow(/invalid pid/);
    } finally {
      child.kill('SIGKILL');
      await netnsDel(name).catch(() => undefined);
      await netnsDel(`${name}x`).catch(() => undefined);
    }
  });
});

function mountOptionsOf(target: string): string[] {
  const line = fsSync.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[4] === target);
  return line?.[5]?.split(',') ?? [];
}
