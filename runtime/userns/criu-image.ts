import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import type { IdMapping } from '../native/sys.js';

/**
 * A VPS's CRIU images name the host ids of its user namespace (userns-<id>.img: its uid_map and
 * gid_map), and CRIU makes the restored VPS's user namespace with them. A VPS restored elsewhere
 * (another host, or this one later) has other host ids; its images are given those before the
 * restore. Everything else in the images holds ids as the VPS sees them (root = 0), and its disk
 * stores them so too (storage/layer.ts): only this file changes.
 *
 * The file comes with a checkpoint, from another host: it is read strictly. The format (CRIU
 * images/userns.proto, criu/image.c): two magic numbers, then one entry, its size (u32 LE) and a
 * protobuf UsernsEntry { repeated UidGidExtent uid_map = 1; repeated UidGidExtent gid_map = 2 },
 * UidGidExtent { uint32 first = 1; uint32 lower_first = 2; uint32 count = 3 }. runbox VPSs have
 * exactly one extent in each map, from 0: anything else is not a runbox VPS's and is refused.
 */
const IMG_COMMON_MAGIC = 0x54564319;
const USERNS_MAGIC = 0x55474906;

export interface UsernsMaps {
  uid: IdMapping;
  gid: IdMapping;
}

/** The maps of a userns image (throws checkpoint_incompatible for anything but a runbox VPS's). */
export function readUsernsImage(buf: Buffer): UsernsMaps {
  const bad = (why: string) => new RunboxError('checkpoint_incompatible', `the checkpoint's user namespace image is not one runbox writes: ${why}`);
  if (buf.length < 12 || buf.length > 4096) throw bad(`${buf.length} bytes`);
  if (buf.readUInt32LE(0) !== IMG_COMMON_MAGIC || buf.readUInt32LE(4) !== USERNS_MAGIC) throw bad('wrong magic');
  const size = buf.readUInt32LE(8);
  if (size !== buf.length - 12) throw bad('entry size does not match the file');
  const maps: Partial<Record<'uid' | 'gid', IdMapping>> = {};
  const r = new Reader(buf.subarray(12), bad);
  while (!r.done) {
    const key = r.varint();
    const field = key >>> 3;
    if ((key & 7) !== 2 || (field !== 1 && field !== 2)) throw bad(`unexpected field ${key}`);
    const name = field === 1 ? 'uid' : 'gid';
    if (maps[name]) throw bad(`more than one ${name} extent`);
    const e = new Reader(r.bytes(r.varint()), bad);
    const ext: Record<number, number> = {};
    while (!e.done) {
      const k = e.varint();
      if ((k & 7) !== 0 || (k >>> 3) < 1 || (k >>> 3) > 3 || ext[k >>> 3] !== undefined) throw bad(`unexpected extent field ${k}`);
      ext[k >>> 3] = e.varint();
    }
    if (ext[1] !== 0 || ext[2] === undefined || ext[3] === undefined) throw bad(`the ${name} map does not start at 0`);
    maps[name] = { hostId: ext[2], count: ext[3] };
  }
  if (!maps.uid || !maps.gid) throw bad('a map is missing');
  return { uid: maps.uid, gid: maps.gid };
}

/** The same image with both maps set to `m` (count must stay what the VPS had: its ids inside). */
export function rewriteUsernsImage(buf: Buffer, m: IdMapping): Buffer {
  const old = readUsernsImage(buf);
  if (old.uid.count !== m.count || old.gid.count !== m.count) {
    throw new RunboxError('checkpoint_incompatible', `the checkpoint's VPS had ${old.uid.count} ids in its user namespace, this host gives ${m.count}`);
  }
  const extent = Buffer.concat([Buffer.from([0x08, 0x00, 0x10]), varint(m.hostId), Buffer.from([0x18]), varint(m.count)]);
  const entry = Buffer.concat([0x0a, 0x12].flatMap((key) => [Buffer.from([key]), varint(extent.length), extent]));
  const head = Buffer.alloc(12);
  head.writeUInt32LE(IMG_COMMON_MAGIC, 0);
  head.writeUInt32LE(USERNS_MAGIC, 4);
  head.writeUInt32LE(entry.length, 8);
  return Buffer.concat([head, entry]);
}

const USERNS_IMAGE = /^userns-\d{1,10}\.img$/;

/**
 * Readies a checkpoint's images for a restore as a VPS with user namespace ids `m`, or without
 * one (`m` undefined), in one pass over the dir: a checkpoint restores with a user namespace
 * exactly when it was dumped from one (checkpoint_incompatible otherwise). With one, its userns
 * image gets the ids `m` (the file replaced whole), and the dir and its files become the VPS
 * root's and readable: CRIU opens some images from inside the restored VPS's user namespace, some
 * before its ids are mapped ("Unable to open timens-0.img: Permission denied" for images a move
 * received 0600; CRIU writes its own 0644). The dirs above (the state dir, 0700) keep host users
 * out. Links are left alone.
 */
export async function prepareUsernsImages(imagesDir: string, m: IdMapping | undefined): Promise<void> {
  const entries = await fs.readdir(imagesDir, { withFileTypes: true });
  const userns = entries.filter((e) => USERNS_IMAGE.test(e.name));
  if (!m) {
    if (userns.length) throw new RunboxError('checkpoint_incompatible', 'the checkpoint is of a VPS in a user namespace, and this host runs VPSs without (RUNBOX_USERNS)');
    return;
  }
  if (userns.length !== 1) {
    throw new RunboxError('checkpoint_incompatible', userns.length ? 'the checkpoint holds more than one user namespace' : 'the checkpoint is of a VPS without a user namespace (RUNBOX_USERNS)');
  }
  if (!userns[0]!.isFile()) throw new RunboxError('checkpoint_incompatible', `${userns[0]!.name} is not a file`);
  const file = path.join(imagesDir, userns[0]!.name);
  const next = rewriteUsernsImage(await fs.readFile(file), m);
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, next, { mode: 0o644 });
  await fs.rename(tmp, file);
  await fs.chown(imagesDir, m.hostId, m.hostId);
  await fs.chmod(imagesDir, 0o755);
  for (const e of entries) {
    if (!e.isFile()) continue;
    const f = path.join(imagesDir, e.name);
    await fs.lchown(f, m.hostId, m.hostId);
    await fs.chmod(f, 0o644);
  }
}

class Reader {
  private at = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly bad: (why: string) => Error,
  ) {}
  get done(): boolean {
    return this.at >= this.buf.length;
  }
  varint(): number {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (this.at >= this.buf.length) throw this.bad('truncated');
      const b = this.buf[this.at++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) {
        if (v > 0xffffffff) throw this.bad('value out of range');
        return v;
      }
    }
    throw this.bad('varint too long');
  }
  bytes(n: number): Buffer {
    if (n > this.buf.length - this.at) throw this.bad('truncated');
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
}

function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}
