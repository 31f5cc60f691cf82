import { pino } from 'pino';
import type { Hono } from 'hono';
import { createApp } from '../../api/app.js';
import { TokenAuth } from '../../api/auth.js';
import type { ApiConfig, ApiDeps, ApiEnv } from '../../api/deps.js';
import type { Job, JobRequestInput } from '../../core/job.js';
import { JobQueue } from '../../core/queue.js';
import { ArtifactStore } from '../../core/store/artifacts.js';
import { JobEvents } from '../../core/store/events.js';
import { HostRegistry, type Host } from '../../core/store/hosts.js';
import { JobStore } from '../../core/store/jobs.js';
import { LogStore } from '../../core/store/logs.js';
import type { TestRedis } from '../helpers/redis.js';

/** Tenants a and b (role user); `admin` is tenant "ops" with the admin role. */
export const TOKENS = { a: 'token-of-tenant-a', b: 'token-of-tenant-b', admin: 'token-of-admin-ops' } as const;
export type Tenant = keyof typeof TOKENS;
export const TENANT_OF: Record<Tenant, string> = { a: 'a', b: 'b', admin: 'ops' };

export const TEST_CONFIG: Omit<ApiConfig, 'redisPrefix'> = {
  defaultLimits: { memoryMb: 128, cpus: 1, pids: 64, diskMb: 64, timeoutSec: 30, outputBytes: 1 << 20 },
  maxLimits: { memoryMb: 1024, cpus: 2, pids: 1024, diskMb: 512, timeoutSec: 600, outputBytes: 8 << 20 },
  maxBodyBytes: 64 * 1024,
  rateLimitPerSec: 10_000,
  resultTtlSec: 3600,
};

export interface Harness {
  app: Hono<ApiEnv>;
  deps: ApiDeps;
  /** app.request with tenant `as`'s token (null: no Authorization header). */
  call(path: string, init?: RequestInit & { as?: Tenant | null }): Promise<Response>;
  /** POST /v1/jobs as tenant `as`, expecting success; returns the job. */
  create(body: JobRequestInput, as?: Tenant): Promise<Job>;
  close(): Promise<void>;
}

/** The API wired to fresh stores under a unique prefix of the test's redis-server. */
export function harness(redis: TestRedis, over: Omit<Partial<ApiDeps>, 'config'> & { config?: Partial<ApiConfig> } = {}): Harness {
  const prefix = redis.prefix();
  const conn = redis.client();
  const sub = redis.client();
  const queue = new JobQueue(conn, prefix);
  const events = new JobEvents(sub, prefix);
  const deps: ApiDeps = {
    jobs: new JobStore(conn, prefix),
    logs: new LogStore(conn, prefix),
    artifacts: new ArtifactStore(conn, prefix),
    hosts: new HostRegistry(conn, prefix),
    events,
    queue,
    tokens: new TokenAuth((Object.keys(TOKENS) as Tenant[]).map((k) => ({ tenant: TENANT_OF[k], token: TOKENS[k], role: k === 'admin' ? ('admin' as const) : ('user' as const) }))),
    redis: conn,
    log: pino({ level: 'silent' }),
    knownTemplates: async () => ['base', 'python'],
    sse: { pollMs: 20, heartbeatMs: 15_000 },
    ...over,
    config: { ...TEST_CONFIG, redisPrefix: prefix, ...over.config },
  };
  const app = createApp(deps);
  const call = (path: string, init: RequestInit & { as?: Tenant | null } = {}) => {
    const { as = 'a', ...rest } = init;
    const headers = new Headers(rest.headers);
    if (as) headers.set('Authorization', `Bearer ${TOKENS[as]}`);
    return Promise.resolve(app.request(path, { ...rest, headers }));
  };
  return {
    app,
    deps,
    call,
    create: async (body, as = 'a') => {
      const res = await call('/v1/jobs', { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' }, as });
      if (res.status !== 201) throw new Error(`create: expected 201, got ${res.status}: ${await res.text()}`);
      return (await res.json()) as Job;
    },
    close: async () => {
      // BullMQ readies its connection in the background (version check): a test that never used the
      // queue must not disconnect under that pending command (an unhandled "Connection is closed").
      await queue.queue.waitUntilReady().catch(() => undefined);
      await queue.close();
      await events.close();
      conn.disconnect();
    },
  };
}

export const postJson = (body: unknown, headers: Record<string, string> = {}): RequestInit => ({
  method: 'POST',
  body: typeof body === 'string' ? body : JSON.stringify(body),
  headers: { 'Content-Type': 'application/json', ...headers },
});

/** What a worker does to a job, through the same stores. */
export const worker = {
  async start(deps: ApiDeps, id: string, host = 'host-1'): Promise<void> {
    await deps.jobs.transition(id, 'starting', { host, attempt: 1 }, { host });
    await deps.jobs.transition(id, 'running', { startedAt: new Date().toISOString() }, { host });
  },
  async output(deps: ApiDeps, id: string, chunks: Array<[stream: 'stdout' | 'stderr', data: string]>, from = 0): Promise<number> {
    let offset = from;
    const out = chunks.map(([stream, data]) => {
      const c = { stream, data: Buffer.from(data), offset };
      offset += c.data.length;
      return c;
    });
    await deps.logs.append(id, out);
    await deps.jobs.update(id, { outputBytes: offset });
    return offset;
  },
  async finish(deps: ApiDeps, id: string, exitCode = 0): Promise<void> {
    await deps.jobs.transition(id, exitCode === 0 ? 'succeeded' : 'failed', { exitCode, finishedAt: new Date().toISOString() });
  },
};

export function host(id: string, over: Partial<Host> = {}): Host {
  const now = new Date().toISOString();
  return {
    id,
    address: '127.0.0.1',
    startedAt: now,
    heartbeatAt: now,
    draining: false,
    running: 1,
    capacity: 8,
    pools: [{ template: 'base', network: 'none', diskMb: 256, idle: 2, creating: 1, inUse: 1, minIdle: 2, maxSize: 16, created: 7, createMsAvg: 41.5 }],
    templates: [{ name: 'base', hash: 'sha256:abc' }],
    version: '0.1.0',
    ...over,
  };
}
