import type { Redis } from 'ioredis';
import type { LogEvent } from '../job.js';
import { Keys } from './keys.js';

/**
 * Job output in a Redis stream per job. Each entry's id is derived from the chunk's byte offset
 * (`<offset+1>-0`), so readers resume from an offset directly, and a chunk written twice (e.g.
 * after a restore from a checkpoint) is rejected by Redis itself: ids must grow.
 */
export interface LogChunk {
  stream: 'stdout' | 'stderr';
  data: Buffer;
  offset: number;
}

export const entryId = (offset: number): string => `${offset + 1}-0`;

// KEYS[1] the log stream; ARGV[1] the cut (a byte offset). Drops every chunk that starts at or after
// the cut and shortens the one that reaches past it (the writer merges agent frames, so a chunk may
// span the cut). A stream only takes ids above the highest it ever had: moving that mark back to
// the cut lets the restored VPS's output (from the cut on) be written again.
const TRUNCATE = `
local key, cut = KEYS[1], tonumber(ARGV[1])
if redis.call('EXISTS', key) == 0 then return 0 end
local ids = redis.call('XRANGE', key, (cut + 1) .. '-0', '+')
for _, e in ipairs(ids) do redis.call('XDEL', key, e[1]) end
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
if last then
  local start = tonumber(string.match(last[1], '^(%d+)')) - 1
  local f = {}
  for i = 1, #last[2], 2 do f[last[2][i]] = last[2][i + 1] end
  if start + #f.d > cut then
    redis.call('XDEL', key, last[1])
    redis.call('XSETID', key, start .. '-0')
    redis.call('XADD', key, last[1], 's', f.s, 'd', string.sub(f.d, 1, cut - start))
  end
end
redis.call('XSETID', key, cut .. '-0')
return #ids`;
export const offsetOf = (id: string): number => Number(id.split('-')[0]) - 1;

export class LogStore {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
  }

  async append(jobId: string, chunks: LogChunk[]): Promise<void> {
    if (chunks.length === 0) return;
    const key = this.keys.log(jobId);
    const m = this.redis.pipeline();
    for (const c of chunks) m.xadd(key, entryId(c.offset), 's', c.stream === 'stdout' ? 'o' : 'e', 'd', c.data);
    const res = await m.exec();
    // An id that is not above the last one means the chunk is already there: ignore, not an error.
    for (const [err] of res ?? []) if (err && !/equal or smaller/.test(err.message)) throw err;
  }

  /** Chunks whose offset is >= `from`, at most `count`. */
  async read(jobId: string, from: number, count = 512): Promise<LogChunk[]> {
    const entries = await this.redis.xrangeBuffer(this.keys.log(jobId), entryId(from), '+', 'COUNT', count);
    return entries.map(([id, fields]) => {
      const f: Record<string, Buffer> = {};
      for (let i = 0; i < fields.length; i += 2) f[fields[i]!.toString()] = fields[i + 1]!;
      return { stream: f.s?.toString() === 'e' ? 'stderr' : 'stdout', data: f.d ?? Buffer.alloc(0), offset: offsetOf(id.toString()) };
    });
  }

  /** The combined output as bytes. */
  async text(jobId: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let from = 0;
    for (;;) {
      const chunks = await this.read(jobId, from, 1024);
      if (chunks.length === 0) break;
      for (const c of chunks) parts.push(c.data);
      const last = chunks.at(-1)!;
      from = last.offset + last.data.length;
    }
    return Buffer.concat(parts);
  }

  /** Removes every chunk at or after `offset` (a job restored from a checkpoint continues from there). */
  /**
   * Cuts the log back to `offset`. One atomic script: a chunk appended between the delete and the
   * XSETID (a writer still flushing) would otherwise make XSETID fail ("smaller than the target
   * stream top item").
   */
  async truncate(jobId: string, offset: number): Promise<void> {
    await this.redis.eval(TRUNCATE, 1, this.keys.log(jobId), String(offset));
  }
}

export function toEvent(c: LogChunk): LogEvent {
  return { stream: c.stream, data: c.data.toString('utf8'), offset: c.offset };
}

/** Splits off an incomplete UTF-8 sequence at the end, so chunks decode cleanly on their own. */
export function splitUtf8(buf: Buffer): [Buffer, Buffer] {
  let i = buf.length - 1;
  let back = 0;
  while (i >= 0 && back < 4 && (buf[i]! & 0xc0) === 0x80) (i--, back++);
  if (i < 0) return [buf, Buffer.alloc(0)];
  const lead = buf[i]!;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  if (need > 1 && buf.length - i < need) return [buf.subarray(0, i), buf.subarray(i)];
  return [buf, Buffer.alloc(0)];
}
