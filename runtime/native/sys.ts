import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { loadAddon } from './load.js';

/**
 * The host-side syscalls of a VPS's life, made in this process (build/sys.node, runtime/native/
 * sys.c) instead of by a helper process each (cp, mount, umount, ip netns, fsfreeze): a fork+exec
 * from a Node process costs more than the work. Each call runs on libuv's thread pool and rejects
 * with a Node-style error (code, errno, syscall, path), having undone what it did.
 */
interface SysAddon {
  mount(source: string, target: string, fstype: string, data: string, flags: number): Promise<void>;
  mountLoop(image: string, target: string, fstype: string, data: string, flags: number, readOnly: boolean): Promise<string>;
  umount(target: string, flags: number): Promise<void>;
  copySparse(src: string, dst: string): Promise<number>;
  freeze(dir: string): Promise<void>;
  thaw(dir: string): Promise<void>;
  netnsAdd(runDir: string, file: string, loopbackUp: boolean): Promise<void>;
  netnsDel(file: string): Promise<void>;
  seccompFilter(pid: number): Promise<Buffer>;
  mountAs(source: string, target: string, fstype: string, data: string, fsid: string, flags: number): Promise<void>;
  idmapMount(source: string, target: string, map: string, attrFlags: number, recursive: boolean): Promise<void>;
  spawn(file: string, argv: string[], envp: string[] | null, cwd: string, fds: [number, number, number], newSession: boolean): [number, Promise<[number | null, number | null]>];
}

/** mount(2) flags (linux/mount.h). */
export const MS = { RDONLY: 1, NOSUID: 2, NODEV: 4, NOEXEC: 8, BIND: 4096 } as const;
/** umount2(2) flags. */
export const MNT_DETACH = 2;

/** Where `ip netns` keeps its names: the same place, so `ip netns`, `ip -n` and runc see ours. */
export const NETNS_RUN_DIR = '/run/netns';
/** Names `ip netns add` would accept and that cannot leave the run dir. */
const NETNS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

let addon: SysAddon | undefined;

/** Loads the addon (throws `unavailable` when it is not built). */
export function loadSys(): void {
  load();
}

function load(): SysAddon {
  return (addon ??= loadAddon<SysAddon>('sys'));
}

export interface MountOptions {
  /** MS.* flags, or'd. */
  flags?: number;
  /** The file system's own options (the `-o` text mount(8) passes on). */
  data?: string;
}

export const mount = (source: string, target: string, fstype: string, o: MountOptions = {}): Promise<void> =>
  load().mount(source, target, fstype, o.data ?? '', o.flags ?? 0);

/**
 * Whether this host can make an idmapped mount (what VPS layers in user namespaces need), tried
 * in a scratch dir under `parent`; the error's message otherwise. Leaves nothing.
 */
