import type { Redis } from 'ioredis';
import type { Logger } from '../core/log.js';
import type { ObjectArtifactStore } from '../core/objects/artifacts.js';
import type { JobStore } from '../core/store/jobs.js';

/** How often the cluster looks for artifacts whose job's record expired (one host per round: a Redis lock). */
export const ARTIFACT_SWEEP_MS = 10 * 60 * 1000;

/**
 * Artifacts in an object store outlive nothing: a job's record expires from Redis with its result
 * (RUNBOX_RESULT_TTL_SEC), its artifacts there with it (Redis TTL), and in the object store at the
 * next sweep after it. One host sweeps per round.
 */
export class ArtifactSweeper {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly d: { store: ObjectArtifactStore; jobs: JobStore; redis: Redis; instance: string; log: Logger },
    private readonly intervalMs = ARTIFACT_SWEEP_MS,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep().catch((e: unknown) => this.d.log.warn({ err: e }, 'artifact sweep failed')), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One round, if no other host took it: the job ids whose artifacts were removed. */
  async sweep(): Promise<string[]> {
    const lock = await this.d.redis.set(`${this.d.jobs.keys.prefix}artifact-sweep`, this.d.instance, 'PX', this.intervalMs, 'NX');
    if (lock !== 'OK') return [];
    const gone = await this.d.store.sweep(async (id) => (await this.d.jobs.get(id)) !== null);
    if (gone.length) this.d.log.info({ jobs: gone.length }, 'artifacts of expired jobs removed from the object store');
    return gone;
  }
}
