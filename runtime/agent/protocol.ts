/**
 * Host side of the agent wire protocol (runtime/agent/PROTOCOL.md). Pure encoding and decoding;
 * no I/O here.
 */
export const FRAME_HEADER = 5;
/** One frame is written with one write() of at most PIPE_BUF bytes, so it is atomic in the pipe. */
export const MAX_FRAME = 4096;
export const MAX_PAYLOAD = MAX_FRAME - FRAME_HEADER;
export const AGENT_VERSION = 'runbox-agent/1';

export type AgentFrame =
  | { type: 'ready'; version: string }
  | { type: 'started'; pid: number }
  | { type: 'stdout'; data: Buffer }
  | { type: 'stderr'; data: Buffer }
  | { type: 'diagnostic'; message: string }
  | { type: 'exited'; code: number; signal: number; cpuUs: number; maxRssKiB: number }
  | { type: 'fileWritten'; errno: number; message: string }
  | { type: 'outputTotal'; bytes: number }
  /** F: one collected file follows in `fileData` frames (see PROTOCOL.md for `size`). */
  | { type: 'fileHeader'; path: string; size: number; mode: number }
  | { type: 'fileData'; data: Buffer }
  /** Z: end of a collection; `notes` are the agent's lines about skipped or failed entries. */
  | { type: 'collected'; files: number; bytes: number; truncated: boolean; notes: string[] };

export interface JobSpecFrame {
  argv: string[];
  env: Record<string, string>;
  workdir?: string;
  user?: string;
}

function frame(type: string, payload: Buffer): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new Error(`agent frame ${type} too large (${payload.length} bytes)`);
  const header = Buffer.alloc(FRAME_HEADER);
  header.write(type, 0, 'latin1');
  header.writeUInt32LE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

function records(entries: Array<[string, string]>): Buffer {
  return Buffer.concat(entries.map(([k, v]) => Buffer.concat([Buffer.from(k, 'latin1'), Buffer.from(v, 'utf8'), Buffer.from([0])])));
}

/** NUL inside a string would cut a record short: reject instead of silently truncating. */
function checkNoNul(what: string, v: string): void {
  if (v.includes('\0')) throw new Error(`${what} must not contain NUL bytes`);
}

export function encodeJob(spec: JobSpecFrame): Buffer {
  const entries: Array<[string, string]> = [];
  for (const a of spec.argv) (checkNoNul('command arguments', a), entries.push(['a', a]));
  for (const [k, v] of Object.entries(spec.env)) {
    checkNoNul('environment', k + v);
    entries.push(['e', `${k}=${v}`]);
  }
  if (spec.workdir) (checkNoNul('workdir', spec.workdir), entries.push(['w', spec.workdir]));
  if (spec.user) (checkNoNul('user', spec.user), entries.push(['u', spec.user]));
  const payload = records(entries);
  if (payload.length > MAX_PAYLOAD) {
    throw new Error(`command, environment and workdir together must fit in ${MAX_PAYLOAD} bytes (got ${payload.length})`);
  }
  return frame('J', payload);
}

/** Stdin split into frames of at most MAX_PAYLOAD bytes. */
export function encodeStdin(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += MAX_PAYLOAD) out.push(frame('I', data.subarray(i, i + MAX_PAYLOAD)));
  return out;
}

export const encodeStdinClose = (): Buffer => frame('C', Buffer.alloc(0));

/** Asks the agent how many output bytes it has written (answered by an outputTotal frame). */
export const encodeOutputQuery = (): Buffer => frame('Q', Buffer.alloc(0));

export function encodeSignal(signal: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(signal);
  return frame('K', p);
}

export interface FileWrite {
  path: string;
  content: Buffer;
  mode?: number;
  owner?: string;
}

/** A file as one or more W frames (the later ones append). */
export function encodeFileWrite(f: FileWrite): Buffer[] {
  checkNoNul('file path', f.path);
  if (f.owner) checkNoNul('file owner', f.owner);
  const head = (append: boolean) =>
    records([
      ['p', f.path],
      ['m', (f.mode ?? 0o644).toString(8)],
      ...(f.owner ? ([['o', f.owner]] as Array<[string, string]>) : []),
      ...(append ? ([['A', '']] as Array<[string, string]>) : []),
    ]);
  const out: Buffer[] = [];
  let offset = 0;
  do {
    const h = Buffer.concat([head(offset > 0), Buffer.from('d', 'latin1')]);
    const room = MAX_PAYLOAD - h.length;
    if (room <= 0) throw new Error('file path too long');
    out.push(frame('W', Buffer.concat([h, f.content.subarray(offset, offset + room)])));
    offset += room;
  } while (offset < f.content.length);
  return out;
}

