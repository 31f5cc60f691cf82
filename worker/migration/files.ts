import { spawn } from 'node:child_process';
import fs, { constants as fsc } from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { RunboxError } from '../../core/errors.js';

/**
 * The files of a move, as a stream: GNU tar on the sending side (`--sparse` finds a disk image's
 * data with SEEK_DATA/SEEK_HOLE, so a mostly empty image costs only its data), and on the
 * receiving side a strict reader of that format written here, which takes only the entries it
 * was told to expect: plain files (sparse or not) and the listed directories with plain files in
 * them, with names it checks, never past each file's size cap; no links, devices, FIFOs, long
 * names or paths of any other shape. Nothing is extracted by a general-purpose tool.
 */
export interface FileSpec {
  /** The entry's name in the stream (sender: the basename of `path`). */
  name: string;
  /** Sender: what to send. Receiver: where to write it (must not exist; its parent must). */
  path: string;
  /** Receiver: the most its data may hold (a directory: all its files together; a sparse file: its apparent size). */
  maxBytes: number;
  /** A directory of plain files (one level), instead of one file. */
  dir?: boolean;
}

/** Where bytes come from (transport.ts reads them off the TLS socket with idle timeouts). */
export interface ByteSource {
  /** Exactly n bytes; rejects when the stream ends or fails first. */
  exact(n: number): Promise<Buffer>;
  /** Between 1 and `max` bytes. */
  some(max: number): Promise<Buffer>;
}

const BLOCK = 512;
/** tar writes records of this many blocks (64 KiB): few syscalls; the end of a stream is padded to one. */
export const BLOCKING_FACTOR = 128;
const MAX_ENTRIES = 65_536;
/** CRIU image names (core-1.img, tmpfs-dev-59.tar.gz.img, descriptors.json, ...): no dot files, no slashes. */
const MEMBER = /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$/;
const WRITE_BATCH = 1024 * 1024;

/** argv of the sending tar (pure). Paths must be absolute and named as their entries. */
export function tarArgs(files: readonly FileSpec[]): string[] {
  const args = ['tar', '--create', '--sparse', '--format=gnu', `--blocking-factor=${BLOCKING_FACTOR}`, '--file', '-'];
  for (const f of files) {
    if (!path.isAbsolute(f.path) || path.basename(f.path) !== f.name || !MEMBER.test(f.name)) {
      throw new RunboxError('internal', `cannot send ${f.path} as "${f.name}" (an absolute path whose basename is the entry name)`);
    }
    args.push('-C', path.dirname(f.path), f.name);
  }
  return args;
}

/**
 * Writes the files to `out` (left open: the answer comes back on the same connection). Resolves
 * once all is written; on failure `out` is destroyed. `breakMidway`: failure injection, the
 * connection breaks after the first kilobyte.
 */
export function sendFiles(files: readonly FileSpec[], out: Writable, o: { breakMidway?: boolean } = {}): Promise<void> {
  const [cmd, ...args] = tarArgs(files);
  return new Promise((resolve, reject) => {
    const tar = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let tarErr = '';
    tar.stderr.on('data', (d: Buffer) => (tarErr = (tarErr + d.toString()).slice(-2000)));
    const fail = (e: Error) => {
      tar.kill('SIGKILL');
      out.destroy(e);
      reject(e);
    };
    tar.on('error', (e) => fail(new RunboxError('internal', `cannot run tar: ${e.message}`)));
    // A connection that breaks leaves tar blocked on a full pipe otherwise.
    out.once('close', () => tar.kill('SIGKILL'));
    if (o.breakMidway) {
      tar.stdout.once('data', (chunk: Buffer) => {
        out.write(chunk.subarray(0, 1000));
        fail(new RunboxError('unavailable', 'injected fault: connection broken during the transfer'));
      });
      return;
    }
    tar.stdout.pipe(out, { end: false });
    tar.on('close', (code) => {
      if (code === 0) resolve();
      else fail(new RunboxError('internal', `tar of the checkpoint failed (${code}): ${tarErr.trim()}`));
    });
  });
}

/** A numeric tar header field: octal text, or GNU base-256 (high bit set) for large values. */
export function tarNumber(field: Buffer): number {
  if (field.length > 0 && (field[0]! & 0x80) !== 0) {
    let v = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) {
      v = v * 256 + field[i]!;
      if (v > Number.MAX_SAFE_INTEGER) throw bad('a numeric field out of range');
    }
    return v;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (!/^[0-7]*$/.test(text)) throw bad('a numeric field that is not octal');
  return text === '' ? 0 : parseInt(text, 8);
}

const bad = (why: string) => new RunboxError('invalid_argument', `the checkpoint stream is malformed: ${why}`);

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8');
}

/** The checksum of a header block is its byte sum with the checksum field read as spaces. */
export function headerChecksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return tarNumber(block.subarray(148, 156)) === sum;
}

interface Extent {
  offset: number;
  bytes: number;
}

/** GNU old-format sparse map entries (offset, numbytes: 12 bytes each) from `count` slots at `at`. */
function sparseEntries(block: Buffer, at: number, count: number): Extent[] {
  const out: Extent[] = [];
  for (let i = 0; i < count; i++) {
    const o = at + i * 24;
    if (block[o] === 0) break;
    out.push({ offset: tarNumber(block.subarray(o, o + 12)), bytes: tarNumber(block.subarray(o + 12, o + 24)) });
  }
  return out;
}

