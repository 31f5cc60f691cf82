import fs from 'node:fs/promises';
import path from 'node:path';
import { execOk } from '../exec.js';
import { copySparse, errnoCode, freezeFs, idmapMount, mountAs, mountLoop, mount, MOUNT_ATTR, MS, thawFs, umount, type IdMapping } from '../native/sys.js';
import { RunboxError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { isAlive, selfRef } from '../host/proc.js';

/**
 * A VPS's writable layer: a sparse ext4 image, loop-mounted, holding the overlay's upper and work
 * dirs; the overlay's lower dir is the template's read-only rootfs.
 *
 * Why an image per VPS: it gives a hard per-VPS disk limit with a real ENOSPC inside (this kernel
 * has no quota formats for project quotas, and a tmpfs would charge disk writes to the VPS's memory).
 * It is cheap: the image is a sparse copy (~400 KB of metadata) of a pre-formatted "golden" image
 * per size, made once. The copy, the mounts and the unmount are syscalls made in this process
 * (runtime/native/sys.ts), ~7 ms in all, where cp/mount/umount processes took ~29 ms.
 *
 * The image is also the unit that moves (live migration) and that checkpoints keep: a copy of the
 * image keeps every inode number of the files the job made. A tar of the upper dir would give
 * them new numbers on the other side, and programs that remember inode numbers take that for a
 * file replaced under them: SQLite then refuses every write ("attempt to write a readonly
 * database", SQLITE_READONLY_DBMOVED), CRIU's inotify restore (by file handle) fails.
 * (Template files a job changed were copied up: overlayfs reports their lower inode number
 * until the first move, the upper one after it; templates are built per host anyway.)
 *
 * A VPS in a user namespace (`idmap`) sees both layers through idmapped mounts (`lower`,
 * `mappedLayer`): files stored as uid N appear as the VPS's hostId + N. So the template is shared
 * unshifted by every VPS whatever its ids, and the disk image keeps the ids as the VPS sees them
 * (root = 0): it moves to a host that gives the VPS other host ids, as a VM's disk would.
 */
export interface LayerPaths {
  image: string;
  layerMount: string;
  rootfs: string;
  /** The template, idmapped (user namespace only). */
  lower?: string;
  /** layerMount, idmapped (user namespace only): the overlay's upper and work dirs are in it. */
  mappedLayer?: string;
}

/** How a layer is mounted: `idmap` for a VPS in a user namespace. */
export interface LayerRootOptions {
  idmap?: IdMapping;
}

export interface LayerStore {
  /** Directory for golden images (one per size and contents). */
  cacheDir: string;
}

/**
 * What a golden image holds besides an empty file system: the overlay's upper/ and work/ dirs,
 * and in upper/ the mount points and device files a runtime in a user namespace cannot make
 * itself (see ensureUpperFiles), made once per image instead of per VPS.
 * `tag` names the variant in the image's file name.
 */
export interface GoldenContents {
  tag: string;
  /** Dirs inside the VPS (absolute), with their modes. */
  dirs: ReadonlyArray<readonly [string, number]>;
  /** Empty files inside the VPS (absolute). */
  files: readonly string[];
}

/** mkfs options: no journal (ephemeral scratch; a crash discards the VPS anyway), no reserved blocks. */
export const mkfsArgs = (image: string): string[] => [
  'mkfs.ext4', '-q', '-F', '-O', '^has_journal', '-m', '0', '-E', 'lazy_itable_init=1,nodiscard', image,
];

/**
 * Golden images kept: one per disk size in use, the least recently used beyond this many removed.
 * Every distinct `diskMb` costs an mkfs and a file of its own; a tenant asking for thousands of
 * sizes must not fill the host's disk with them.
 */
export const GOLDEN_KEEP = 16;

/** A golden image's file name (its size, and the tag of its contents if any), as a pattern source. */
const GOLDEN_NAME = String.raw`layer-\d+m(?:-[a-z]{1,16})?\.ext4`;

export async function goldenImage(store: LayerStore, sizeMb: number, contents?: GoldenContents): Promise<string> {
  if (contents && !/^[a-z]{1,16}$/.test(contents.tag)) throw new RunboxError('internal', `bad golden image tag "${contents.tag}"`);
  const file = path.join(store.cacheDir, `layer-${sizeMb}m${contents ? `-${contents.tag}` : ''}.ext4`);
  if (await exists(file)) {
    // Recently used (the pruning below goes by mtime); a copy in progress keeps reading a pruned file.
    const now = new Date();
    await fs.utimes(file, now, now).catch(() => undefined);
    return file;
  }
  await fs.mkdir(store.cacheDir, { recursive: true });
  // Build under a unique name and rename: concurrent creators cannot see a half-made image.
  // Named after its maker (gc removes those of processes that are gone: staleGoldenWork).
  const tmp = `${file}.${ownerTag()}.${newId()}.tmp`;
  try {
    const fh = await fs.open(tmp, 'w');
    await fh.truncate(sizeMb * 1024 * 1024);
    await fh.close();
    await execOk(mkfsArgs(tmp), { timeoutMs: 60_000 });
    if (contents) await fillGolden(tmp, contents);
    await fs.rename(tmp, file);
  } finally {
    await fs.rm(tmp, { force: true });
  }
  await pruneGolden(store.cacheDir, GOLDEN_KEEP);
  return file;
}

/** Mounts a new golden image once and makes `contents` in it (owned by 0: the VPS's root through its idmapped view). */
async function fillGolden(image: string, contents: GoldenContents): Promise<void> {
  const dir = await fs.mkdtemp(`${image}.mnt-`); // the tmp image's name, owner included
  try {
    await mountLoop(image, dir, 'ext4', { flags: MS.NOSUID | MS.NODEV });
    try {
      await fs.mkdir(path.join(dir, 'upper'));
      await fs.mkdir(path.join(dir, 'work'));
      const upper = path.join(dir, 'upper');
      for (const [d, mode] of contents.dirs) {
        await fs.mkdir(path.join(upper, d), { recursive: true });
        await fs.chmod(path.join(upper, d), mode);
      }
      await ensureUpperFiles(upper, contents.files);
    } finally {
      await umount(dir);
    }
  } finally {
    await fs.rmdir(dir).catch(() => undefined);
  }
}

const ownerTag = (): string => {
  const { pid, start } = selfRef();
  return `${pid}-${start}`;
};

/**
 * What a process that died while making a golden image left in the cache dir: its temporary image
 * and the mount it filled it through (unmounted lazily). Those of live processes stay.
 */
export async function staleGoldenWork(cacheDir: string): Promise<string[]> {
  const removed: string[] = [];
  const mounts = await mountPoints();
  const work = new RegExp(String.raw`^${GOLDEN_NAME}\.(\d+)-(\d+)\.[a-z0-9]+\.tmp(\.mnt-\w+)?$`);
  for (const name of await fs.readdir(cacheDir).catch(() => [] as string[])) {
    const m = work.exec(name);
    if (!m || isAlive({ pid: Number(m[1]), start: Number(m[2]) })) continue;
    const full = path.join(cacheDir, name);
    if (m[3] && mounts.has(full)) await umount(full, { lazy: true }).catch(() => undefined);
    await fs.rm(full, { recursive: true, force: true });
    removed.push(full);
  }
  return removed;
}

/** Removes all but the `keep` most recently used golden images. */
export async function pruneGolden(cacheDir: string, keep: number): Promise<string[]> {
  const golden = new RegExp(`^${GOLDEN_NAME}$`);
  const names = (await fs.readdir(cacheDir).catch(() => [] as string[])).filter((n) => golden.test(n));
  if (names.length <= keep) return [];
  const dated = await Promise.all(names.map(async (n) => ({ n, t: (await fs.stat(path.join(cacheDir, n)).catch(() => undefined))?.mtimeMs ?? 0 })));
  const old = dated.sort((a, b) => b.t - a.t).slice(keep).map((d) => path.join(cacheDir, d.n));
  await Promise.all(old.map((f) => fs.rm(f, { force: true })));
  return old;
}

export const overlayOptions = (lower: string, layerMount: string): string =>
  `lowerdir=${lower},upperdir=${path.join(layerMount, 'upper')},workdir=${path.join(layerMount, 'work')}`;

/** Creates the image, mounts it and mounts the overlay root. Undoes what it did on failure. */
export async function mountLayer(
  store: LayerStore,
  p: LayerPaths,
  lowerdir: string,
  sizeMb: number,
  o: LayerRootOptions & { contents?: GoldenContents } = {},
): Promise<void> {
  await mountLayerDisk(store, p, sizeMb, o.contents);
  await mountLayerRoot(p, lowerdir, o);
}

/**
 * The first half of mountLayer: the image, mounted, with empty upper/ and work/ dirs. A move's
 * target makes it before the checkpoint exists; mountLayerRoot finishes it. Undoes itself on failure.
 */
export async function mountLayerDisk(store: LayerStore, p: LayerPaths, sizeMb: number, contents?: GoldenContents): Promise<void> {
  const golden = await goldenImage(store, sizeMb, contents);
  await fs.mkdir(p.layerMount, { recursive: true });
  await fs.mkdir(p.rootfs, { recursive: true });
  await copySparse(golden, p.image);
  try {
    await mountDisk(p);
    if (!contents) await Promise.all([fs.mkdir(path.join(p.layerMount, 'upper')), fs.mkdir(path.join(p.layerMount, 'work'))]);
  } catch (e) {
    await unmountLayer(p).catch(() => undefined);
    throw e;
  }
}

/** The second half: mounts the overlay root (over idmapped views of its layers with `idmap`). Undoes the layer on failure. */
export async function mountLayerRoot(p: LayerPaths, lowerdir: string, o: LayerRootOptions = {}): Promise<void> {
  try {
    let [lower, layer] = [lowerdir, p.layerMount];
    if (o.idmap) {
      if (!p.lower || !p.mappedLayer) throw new RunboxError('internal', 'an idmapped layer needs its lower and mappedLayer paths');
      await Promise.all([fs.mkdir(p.lower), fs.mkdir(p.mappedLayer)]);
      // Read-only template; the disk as mounted (nosuid, nodev).
      await idmapMount(lowerdir, p.lower, o.idmap, { attrs: MOUNT_ATTR.RDONLY | MOUNT_ATTR.NOSUID });
      await idmapMount(p.layerMount, p.mappedLayer, o.idmap, { attrs: MOUNT_ATTR.NOSUID | MOUNT_ATTR.NODEV });
      [lower, layer] = [p.lower, p.mappedLayer];
    }
    // nosuid: a tenant's setuid-root file never elevates a host user who reaches it by this path.
    // Not nodev: runc makes the VPS's /dev nodes in this root (runc fails "error reopening /dev/null
    // inside container: permission denied"); host users are kept out by the VPS's root dir (0700).
    const overlay = { flags: MS.NOSUID, data: overlayOptions(lower, layer) };
    // Over idmapped layers the overlay is made as the VPS's root (the ids they map; see mountAs).
    await (o.idmap ? mountAs(o.idmap.hostId, 'overlay', p.rootfs, 'overlay', overlay) : mount('overlay', p.rootfs, 'overlay', overlay));
  } catch (e) {
    await unmountLayer(p).catch(() => undefined);
    throw e;
  }
}

/**
 * Mounts a VPS's layer from an existing image (received from another host, or a checkpoint's):
 * `move` renames it into place (same file system), otherwise it is copied (sparse). The image
 * must have exactly the size the VPS's spec says: anything else is not this VPS's disk.
 */
export async function mountLayerImage(p: LayerPaths, lowerdir: string, image: { path: string; move: boolean; sizeMb: number }, o: LayerRootOptions = {}): Promise<void> {
  const st = await fs.lstat(image.path).catch(() => undefined);
  if (!st?.isFile() || st.size !== image.sizeMb * 1024 * 1024) {
    throw new RunboxError('checkpoint_incompatible', `the VPS's disk image is ${st?.isFile() ? `${st.size} bytes` : 'missing or not a file'}, not the ${image.sizeMb} MiB its spec says`);
  }
  await fs.mkdir(p.layerMount, { recursive: true });
  await fs.mkdir(p.rootfs, { recursive: true });
  if (image.move) await fs.rename(image.path, p.image);
  else await copySparse(image.path, p.image);
  try {
    await mountDisk(p);
  } catch (e) {
    await unmountLayer(p).catch(() => undefined);
    throw e;
  }
  await mountLayerRoot(p, lowerdir, o);
}

/** The image on a loop device (detached again at the unmount), on layerMount. */
async function mountDisk(p: LayerPaths): Promise<void> {
  await mountLoop(p.image, p.layerMount, 'ext4', { flags: MS.NOSUID | MS.NODEV });
}

/**
 * Freezes the layer's file system (FIFREEZE: everything written is flushed to the image file, and
 * nothing more can be written) until the returned thaw: the image can then be copied, sent or
 * linked as a consistent disk (no journal: mounting it warns "unchecked fs", harmlessly). A sync
 * alone is not enough: a process that dies afterwards (CRIU ends a post-copy source's processes
 * after their last page) still makes ext4 free the files it held unlinked, writing to the image
 * while it is sent. Idempotent thaw. An unmount does NOT thaw: a frozen file system unmounted
 * stays alive, detached and frozen, with its loop device, until reboot; so unmountLayer thaws the
 * layers this process froze first, and gc thaws those a crashed process left frozen.
 */
export async function freezeLayer(p: LayerPaths): Promise<() => Promise<void>> {
  await freezeFs(p.layerMount);
  frozenLayers.add(path.resolve(p.layerMount));
  let thawed: Promise<void> | undefined;
  return () =>
    (thawed ??= thawFs(p.layerMount).then(
      () => void frozenLayers.delete(path.resolve(p.layerMount)),
      async (e: unknown) => {
        frozenLayers.delete(path.resolve(p.layerMount));
        // Not frozen any more (EINVAL), or unmounted meanwhile: fine.
        if (errnoCode(e) !== 'EINVAL' && (await isMountPoint(p.layerMount))) {
          throw new RunboxError('internal', `thawing ${p.layerMount} failed: ${(e as Error).message}`);
        }
      },
    ));
}

/** Layer mounts this process froze and has not thawed (unmountLayer thaws them). */
const frozenLayers = new Set<string>();

/**
 * Empty regular files at `files` (paths inside the VPS) in an upper dir where it has none: a
 * runtime in a user namespace binds the host's device nodes over files it opens first, and the
 * template's own nodes there cannot be opened so (runc: "open …/dev/tty: no such device or
 * address"). Before the overlay is mounted; owner: the VPS's root.
 */
export async function ensureUpperFiles(upper: string, files: readonly string[]): Promise<void> {
  for (const f of files) {
    const rel = f.replace(/^\/+/, '');
    await fs.mkdir(path.join(upper, path.dirname(rel)), { recursive: true });
    await fs.writeFile(path.join(upper, rel), '', { flag: 'wx', mode: 0o666 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
}

/** Bytes the sparse image really takes (what copying or sending it costs). */
export async function allocatedBytes(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

/** Idempotent: unmounts whatever of the layer is still mounted and removes the image. */
export async function unmountLayer(p: LayerPaths): Promise<void> {
  const layer = path.resolve(p.layerMount);
  if (frozenLayers.has(layer)) {
    // Destroyed before its thaw (a moved VPS whose disk was still being sent): thaw it first.
    if (await isMountPoint(layer)) await thawFs(layer).catch(() => undefined);
    frozenLayers.delete(layer);
  }
  // Overlay first, then its layers, then the disk under them (its loop device detaches itself). No
  // look at the mount table first (it grows by 3 lines per VPS): the kernel says EINVAL for a
  // directory that is not a mount point and ENOENT for one that is gone, and both are already undone.
  for (const target of [p.rootfs, p.lower, p.mappedLayer, p.layerMount]) {
    if (!target) continue;
    // A busy mount (a process still holding a file) must not block teardown: detach it lazily.
    await umount(target).catch((e: unknown) => (notMounted(e) ? undefined : umount(target, { lazy: true })));
  }
  await fs.rm(p.image, { force: true });
}

const notMounted = (e: unknown): boolean => errnoCode(e) === 'EINVAL' || errnoCode(e) === 'ENOENT';

/** Every mount point on the host (escapes in /proc/self/mountinfo decoded). */
export async function mountPoints(): Promise<Set<string>> {
  const mounts = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return new Set(mounts.split('\n').map((l) => decodeMountPath(l.split(' ')[4] ?? '')));
}

export async function isMountPoint(dir: string): Promise<boolean> {
  return (await mountPoints()).has(path.resolve(dir));
}

const decodeMountPath = (s: string): string => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}