export interface CollectRequest {
  /** glob(3) patterns; a relative one is relative to the job's working directory (or /). */
  patterns: string[];
  /** Total content bytes the agent may send. */
  maxBytes: number;
  /** Number of files the agent may send. */
  maxFiles: number;
}

/** The G frame: collect files (answered by F/B frames and one Z). */
export function encodeCollect(req: CollectRequest): Buffer {
  if (req.patterns.length === 0) throw new Error('at least one pattern is needed');
  for (const p of req.patterns) {
    if (p === '') throw new Error('patterns must not be empty');
    checkNoNul('pattern', p);
  }
  for (const [what, v] of [['maxBytes', req.maxBytes], ['maxFiles', req.maxFiles]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${what} must be a non-negative integer (got ${v})`);
  }
  const payload = records([
    ...req.patterns.map((p): [string, string] => ['g', p]),
    ['n', String(req.maxBytes)],
    ['f', String(req.maxFiles)],
  ]);
  if (payload.length > MAX_PAYLOAD) throw new Error(`patterns together must fit in ${MAX_PAYLOAD} bytes (got ${payload.length})`);
  return frame('G', payload);
}

/** Parses key:u8 + NUL-terminated string records; undefined if one is unterminated. */
function parseRecords(p: Buffer): Map<string, string> | undefined {
  const out = new Map<string, string>();
  let i = 0;
  while (i < p.length) {
    const end = p.indexOf(0, i + 1);
    if (end < 0) return undefined;
    out.set(String.fromCharCode(p[i]!), p.subarray(i + 1, end).toString('utf8'));
    i = end + 1;
  }
  return out;
}

function decodeFileHeader(p: Buffer): AgentFrame | undefined {
  const r = parseRecords(p);
  const path = r?.get('p');
  const size = r?.get('s');
  const mode = r?.get('m');
  if (!path || !size || !mode || !/^[0-9]{1,16}$/.test(size) || !/^[0-7]{1,6}$/.test(mode)) return undefined;
  const n = Number(size);
  if (!Number.isSafeInteger(n)) return undefined;
  return { type: 'fileHeader', path, size: n, mode: parseInt(mode, 8) };
}

/** Incremental decoder: feed bytes, get whole frames. Unknown types are reported, not fatal. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): AgentFrame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: AgentFrame[] = [];
    while (this.buf.length >= FRAME_HEADER) {
      const len = this.buf.readUInt32LE(1);
      if (len > MAX_PAYLOAD) throw new Error(`agent sent an oversized frame (${len} bytes): protocol violation`);
      if (this.buf.length < FRAME_HEADER + len) break;
      const type = String.fromCharCode(this.buf[0]!);
      const p = this.buf.subarray(FRAME_HEADER, FRAME_HEADER + len);
      this.buf = this.buf.subarray(FRAME_HEADER + len);
      const f = decode(type, Buffer.from(p));
      if (f) frames.push(f);
    }
    return frames;
  }
}

function decode(type: string, p: Buffer): AgentFrame | undefined {
  switch (type) {
    case 'R':
      return { type: 'ready', version: p.toString('latin1') };
    case 'S':
      return p.length >= 4 ? { type: 'started', pid: p.readUInt32LE(0) } : undefined;
    case 'O':
      return { type: 'stdout', data: p };
    case 'E':
      return { type: 'stderr', data: p };
    case 'D':
      return { type: 'diagnostic', message: p.toString('utf8') };
    case 'X':
      if (p.length < 24) return undefined;
      return {
        type: 'exited',
        code: p.readInt32LE(0),
        signal: p.readInt32LE(4),
        cpuUs: Number(p.readBigUInt64LE(8)),
        maxRssKiB: Number(p.readBigUInt64LE(16)),
      };
    case 'q':
      return p.length >= 8 ? { type: 'outputTotal', bytes: Number(p.readBigUInt64LE(0)) } : undefined;
    case 'w':
      return p.length >= 4 ? { type: 'fileWritten', errno: p.readInt32LE(0), message: p.subarray(4).toString('utf8') } : undefined;
    case 'F':
      return decodeFileHeader(p);
    case 'B':
      return { type: 'fileData', data: p };
    case 'Z':
      if (p.length < 13) return undefined;
      return {
        type: 'collected',
        files: p.readUInt32LE(0),
        bytes: Number(p.readBigUInt64LE(4)),
        truncated: p[12] !== 0,
        notes: p.subarray(13).toString('utf8').split('\n').filter((l) => l !== ''),
      };
    default:
      return undefined;
  }
}