/**
 * Reads a GNU tar stream from `src` up to its end marker, writing the expected entries (and only
 * those) to their paths. Throws `limit_exceeded` past a cap and `invalid_argument` on anything
 * unexpected; what it wrote is then the caller's to remove (it writes only below the specs' paths).
 */
export async function receiveFiles(src: ByteSource, files: readonly FileSpec[]): Promise<void> {
  const used = new Map<FileSpec, number>(files.map((f) => [f, 0]));
  const seen = new Set<FileSpec>();
  for (let entries = 0; ; entries++) {
    if (entries > MAX_ENTRIES) throw bad(`more than ${MAX_ENTRIES} entries`);
    const block = await src.exact(BLOCK);
    if (block.every((b) => b === 0)) {
      if (!(await src.exact(BLOCK)).every((b) => b === 0)) throw bad('a lone zero block');
      break;
    }
    if (!headerChecksumOk(block)) throw bad('a header checksum mismatch');
    if (block.toString('latin1', 257, 265) !== 'ustar  \0') throw bad('not the GNU tar format');
    const name = cString(block.subarray(0, 100));
    const type = String.fromCharCode(block[156]!);
    const size = tarNumber(block.subarray(124, 136));
    const { spec, target } = place(files, name, type === '5');
    if (type === '5') {
      if (size !== 0) throw bad(`directory ${name} with data`);
      fs.mkdirSync(spec.path, { mode: 0o700 });
      seen.add(spec);
      continue;
    }
    if (type !== '0' && type !== '\0' && type !== 'S') throw bad(`entry ${JSON.stringify(name.slice(0, 120))} is not a plain file (type ${JSON.stringify(type)}): links, devices and FIFOs are refused`);
    if (spec.dir && !seen.has(spec)) throw bad(`${name} before its directory`);
    let extents: Extent[];
    let apparent = size;
    if (type === 'S') {
      extents = sparseEntries(block, 386, 4);
      for (let more = block[482] !== 0; more; ) {
        const ext = await src.exact(BLOCK);
        extents.push(...sparseEntries(ext, 0, 21));
        if (extents.length > MAX_ENTRIES) throw bad('a sparse map that is too long');
        more = ext[504] !== 0;
      }
      apparent = tarNumber(block.subarray(483, 495));
      checkExtents(extents, size, apparent, name);
    } else {
      extents = [{ offset: 0, bytes: size }];
    }
    const total = used.get(spec)! + apparent;
    if (total > spec.maxBytes) throw new RunboxError('limit_exceeded', `the checkpoint's ${spec.name} exceeds its cap of ${spec.maxBytes} bytes`);
    used.set(spec, total);
    await writeEntry(src, target, extents, apparent);
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) await src.exact(pad);
    if (!spec.dir) seen.add(spec);
  }
  const missing = files.filter((f) => !seen.has(f)).map((f) => f.name);
  if (missing.length) throw bad(`it lacks ${missing.join(', ')}`);
}

/** Which expected entry `name` is, and the path it goes to. */
function place(files: readonly FileSpec[], name: string, isDir: boolean): { spec: FileSpec; target: string } {
  for (const f of files) {
    if (f.dir && (name === `${f.name}/` || (name === f.name && isDir))) {
      if (!isDir) break;
      return { spec: f, target: f.path };
    }
    if (!f.dir && name === f.name && !isDir) return { spec: f, target: f.path };
    if (f.dir && !isDir && name.startsWith(`${f.name}/`)) {
      const member = name.slice(f.name.length + 1);
      if (MEMBER.test(member)) return { spec: f, target: path.join(f.path, member) };
    }
  }
  throw bad(`unexpected entry ${JSON.stringify(name.slice(0, 120))}`);
}

/** A sparse map must be ascending, inside the file, and account for exactly the data stored. */
function checkExtents(extents: Extent[], size: number, apparent: number, name: string): void {
  let end = 0;
  let sum = 0;
  for (const e of extents) {
    if (e.offset < end || e.offset + e.bytes > apparent) throw bad(`the sparse map of ${name} is out of order or past its end`);
    end = e.offset + e.bytes;
    sum += e.bytes;
  }
  if (sum !== size) throw bad(`the sparse map of ${name} does not match its data`);
}

/**
 * Writes one file's data (at its extents) to a new file; holes stay holes. Synchronous file calls
 * (into the page cache, at most WRITE_BATCH each): a move's images are dozens of files, and a
 * thread-pool round trip per open, write and close was most of the transfer time.
 */
async function writeEntry(src: ByteSource, target: string, extents: Extent[], apparent: number): Promise<void> {
  const fd = fs.openSync(target, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    for (const e of extents) {
      let pos = e.offset;
      let left = e.bytes;
      while (left > 0) {
        // Batches of up to 1 MiB per write: few syscalls, and the socket is read meanwhile.
        const parts: Buffer[] = [];
        let n = 0;
        while (left > 0 && n < WRITE_BATCH) {
          const chunk = await src.some(Math.min(left, WRITE_BATCH - n));
          parts.push(chunk);
          n += chunk.length;
          left -= chunk.length;
        }
        for (let done = 0; done < n; ) done += fs.writevSync(fd, done === 0 ? parts : [Buffer.concat(parts).subarray(done)], pos + done);
        pos += n;
      }
    }
    fs.ftruncateSync(fd, apparent); // a hole at the end (GNU tar maps it as an empty last extent)
  } finally {
    fs.closeSync(fd);
  }
}
