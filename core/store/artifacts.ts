import type { Redis } from 'ioredis';
import { Keys } from './keys.js';

/** Collected files of a job: one Redis hash per job, path → content (size-capped by the worker). */
export class ArtifactStore {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
  }

  async put(jobId: string, files: Array<{ path: string; content: Buffer }>): Promise<void> {
    if (files.length === 0) return;
    const args: Array<string | Buffer> = [];
    for (const f of files) args.push(f.path, f.content);
    await this.redis.hset(this.keys.artifacts(jobId), ...(args as [string, Buffer]));
  }

  async get(jobId: string, path: string): Promise<Buffer | null> {
    return this.redis.hgetBuffer(this.keys.artifacts(jobId), path);
  }
}
