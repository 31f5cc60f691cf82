import { newId } from '../core/ids.js';
import type { Logger } from '../core/log.js';
import type { PoolState } from '../core/store/hosts.js';
import type { NetworkMode } from './net/network.js';
import type { RuncEngine } from './runc-engine.js';
import type { RuncVps } from './runc-vps.js';
import type { TemplateRef } from './templates/store.js';
import type { VpsSpec } from './vps.js';

/**
 * How long a refill waits after a warm acquire: longer than a job's start on a warm VPS (limits,
 * hostname, files: a few ms), short next to a create (~50-90 ms).
 */
const REFILL_DELAY_MS = 20;

/**
 * Two creations at a time: a create waits on helper processes and the kernel for part of its time,
 * so one alone leaves the CPUs idle. On the 2-core dev VM (docs/BENCHMARKS.md) an empty pool
 * refills at ~26 VPS/s instead of ~13 (3 adds nothing more), and sustained throughput did not get
 * worse (the difference was within the noise of the shared machine).
 */
export const DEFAULT_REFILL_CONCURRENCY = 2;

export interface PoolOptions {
  template: TemplateRef;
  network: NetworkMode;
  /** Size of the writable layer of pooled VPSs (a job asking for another size gets a cold VPS). */
  diskMb: number;
  /** Generous creation-time limits; a job's own limits are written into the cgroup on acquire. */
  memoryMb: number;
  cpus: number;
  pids: number;
  minIdle: number;
  maxSize: number;
  /** Concurrent background creations (default DEFAULT_REFILL_CONCURRENCY); kept low so refills do not starve running jobs. */
  refillConcurrency?: number;
}

/**
 * A warm pool of ready VPSs for one (template, network mode): rootfs layer mounted, cgroup made,
 * network configured, agent waiting for a job. A VPS leaves the pool for exactly one job and is
 * destroyed after it; the pool refills in the background. An empty pool never fails a job: the job
 * gets a VPS created on the spot (cold), it only waits longer.
 */
export class VpsPool {
  private readonly idle: RuncVps[] = [];
  private creating = 0;
  private inUse = 0;
  private created = 0;
  private createMsTotal = 0;
  private closed = false;
  private refilling?: Promise<void>;

  constructor(
    readonly opts: PoolOptions,
    private readonly engine: RuncEngine,
    private readonly log: Logger,
  ) {}

  matches(template: string, network: NetworkMode, diskMb: number): boolean {
    return this.opts.template.name === template && this.opts.network === network && this.opts.diskMb === diskMb;
  }

  /** A ready VPS: from the pool when one is idle, else created now. */
  async acquire(): Promise<{ vps: RuncVps; warm: boolean }> {
    this.inUse++;
    const vps = this.idle.shift();
    // While VPSs are still idle, the replacement can wait a moment: started at once, its create
    // (process spawns block the event loop, mounts, runc) competes with this job's own start and
    // made it ~4x slower (bench/pool.ts, acquire → `started` p50 10.1 ms instead of 2.7 ms).
    // A pool that ran dry refills at once.
    if (this.idle.length > 0) this.refillSoon();
    else this.refill();
    if (vps) return { vps, warm: true };
    try {
      return { vps: await this.createOne(), warm: false };
    } catch (e) {
      this.inUse--;
      throw e;
    }
  }

  /** The job is done with its VPS: destroy it (never reused) and refill. */
  async release(vps: RuncVps): Promise<void> {
    this.inUse--;
    try {
      await this.engine.destroy(vps.id);
    } finally {
      this.refill();
    }
  }

  state(): PoolState {
    return {
      template: this.opts.template.name,
      network: this.opts.network,
      diskMb: this.opts.diskMb,
      idle: this.idle.length,
      creating: this.creating,
      inUse: this.inUse,
      minIdle: this.opts.minIdle,
      maxSize: this.opts.maxSize,
      created: this.created,
      createMsAvg: this.created ? Math.round(this.createMsTotal / this.created) : 0,
    };
  }

  /** Starts background creation until minIdle VPSs are idle (bounded by maxSize in total). */
  refill(): void {
    if (this.closed || this.refilling) return;
    this.refilling = this.refillLoop().finally(() => {
      this.refilling = undefined;
      if (!this.closed && this.needsMore()) setTimeout(() => this.refill(), 1000).unref(); // retry after a failure
    });
  }

  private refillTimer?: NodeJS.Timeout;

  /** refill() after REFILL_DELAY_MS, once (a pending call covers later ones). */
  private refillSoon(): void {
    if (this.closed || this.refilling || this.refillTimer) return;
    this.refillTimer = setTimeout(() => {
      this.refillTimer = undefined;
      this.refill();
    }, REFILL_DELAY_MS);
    this.refillTimer.unref();
  }

  /** Resolves once the pool holds minIdle idle VPSs (for start-up and tests). */
  async warm(): Promise<void> {
    while (!this.closed && this.needsMore()) {
      this.refill();
      await this.refilling;
    }
  }

  private needsMore(): boolean {
    const total = this.idle.length + this.creating + this.inUse;
    return this.idle.length + this.creating < this.opts.minIdle && total < this.opts.maxSize;
  }

  private async refillLoop(): Promise<void> {
    const workers = Array.from({ length: this.opts.refillConcurrency ?? DEFAULT_REFILL_CONCURRENCY }, async () => {
      while (!this.closed && this.needsMore()) {
        const vps = await this.createOne().catch((e: unknown) => {
          this.log.warn({ err: e, template: this.opts.template.name }, 'pool refill failed');
          return undefined;
        });
        if (!vps) return;
        if (this.closed) await this.engine.destroy(vps.id);
        else this.idle.push(vps);
      }
    });
    await Promise.all(workers);
  }

  private async createOne(): Promise<RuncVps> {
    this.creating++;
    const t0 = performance.now();
    try {
      const id = newId();
      const spec: VpsSpec = {
        template: this.opts.template,
        hostname: `vps-${id.slice(0, 8)}`,
        network: this.opts.network,
        memoryMb: this.opts.memoryMb,
        cpus: this.opts.cpus,
        pids: this.opts.pids,
        diskMb: this.opts.diskMb,
      };
      const vps = await this.engine.create(id, spec);
      this.created++;
      this.createMsTotal += performance.now() - t0;
      return vps;
    } finally {
      this.creating--;
    }
  }

  /** Destroys idle VPSs and stops refilling; VPSs in use are released by their jobs. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.refillTimer);
    this.refillTimer = undefined;
    await this.refilling;
    const idle = this.idle.splice(0);
    await Promise.all(idle.map((v) => this.engine.destroy(v.id)));
  }
}
