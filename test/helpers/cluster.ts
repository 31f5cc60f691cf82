import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { serviceConfigFromEnv, type ServiceConfig } from '../../core/config.js';
import { newId } from '../../core/ids.js';
import { isTerminal, JobRequestSchema, type Job, type JobRequestInput } from '../../core/job.js';
import { submitJob } from '../../core/submit.js';
import { createLogger } from '../../core/log.js';
import { JobQueue } from '../../core/queue.js';
import { connectRedis, connectSubscriber } from '../../core/redis.js';
import { JobEvents } from '../../core/store/events.js';
import { JobStore } from '../../core/store/jobs.js';
import { LogStore } from '../../core/store/logs.js';
import { gc } from '../../runtime/gc.js';
import { RuncEngine } from '../../runtime/runc-engine.js';
import { startWorker, type WorkerHandle } from '../../worker/main.js';
import { TEMPLATES_DIR } from './engine.js';
import type { TestRedis } from './redis.js';

let subnet = 0;

/** A service config for tests: own state dir, own Redis prefix, own /24, small pools. */
export async function testServiceConfig(redis: TestRedis, overrides: Partial<ServiceConfig> = {}): Promise<ServiceConfig> {
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-svc-'));
  const k = (process.pid * 13 + subnet++) % 12800;
  const cfg = serviceConfigFromEnv(
    {
      RUNBOX_STATE_DIR: stateDir,
      RUNBOX_NET_CIDR: `10.${200 + Math.floor(k / 256) % 50}.${k % 256}.0/24`,
      RUNBOX_REDIS_URL: redis.url,
      RUNBOX_REDIS_PREFIX: redis.prefix(),
      RUNBOX_POOL_MIN_IDLE: '1',
      RUNBOX_LOG_LEVEL: 'silent',
      RUNBOX_RUNTIME: process.env.RUNBOX_RUNTIME ?? 'auto',
      RUNBOX_USERNS: process.env.RUNBOX_USERNS ?? 'auto',
    },
    `host-${newId(3)}`,
  );
  return { ...cfg, ...overrides };
}

export async function startTestWorker(cfg: ServiceConfig, redisUrl: string, extra: { hostId?: string } = {}): Promise<WorkerHandle> {
  return startWorker({
    config: { ...cfg, hostId: extra.hostId ?? cfg.hostId },
    redisUrl,
    log: createLogger(process.env.RUNBOX_TEST_LOG ?? 'silent'),
    templatesDir: TEMPLATES_DIR,
    lockDurationMs: 3000,
    stalledIntervalMs: 1000,
    warmBeforeStart: true,
  });
}

/** Submits jobs the way the API does (stores + queue), for worker tests without HTTP. */
export class Submitter {
  readonly redis;
  readonly jobs: JobStore;
  readonly logs: LogStore;
  readonly queue: JobQueue;
  readonly events: JobEvents;
  constructor(
    readonly cfg: ServiceConfig,
    url: string,
  ) {
    this.redis = connectRedis(url);
    this.jobs = new JobStore(this.redis, cfg.redisPrefix);
    this.logs = new LogStore(this.redis, cfg.redisPrefix);
    this.queue = new JobQueue(this.redis, cfg.redisPrefix);
    this.events = new JobEvents(connectSubscriber(url), cfg.redisPrefix);
  }

  async submit(input: JobRequestInput, tenant = 'default'): Promise<string> {
    const { job } = await submitJob({ jobs: this.jobs, queue: this.queue, limits: this.cfg }, { tenant, request: JobRequestSchema.parse(input) });
    return job.id;
  }

  async wait(id: string, timeoutMs = 30_000): Promise<Job> {
    await this.events.waitTerminal(id, timeoutMs, async () => (await this.jobs.get(id))?.job.status ?? null);
    const j = (await this.jobs.get(id))!.job;
    if (!isTerminal(j.status)) throw new Error(`job ${id} still ${j.status} after ${timeoutMs} ms`);
    return j;
  }

  async output(id: string): Promise<string> {
    return (await this.logs.text(id)).toString();
  }

  async close(): Promise<void> {
    await this.queue.close();
    await this.events.close();
    this.redis.disconnect();
  }
}

/** Removes everything of a test's instance, also when its worker never finished starting. */
export async function removeState(cfg: ServiceConfig, engine?: WorkerHandle['engine']): Promise<void> {
  const e =
    engine ??
    new RuncEngine({ stateDir: cfg.stateDir, runcPath: cfg.runcPath, crunPath: cfg.crunPath, runtime: cfg.runtime, userns: cfg.userns, agentPath: cfg.agentPath, netCidr: cfg.netCidr, log: createLogger('silent') });
  await gc(e, { all: true });
  await fs.rm(cfg.stateDir, { recursive: true, force: true });
}
