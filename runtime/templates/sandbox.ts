import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { exec, execOk } from '../exec.js';

/**
 * Build commands run in a private mount and PID namespace that dies with the builder:
 *
 * - `setpriv --pdeathsig KILL` makes the kernel kill `unshare` when the Node process that spawned
 *   it dies (even by SIGKILL); `unshare --kill-child` then kills the namespace's PID 1, and with it
 *   every process of the build (apt, dpkg, maintainer scripts).
 * - The /proc, /sys and /dev mounts inside a chroot (and debootstrap's own) live only in that
 *   mount namespace: they never appear in the host's mount table, vanish when the build ends
 *   however it ends, and so a leftover build dir never has /dev bind-mounted inside it (an
 *   `rm -r` through such a mount would delete the host's device nodes).
 */
export function isolatedArgv(argv: readonly string[], env: Record<string, string> = {}): string[] {
  return [
    'setpriv', '--pdeathsig', 'KILL', '--',
    'unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--',
    'env', '-i', ...Object.entries({ ...BUILD_ENV, ...env }).map(([k, v]) => `${k}=${v}`),
    ...argv,
  ];
}

const BUILD_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LC_ALL: 'C',
  HOME: '/root',
};

/**
 * Mounts /proc, /sys (read-only) and /dev inside ROOT, then runs the command chrooted. The script
 * is constant: ROOT and the command come in as positional arguments, never spliced into it.
 */
const CHROOT_SCRIPT = [
  'set -e',
  'root="$1"; shift',
  'mount -t proc proc "$root/proc"',
  'mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"',
  'mount --bind /dev "$root/dev"',
  'exec chroot "$root" "$@"',
].join('\n');

export function chrootArgv(root: string, argv: readonly string[], env: Record<string, string> = {}): string[] {
  return isolatedArgv(['sh', '-c', CHROOT_SCRIPT, 'runbox-chroot', root, ...argv], env);
}

/** Mount points at or below `dir` in this process's mount namespace. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const abs = path.resolve(dir);
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((mp) => mp === abs || mp.startsWith(`${abs}/`));
}

/**
 * `rm -r` that never crosses a mount: whatever is mounted below `dir` (only possible if something
 * other than the builder mounted it) is detached first, and the removal is refused if that fails.
 */
export async function removeTree(dir: string): Promise<void> {
  let mounts = await mountsUnder(dir);
  if (mounts.length) {
    for (const mp of mounts.sort((a, b) => b.length - a.length)) await exec(['umount', '--lazy', mp], { timeoutMs: 30_000 });
    mounts = await mountsUnder(dir);
    if (mounts.length) throw new RunboxError('internal', `refusing to remove ${dir}: still mounted below it: ${mounts.join(', ')}`);
  }
  await fs.rm(dir, { recursive: true, force: true });
}

/** Apparent size in bytes of everything below `dir` (one filesystem). */
export async function treeBytes(dir: string): Promise<number> {
  const r = await exec(['du', '-s', '-x', '-b', dir], { timeoutMs: 120_000 });
  const n = Number(r.stdout.split('\t')[0]);
  return Number.isFinite(n) ? n : 0;
}

/** `cp -a --reflink=auto`: a CoW clone where the filesystem can (btrfs, xfs), a plain copy elsewhere. */
export async function copyTree(from: string, to: string): Promise<void> {
  await execOk(['cp', '-a', '--reflink=auto', '--', from, to], { timeoutMs: 30 * 60_000 });
}
