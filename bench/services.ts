import fs from 'node:fs/promises';
import { destination, pino, type Logger } from 'pino';
import { serviceConfigFromEnv, type ServiceConfig } from '../core/config.js';
import { newId } from '../core/ids.js';
import { isTerminal, JobRequestSchema, type JobRequestInput, type JobStatus } from '../core/job.js';
import { submitJob } from '../core/submit.js';
import { JobQueue } from '../core/queue.js';
import { connectRedis } from '../core/redis.js';
import { startEmbeddedRedis } from '../cli/embedded-redis.js';
import { JobEvents } from '../core/store/events.js';
import { JobStore } from '../core/store/jobs.js';
import { startWorker, type WorkerHandle } from '../worker/main.js';
import { note, now, TEMPLATES_DIR, type BenchContext } from './lib.js';

/**
 * Services for the queue benchmarks, started the way `runbox up` starts them (cli/services.ts):
 * a redis-server with `runbox up`'s settings, a worker via startWorker in this process, the API
 * via startApi with apiDeps. Each registers its own cleanup with the context, so the context's
 * cleanup stops them (API, worker, Redis: reverse order) before its gc and leak checks.
 */

export interface BenchRedis {
  url: string;
  pid: number;
  /** A fresh key prefix (each worker configuration gets its own queue and records). */
  prefix(): string;
}

/**
 * The redis-server `runbox up` embeds (unix socket only, append-only file), without RDB snapshots
 * so their forks do not disturb the measurements; stopped by ctx.cleanup().
 */
export async function startBenchRedis(ctx: BenchContext): Promise<BenchRedis> {
  const redis = await startEmbeddedRedis(ctx.stateDir, { rdbSnapshots: false });
  if (!redis.child) throw new Error(`a redis-server is already running in ${ctx.stateDir}`);
  ctx.track('redis-server', redis.child);
  ctx.defer('redis-server', () => redis.stop());
  let n = 0;
  return { url: redis.url, pid: redis.child.pid!, prefix: () => `bench${n++}:` };
}

export interface ServiceKnobs {
  workerConcurrency: number;
  poolMinIdle: number;
  poolMax: number;
  /** The pools' refill concurrency (startWorker has no setting: set on its pools once warm); unset: VpsPool's default. */
  refillConcurrency?: number;
}

/**
 * A service config like `runbox up` builds from its environment, on the context's state dir and
 * address range (so the context's gc and leak checks cover the worker's VPSs too). Tenant slots
 * and the API's rate limit are raised so that neither throttles a single-tenant benchmark.
 */
export function benchServiceConfig(ctx: BenchContext, redis: BenchRedis, knobs: ServiceKnobs): ServiceConfig {
  const cfg = serviceConfigFromEnv(
    {
      RUNBOX_STATE_DIR: ctx.stateDir,
      RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
      RUNBOX_NET_CIDR: ctx.netCidr,
      RUNBOX_REDIS_URL: redis.url,
      RUNBOX_REDIS_PREFIX: redis.prefix(),
      RUNBOX_POOLS: 'base:none',
      RUNBOX_POOL_MIN_IDLE: String(knobs.poolMinIdle),
      RUNBOX_POOL_MAX: String(knobs.poolMax),
      RUNBOX_WORKER_CONCURRENCY: String(knobs.workerConcurrency),
      RUNBOX_TENANT_CONCURRENCY: '1000',
      RUNBOX_RATE_LIMIT_PER_SEC: '100000',
      RUNBOX_API_TOKENS: `bench=${newId(16)}`,
      RUNBOX_LOG_LEVEL: 'warn',
      // An ephemeral port for the worker's migration receiver (a fixed one would clash with any
      // other worker on this machine).
      RUNBOX_MIGRATION_PORT: '0',
    },
    `bench-${newId(4)}`,
  );
  return cfg;
}

/** Warnings and errors of the services reach stderr; info lines are dropped (level `warn`). */
export function serviceLogger(): Logger {
  return pino({ name: 'runbox-bench-svc', level: process.env.RUNBOX_BENCH_LOG ?? 'warn', base: null }, destination(2));
}

