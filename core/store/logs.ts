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
  async truncate(jobId: string, offset: number): Promise<void> {
    const key = this.keys.log(jobId);
    const ids = await this.redis.xrange(key, entryId(offset), '+');
    if (ids.length) await this.redis.xdel(key, ...ids.map(([id]) => id));
    // A stream only takes ids above the highest it ever had; move that mark back to the cut so
    // the restored VPS's output (from `offset` on) can be written again.
    if (await this.redis.exists(key)) await this.redis.xsetid(key, `${offset}-0`);
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