export async function idmapProbe(parent: string): Promise<string | undefined> {
  const dir = await fs.mkdtemp(path.join(parent, '.idmap-probe-'));
  try {
    await fs.mkdir(path.join(dir, 'src'));
    await fs.mkdir(path.join(dir, 'dst'));
    await idmapMount(path.join(dir, 'src'), path.join(dir, 'dst'), { hostId: 2 ** 30, count: 65536 });
    await umount(path.join(dir, 'dst'));
    return undefined;
  } catch (e) {
    return (e as Error).message;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/**
 * mount(2) made with file system uid and gid `fsid` (capabilities kept): an overlay over idmapped
 * layers must be made by an id those layers map (storage/layer.ts).
 */
export function mountAs(fsid: number, source: string, target: string, fstype: string, o: MountOptions = {}): Promise<void> {
  if (!Number.isInteger(fsid) || fsid < 0 || fsid >= 0xffffffff) throw new RunboxError('invalid_argument', `invalid fs id ${fsid}`);
  return load().mountAs(source, target, fstype, o.data ?? '', String(fsid), o.flags ?? 0);
}

/**
 * Attaches `image` to a free loop device (autoclear: it detaches at the unmount, as with
 * `mount -o loop`) and mounts it on `target`. Resolves to the device used.
 */
export const mountLoop = (image: string, target: string, fstype: string, o: MountOptions & { readOnly?: boolean } = {}): Promise<string> =>
  load().mountLoop(image, target, fstype, o.data ?? '', o.flags ?? 0, !!o.readOnly);

export const umount = (target: string, o: { lazy?: boolean } = {}): Promise<void> => load().umount(target, o.lazy ? MNT_DETACH : 0);

/** Copies `src`'s data extents to a new file `dst` of the same size (holes stay holes). Resolves to the bytes copied. */
export const copySparse = (src: string, dst: string): Promise<number> => load().copySparse(src, dst);

/** FIFREEZE / FITHAW on the file system mounted at `dir`. */
export const freezeFs = (dir: string): Promise<void> => load().freeze(dir);
export const thawFs = (dir: string): Promise<void> => load().thaw(dir);

/**
 * `ip netns add name` (with `loopbackUp`: and `ip -n name link set lo up`), in this process: a
 * new network namespace bind-mounted at /run/netns/<name>. EEXIST when the name is taken.
 */
export function netnsAdd(name: string, o: { loopbackUp?: boolean } = {}): Promise<void> {
  checkName(name);
  return load().netnsAdd(NETNS_RUN_DIR, path.join(NETNS_RUN_DIR, name), !!o.loopbackUp);
}

/**
 * Names the network namespace process `pid` is in as netns `name` (a bind mount of its ns file at
 * /run/netns/<name>, as `ip netns attach` does). EEXIST when the name is taken.
 */
export async function netnsAttach(name: string, pid: number): Promise<void> {
  checkName(name);
  if (!Number.isInteger(pid) || pid <= 1) throw new RunboxError('invalid_argument', `invalid pid ${pid}`);
  const file = path.join(NETNS_RUN_DIR, name);
  await fs.mkdir(NETNS_RUN_DIR, { recursive: true });
  await fs.writeFile(file, '', { flag: 'wx', mode: 0 });
  try {
    await mount(`/proc/${pid}/ns/net`, file, 'none', { flags: MS.BIND });
  } catch (e) {
    await fs.rm(file, { force: true });
    throw e;
  }
}

/** `ip netns del name`; ENOENT when there is no such netns. */
export function netnsDel(name: string): Promise<void> {
  checkName(name);
  return load().netnsDel(path.join(NETNS_RUN_DIR, name));
}

function checkMapping(m: IdMapping): IdMapping {
  if (!Number.isInteger(m.hostId) || !Number.isInteger(m.count) || m.hostId < 1 || m.count < 1 || m.hostId + m.count > 0xffffffff) {
    throw new RunboxError('invalid_argument', `invalid id mapping ${m.hostId}+${m.count}`);
  }
  return m;
}

/**
 * The seccomp filter process `pid` runs under (one filter; E2BIG for a stack of them, EINVAL for
 * none), as `struct sock_filter` records, read with ptrace as CRIU does: the exact program to
 * install elsewhere with seccomp(SECCOMP_SET_MODE_FILTER). The process is stopped for a moment.
 */
export function seccompFilter(pid: number): Promise<Buffer> {
  if (!Number.isInteger(pid) || pid <= 1) throw new RunboxError('invalid_argument', `invalid pid ${pid}`);
  return load().seccompFilter(pid);
}

export interface SpawnedProcess {
  pid: number;
  /** Settles when it exited: its code, or the signal that ended it (both null: reaped by someone else). */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** mount_setattr(2) attributes an idmapped mount can carry as well (linux/mount.h MOUNT_ATTR_*). */
export const MOUNT_ATTR = { RDONLY: 1, NOSUID: 2, NODEV: 4, NOEXEC: 8 } as const;

/** Host ids 0..count-1 of a file system appear as hostId..hostId+count-1 (uids and gids alike). */
export interface IdMapping {
  hostId: number;
  count: number;
}

/**
 * Attaches an idmapped copy of the mount at `source` at `target`: a file owned by id N in
 * `source` appears owned by `hostId + N` at `target` (ids beyond `count` appear as the overflow
 * id and cannot be changed), and a file made through `target` by host id `hostId + N` is stored
 * as N. `attrs` (MOUNT_ATTR.*) are set on the new mount; `recursive` takes the mounts below
 * `source` along. Undone with umount(target).
 */
export function idmapMount(source: string, target: string, m: IdMapping, o: { attrs?: number; recursive?: boolean } = {}): Promise<void> {
  checkMapping(m);
  return load().idmapMount(source, target, `0 ${m.hostId} ${m.count}`, o.attrs ?? 0, !!o.recursive);
}

/**
 * Starts a process with posix_spawn (vfork: nothing of this process is copied, whatever its size)
 * and watches its exit with a pidfd on the event loop. `fds` become its 0/1/2 (-1: /dev/null);
 * `newSession`: its own session and process group (kill(-pid) reaches what it starts). Throws a
 * Node-style error (ENOENT for a missing program) when it cannot start.
 */
export function spawnProcess(
  argv: readonly string[],
  o: { env?: NodeJS.ProcessEnv; cwd?: string; fds?: [number, number, number]; newSession?: boolean } = {},
): SpawnedProcess {
  const [file] = argv;
  if (!file) throw new RunboxError('internal', 'spawn: empty argv');
  const envp = o.env ? Object.entries(o.env).filter((e): e is [string, string] => e[1] !== undefined).map(([k, v]) => `${k}=${v}`) : null;
  const [pid, exit] = load().spawn(file, [...argv], envp, o.cwd ?? '', o.fds ?? [-1, -1, -1], !!o.newSession);
  return { pid, exit: exit.then(([code, sig]) => ({ code, signal: sig === null ? null : signalName(sig) })) };
}

const signalName = (n: number): NodeJS.Signals =>
  (Object.entries(os.constants.signals).find(([, v]) => v === n)?.[0] ?? 'SIGKILL') as NodeJS.Signals;

function checkName(name: string): void {
  if (!NETNS_NAME.test(name) || name === '.' || name === '..') throw new RunboxError('invalid_argument', `invalid netns name "${name}"`);
}

/** The errno code of a rejection from this module ("ENOENT", ...), if it is one. */
export const errnoCode = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;