/** startWorker as `runbox up` calls it, but warm before taking jobs; closed by ctx.cleanup() at the latest. */
export async function startBenchWorker(ctx: BenchContext, cfg: ServiceConfig, knobs: ServiceKnobs): Promise<WorkerHandle> {
  const w = await startWorker({
    config: cfg,
    redisUrl: cfg.redisUrl!,
    log: serviceLogger(),
    templatesDir: TEMPLATES_DIR,
    warmBeforeStart: true,
  });
  ctx.defer(`worker ${cfg.hostId}`, () => w.close());
  // startWorker has no setting for it: later refills of the (already warm) pools use this value.
  if (knobs.refillConcurrency !== undefined) for (const p of w.pools) p.opts.refillConcurrency = knobs.refillConcurrency;
  return w;
}

/**
 * Submits jobs the way the API does (core/submit.ts submitJob, as test/helpers/cluster.ts Submitter) and records when each reaches a terminal status (from the status events).
 */
export class BenchSubmitter {
  private readonly redis;
  readonly jobs: JobStore;
  readonly queue: JobQueue;
  readonly events: JobEvents;
  /** Job id → performance.now() at its terminal event, and that status. */
  readonly done = new Map<string, { at: number; status: JobStatus }>();
  private readonly unwatch: Array<() => void> = [];
  private waiters: Array<() => void> = [];

  constructor(
    readonly cfg: ServiceConfig,
    url: string,
  ) {
    this.redis = connectRedis(url);
    this.jobs = new JobStore(this.redis, cfg.redisPrefix);
    this.queue = new JobQueue(this.redis, cfg.redisPrefix);
    this.events = new JobEvents(connectRedis(url), cfg.redisPrefix);
  }

  async submit(input: JobRequestInput, tenant = 'bench'): Promise<string> {
    // The id is known only once stored: a terminal status published before the watch is
    // registered is caught by the record check right after it.
    const { job } = await submitJob({ jobs: this.jobs, queue: this.queue, limits: this.cfg }, { tenant, request: JobRequestSchema.parse(input) });
    const id = job.id;
    const finished = (s: JobStatus) => {
      if (isTerminal(s) && !this.done.has(id)) {
        this.done.set(id, { at: now(), status: s });
        for (const w of this.waiters.splice(0)) w();
      }
    };
    this.unwatch.push(await this.events.watch(id, finished));
    const stored = await this.jobs.get(id);
    if (stored) finished(stored.job.status);
    return id;
  }

  /** Resolves when `count` jobs are done or `timeoutMs` passed (then the caller counts what is missing). */
  async waitDone(count: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.done.size < count && Date.now() < deadline) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, 1000);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async close(): Promise<void> {
    for (const u of this.unwatch.splice(0)) u();
    await this.queue.close();
    await this.events.close();
    this.redis.disconnect();
  }
}

/** Busy CPU time of the whole machine since boot, in ms (user+nice+system+irq+softirq+steal). */
export async function cpuBusyMs(): Promise<number> {
  const line = (await fs.readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + (f[7] ?? 0);
  return (busy * 1000) / 100; // USER_HZ is 100 on Linux
}

/**
 * CPU time of this process and of its reaped children (runc, mount, cp, ...), in ms: what the
 * host-side tool chain costs, without neighbours' load. Not included: a VPS's own processes
 * (runc's container init and the agent are reparented away from runc) and kernel worker threads.
 */
export async function ownCpuMs(): Promise<number> {
  const c = await processCpuMs('self');
  return c.self + c.children;
}

/** utime+stime of a process, and cutime+cstime of its reaped children, in ms (proc(5) fields 14-17). */
export async function processCpuMs(pid: number | 'self'): Promise<{ self: number; children: number }> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  // Clock ticks, USER_HZ = 100.
  return { self: (f[11]! + f[12]!) * 10, children: (f[13]! + f[14]!) * 10 };
}

export { note };
