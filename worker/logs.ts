import type { Logger } from '../core/log.js';
import type { LogChunk, LogStore } from '../core/store/logs.js';

/**
 * Batches a job's output into the log stream: one Redis round trip per flush instead of one per
 * 4 KB agent frame. Adjacent chunks of the same stream are merged (their offsets are contiguous).
 * Flushes every `intervalMs`, or at once when `maxBytes` are pending.
 */
export class OutputWriter {
  private pending: LogChunk[] = [];
  private pendingBytes = 0;
  private timer?: NodeJS.Timeout;
  private chain: Promise<void> = Promise.resolve();
  private failed?: unknown;

  constructor(
    private readonly logs: LogStore,
    private readonly jobId: string,
    private readonly log: Logger,
    private readonly intervalMs = 20,
    private readonly maxBytes = 256 * 1024,
  ) {}

  push(stream: 'stdout' | 'stderr', data: Buffer, offset: number): void {
    const last = this.pending.at(-1);
    if (last && last.stream === stream && last.offset + last.data.length === offset && last.data.length + data.length <= 64 * 1024) {
      last.data = Buffer.concat([last.data, data]);
    } else {
      this.pending.push({ stream, data: Buffer.from(data), offset });
    }
    this.pendingBytes += data.length;
    if (this.pendingBytes >= this.maxBytes) this.flushSoon(0);
    else this.flushSoon(this.intervalMs);
  }

  private flushSoon(ms: number): void {
    if (this.timer && ms > 0) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.flush(), ms);
  }

  /** Writes everything pending; resolves when all earlier writes are stored. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.chain = this.chain.then(async () => {
      try {
        await this.logs.append(this.jobId, batch);
      } catch (e) {
        this.failed = e;
        this.log.error({ err: e, jobId: this.jobId }, 'storing output failed');
      }
    });
    return this.chain;
  }

  get error(): unknown {
    return this.failed;
  }
}
