import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startApi } from '../../api/server.js';
import { defaultRedisMaxmemory, redisServerArgs, startEmbeddedRedis } from '../../cli/embedded-redis.js';
import { apiDeps } from '../../cli/services.js';
import { parseEnv, redisMaxmemoryBytes, type ServiceConfig } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { createLogger } from '../../core/log.js';
import { connectRedis } from '../../core/redis.js';
import { ArtifactStore } from '../../core/store/artifacts.js';
import { host } from '../api/harness.js';
import { testServiceConfig } from '../helpers/cluster.js';
import { waitFor } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/**
 * Tenant "a" plays a tenant trying to exhaust what all tenants share (issue 11, item 5), against a
 * real API on a real port and a real redis-server; no worker (jobs stay queued unless a test moves
 * them the way a worker does). Every test also shows that tenant "b" is unaffected.
 */
const TOKENS = { a: 'abuse-token-a', b: 'abuse-token-b' } as const;
type Tenant = keyof typeof TOKENS;
type Problem = { code: string; detail: string; quota?: string; limit?: number };
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

interface Api {
  cfg: ServiceConfig;
  url: string;
  deps: Awaited<ReturnType<typeof apiDeps>>['deps'];
  call(path: string, init?: { as?: Tenant; method?: string; body?: unknown; headers?: Record<string, string> }): Promise<Response>;
  submit(body: object, as?: Tenant): Promise<Response>;
  stop(): Promise<void>;
}

let redis: TestRedis;
const apis: Api[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterEach(async () => {
  for (const a of apis.splice(0)) await a.stop();
});
afterAll(async () => {
  await redis?.stop();
});

/** An API process (fresh key prefix) on `r`, with config overrides; `urlFor` may pick its Redis URL. */
async function startApiOnly(over: Partial<ServiceConfig>, r: TestRedis = redis, urlFor?: (cfg: ServiceConfig) => Promise<string>): Promise<Api> {
  const cfg = await testServiceConfig(r, { apiTokens: `a=${TOKENS.a},b=${TOKENS.b}`, ...over });
  const abort = new AbortController();
  const built = await apiDeps(cfg, urlFor ? await urlFor(cfg) : r.url, createLogger((process.env.RUNBOX_TEST_LOG ?? 'silent') as 'silent'), abort.signal);
  const api = await startApi(built.deps, { host: '127.0.0.1', port: 0 });
  const call: Api['call'] = (path, init = {}) =>
    fetch(api.url + path, {
      method: init.method ?? 'GET',
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      headers: { authorization: `Bearer ${TOKENS[init.as ?? 'a']}`, 'content-type': 'application/json', ...init.headers },
    });
  const a: Api = {
    cfg,
    url: api.url,
    deps: built.deps,
    call,
    submit: (body, as = 'a') => call('/v1/jobs', { method: 'POST', body, as }),
    stop: async () => {
      abort.abort();
      await api.close();
      await built.close();
      await fs.rm(cfg.stateDir, { recursive: true, force: true });
    },
  };
  apis.push(a);
  return a;
}

const problem = async (res: Response) => (await res.json()) as Problem;

describe('queued work per tenant (RUNBOX_TENANT_MAX_QUEUED, RUNBOX_TENANT_MAX_QUEUED_BYTES)', () => {
  it('a burst of creates gets exactly the cap queued, atomically; the rest 429 quota_exceeded; b is unaffected; a slot comes back when a job leaves the queue', async () => {
    const api = await startApiOnly({ tenantMaxQueued: 5 });
    const burst = await Promise.all(Array.from({ length: 16 }, (_, i) => api.submit({ command: ['echo', String(i)] })));
    const accepted = burst.filter((r) => r.status === 201);
    const refused = burst.filter((r) => r.status === 429);
    expect([accepted.length, refused.length]).toEqual([5, 11]);
    const p = await problem(refused[0]!);
    expect(p).toMatchObject({ code: 'quota_exceeded', quota: 'queued_jobs', limit: 5 });
    expect(p.detail).toMatch(/already has 5 queued jobs.*RUNBOX_TENANT_MAX_QUEUED=5/);
    expect(refused[0]!.headers.get('content-type')).toBe('application/problem+json');
    expect(Number(refused[0]!.headers.get('retry-after'))).toBeGreaterThan(0);
    expect((await (await api.call('/v1/jobs?status=queued')).json()).jobs).toHaveLength(5);

    // The other tenant queues as usual.
    expect((await api.submit({ command: ['true'] }, 'b')).status).toBe(201);

    // A job that leaves `queued` (here: canceled) frees its place at once, exactly one.
    const first = (await accepted[0]!.json()) as Job;
    expect((await api.call(`/v1/jobs/${first.id}/cancel`, { method: 'POST' })).status).toBe(200);
    expect((await api.submit({ command: ['true'] })).status).toBe(201);
    expect((await api.submit({ command: ['true'] })).status).toBe(429);

    // So does one a worker takes (queued → starting), and one put back (starting → queued) counts again.
    const second = (await accepted[1]!.json()) as Job;
    await api.deps.jobs.transition(second.id, 'starting', { host: 'h1', attempt: 1 }, { host: 'h1' });
    expect(await api.deps.jobs.queuedUsage('a')).toMatchObject({ jobs: 4 });
    await api.deps.jobs.transition(second.id, 'queued', { host: null }, { from: ['starting'] });
    expect(await api.deps.jobs.queuedUsage('a')).toMatchObject({ jobs: 5 });
    expect((await api.submit({ command: ['true'] })).status).toBe(429);
  });

  it('queued bytes: big requests fill the byte cap, smaller ones still fit, b is unaffected', async () => {
    const cap = 100 * 1024;
    const api = await startApiOnly({ tenantMaxQueuedBytes: cap });
    const big = { command: ['cat'], stdin: 'x'.repeat(40 * 1024) };
    expect((await api.submit(big)).status).toBe(201);
    expect((await api.submit(big)).status).toBe(201);
    const third = await api.submit(big);
    expect(third.status).toBe(429);
    const p = await problem(third);
    expect(p).toMatchObject({ code: 'quota_exceeded', quota: 'queued_bytes', limit: cap });
    expect(p.detail).toMatch(/RUNBOX_TENANT_MAX_QUEUED_BYTES=102400/);
    expect((await api.submit({ command: ['cat'], stdin: 'small' })).status).toBe(201);
    // One request above the whole cap never fits.
    expect((await api.submit({ command: ['cat'], stdin: 'x'.repeat(cap) }, 'b')).status).toBe(429);
    expect((await api.submit(big, 'b')).status).toBe(201);
    expect((await api.deps.jobs.queuedUsage('a')).bytes).toBeGreaterThan(80 * 1024);
  });

  it('self-healing: an entry whose job record vanished (deleted by hand) does not hold the quota', async () => {
    const api = await startApiOnly({ tenantMaxQueued: 2 });
    const ids = [];
    for (let i = 0; i < 2; i++) ids.push(((await (await api.submit({ command: ['true'] })).json()) as Job).id);
    expect((await api.submit({ command: ['true'] })).status).toBe(429);
    await api.deps.redis.del(api.deps.jobs.keys.job(ids[0]!));
    expect((await api.submit({ command: ['true'] })).status).toBe(201);
    expect(await api.deps.jobs.queuedUsage('a')).toMatchObject({ jobs: 2 });
  });
});

describe('Redis out of memory (maxmemory, noeviction)', () => {
  it.each([
    ['25%', 25 * GIB],
    ['100%', 100 * GIB],
    ['0', 0],
    ['4294967296', 4 * GIB],
    ['512m', 512 * MIB],
    ['512MB', 512 * MIB],
    ['4GiB', 4 * GIB],
    ['64k', 64 * 1024],
  ])('RUNBOX_REDIS_MAXMEMORY=%s on a 100 GiB host is %d bytes', (raw, bytes) => {
    expect(redisMaxmemoryBytes(raw, 100 * GIB)).toBe(bytes);
    expect(parseEnv({ RUNBOX_REDIS_MAXMEMORY: raw }).RUNBOX_REDIS_MAXMEMORY).toBe(raw);
  });

  it.each(['0%', '101%', '-1', '1.5g', '12tb', 'lots', ''])('RUNBOX_REDIS_MAXMEMORY=%j is refused, naming the variable', (raw) => {
    expect(() => parseEnv({ RUNBOX_REDIS_MAXMEMORY: raw })).toThrow(/RUNBOX_REDIS_MAXMEMORY: bytes \(e\.g\./);
  });

  it("runbox up's Redis runs with maxmemory and noeviction (default 25 % of the RAM); a reused one is given them too", async () => {
    expect(redisServerArgs('/d', '/d/s.sock', { maxmemoryBytes: 123 })).toEqual(expect.arrayContaining(['--maxmemory', '123', '--maxmemory-policy', 'noeviction']));
    expect(defaultRedisMaxmemory()).toBe(Math.floor(os.totalmem() / 4));
    const state = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-emb-'));
    const started = await startEmbeddedRedis(state, { maxmemoryBytes: 64 * MIB, rdbSnapshots: false });
    const c = connectRedis(started.url);
    try {
      expect(await c.config('GET', 'maxmemory')).toEqual(['maxmemory', String(64 * MIB)]);
      expect(await c.config('GET', 'maxmemory-policy')).toEqual(['maxmemory-policy', 'noeviction']);
      // `runbox up` again while it still runs (a crashed runbox left it): reused, with the new limit.
      const reused = await startEmbeddedRedis(state, { maxmemoryBytes: 32 * MIB });
      expect(reused.child).toBeUndefined();
      expect(await c.config('GET', 'maxmemory')).toEqual(['maxmemory', String(32 * MIB)]);
    } finally {
      c.disconnect();
      await started.stop();
      await fs.rm(state, { recursive: true, force: true });
    }
  });

  it('creates against a full Redis answer 503 unavailable saying so, never leave half a job, and work again once there is room', async () => {
    const r = await startRedis(); // its own server: this test fills it
    try {
      const api = await startApiOnly({}, r);
      const admin = r.client();
      expect((await api.submit({ command: ['true'] }, 'b')).status).toBe(201);
      const used = Number(/used_memory:(\d+)/.exec(await admin.info('memory'))![1]);
      await admin.config('SET', 'maxmemory', String(used + 2 * 1024 * 1024));
      await admin.config('SET', 'maxmemory-policy', 'noeviction');

      const accepted: string[] = [];
      let refusal: Response | undefined;
      for (let i = 0; i < 40 && !refusal; i++) {
        const res = await api.submit({ command: ['cat'], stdin: 'y'.repeat(300 * 1024) });
        if (res.status === 201) accepted.push(((await res.json()) as Job).id);
        else refusal = res;
      }
      expect(refusal?.status).toBe(503);
      const p = await problem(refusal!);
      expect(p.code).toBe('unavailable');
      expect(p.detail).toMatch(/Redis is full.*Nothing of this request was stored.*RUNBOX_REDIS_MAXMEMORY/);
      expect(refusal!.headers.get('retry-after')).toBe('30');
      expect(accepted.length).toBeGreaterThan(0);
      // Reading still works while full (the rate limiter's counter cannot be written then).
      const read = await api.call(`/v1/jobs/${accepted[0]}`);
      expect(read.status).toBe(200);

      // Every job the tenant has is whole: record, request, history, queue entry, quota entry.
      const k = api.deps.jobs.keys;
      const indexed = await admin.zrange(k.tenantJobs('a'), 0, -1);
      expect(indexed.sort()).toEqual([...accepted].sort());
      for (const id of indexed) {
        expect(await admin.exists(k.job(id), k.request(id), k.history(id))).toBe(3);
        expect(await api.deps.queue.queue.getJob(id)).toBeTruthy();
      }
      expect(await api.deps.jobs.queuedUsage('a')).toMatchObject({ jobs: accepted.length });
      expect(Number(await admin.hget(k.statusCounts(), 'queued'))).toBe(accepted.length + 1);
      const jobKeys = (await admin.keys(`${k.job('')}*`)).filter((x) => !x.includes(':', k.job('').length));
      expect(jobKeys).toHaveLength(accepted.length + 1);

      // Room again: creating works again.
      await admin.config('SET', 'maxmemory', '0');
      expect((await api.submit({ command: ['true'] })).status).toBe(201);
    } finally {
      for (const a of apis.splice(0)) await a.stop();
      await r.stop();
    }
  });

  it('a create that got stored but could not be queued is undone (nothing left, 503), and the undo works while Redis refuses every write', async () => {
    const r = await startRedis();
    const admin = r.client();
    try {
      // An API whose Redis user may not touch the queue's keys (ACL): the job record is stored,
      // its enqueue refused, as when Redis fills up between the two.
      const limited = await startApiOnly({}, r, async (cfg) => {
        await admin.acl('SETUSER', 'no-queue', 'on', '>pw', `~${cfg.redisPrefix}[^b]*`, '&*', '+@all');
        return r.url.replace('redis://', 'redis://no-queue:pw@');
      });
      // (With an Idempotency-Key: the script's key list then names no empty key, which ACLs refuse.)
      const refused = await limited.call('/v1/jobs', { method: 'POST', body: { command: ['true'] }, headers: { 'idempotency-key': 'k1' } });
      expect(refused.status).toBe(503);
      expect((await problem(refused)).detail).toMatch(/could not be queued/);
      const kl = limited.deps.jobs.keys;
      expect(await admin.exists(kl.idempotency('a', 'k1'))).toBe(0); // a retry creates it afresh
      expect(await admin.zcard(kl.tenantJobs('a'))).toBe(0);
      expect(await admin.keys(`${kl.job('')}*`)).toEqual([]);
      expect((await (await limited.call('/v1/jobs')).json()).jobs).toEqual([]);
      expect(await limited.deps.jobs.queuedUsage('a')).toEqual({ jobs: 0, bytes: 0 });

      // The undo on a Redis that refuses every write that could grow it.
      const api = await startApiOnly({}, r);
      const id = ((await (await api.submit({ command: ['true'] })).json()) as Job).id;
      await api.deps.queue.queue.remove(id); // as if the enqueue had been refused
      await admin.config('SET', 'maxmemory', '1');
      await expect(admin.set('probe', 'x')).rejects.toThrow(/^OOM command not allowed/);
      // What the API did before (record the failure) is refused on a full Redis...
      await expect(api.deps.jobs.transition(id, 'failed', { finishedAt: new Date().toISOString() })).rejects.toThrow(/^OOM/);
      // ...the undo is not, and leaves nothing: no record, index entry, quota entry or count.
      expect(await api.deps.jobs.discard('a', id)).toBe(true);
      const k = api.deps.jobs.keys;
      expect(await admin.exists(k.job(id), k.request(id), k.history(id))).toBe(0);
      expect(await admin.zcard(k.tenantJobs('a'))).toBe(0);
      expect(await api.deps.jobs.queuedUsage('a')).toEqual({ jobs: 0, bytes: 0 });
      expect(Number(await admin.hget(k.statusCounts(), 'queued'))).toBe(0);
      await admin.config('SET', 'maxmemory', '0');
    } finally {
      for (const a of apis.splice(0)) await a.stop();
      await r.stop();
    }
  });
});

describe('artifact bytes per tenant (RUNBOX_TENANT_MAX_ARTIFACT_BYTES)', () => {
  it('a tenant cannot hold more than its budget in Redis; what does not fit is reported; b is unaffected; expired and deleted results give their bytes back', async () => {
    const api = await startApiOnly({});
    const budget = 1024 * 1024;
    // The store the worker writes artifacts through when a job ends, with a 1 MiB tenant budget.
    const store = new ArtifactStore(connectRedis(redis.url), api.cfg.redisPrefix, { tenantMaxBytes: budget });
    const kib = (n: number, fill = 'z') => Buffer.alloc(n * 1024, fill);
    const job = async (as: Tenant = 'a') => ((await (await api.submit({ command: ['true'], artifacts: ['/out/*'] }, as)).json()) as Job).id;
    try {
      const [j1, j2, j3, j4] = [await job(), await job(), await job(), await job()];
      expect(await store.put(j1, [{ path: '/out/big', content: kib(600) }])).toMatchObject({ storedBytes: 600 * 1024, skipped: [] });
      const second = await store.put(j2, [
        { path: '/out/too-big', content: kib(600) },
        { path: '/out/fits', content: kib(300) },
      ]);
      expect(second).toMatchObject({ storedBytes: 300 * 1024, tenantBytes: 900 * 1024, skipped: [{ path: '/out/too-big', size: 600 * 1024 }] });
      expect(await store.get(j2, '/out/too-big')).toBeNull();
      expect((await store.put(j3, [{ path: '/out/more', content: kib(200) }])).skipped).toHaveLength(1);
      expect(await store.tenantBytes('a')).toBe(900 * 1024);

      // Tenant b has a budget of its own.
      const b1 = await job('b');
      expect((await store.put(b1, [{ path: '/out/big', content: kib(900) }])).skipped).toEqual([]);

      // The stored files are served as before.
      await api.deps.jobs.update(j1, { artifacts: [{ path: '/out/big', size: 600 * 1024, mode: 0o644 }] });
      const dl = await api.call(`/v1/jobs/${j1}/artifacts/out/big`);
      expect([dl.status, (await dl.arrayBuffer()).byteLength]).toEqual([200, 600 * 1024]);
      expect((await api.call(`/v1/jobs/${j1}/artifacts/out/big`, { as: 'b' })).status).toBe(404);

      // j1's result expires (its TTL, set when it ended) → its 600 KiB come back.
      await api.deps.jobs.expire(j1, 1);
      await waitFor(async () => (await api.deps.redis.exists(api.deps.jobs.keys.artifacts(j1))) === 0, `j1's artifacts to expire`, 5000);
      expect((await store.put(j3, [{ path: '/out/more', content: kib(500) }])).skipped).toEqual([]);
      // A deleted result gives its bytes back too.
      expect((await store.put(j4, [{ path: '/out/x', content: kib(400) }])).skipped).toHaveLength(1);
      await api.deps.redis.del(api.deps.jobs.keys.artifacts(j2));
      expect((await store.put(j4, [{ path: '/out/x', content: kib(400) }])).skipped).toEqual([]);
      expect(await store.tenantBytes('a')).toBe(900 * 1024);
    } finally {
      store.redis.disconnect();
    }
  });
});

/** A request whose response stays open (a log follower); `destroy` cuts the TCP connection abruptly. */
function openStream(url: string, path: string, as: Tenant, accept: string): Promise<{ status: number; body: string; destroy(): void }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url + path, { headers: { authorization: `Bearer ${TOKENS[as]}`, accept } }, (res) => {
      const destroy = () => res.socket.resetAndDestroy();
      if (res.statusCode === 200) return resolve({ status: 200, body: '', destroy });
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, destroy }));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error(`no answer for ${path} within 5 s`)));
  });
}

describe('log followers per tenant (RUNBOX_TENANT_MAX_FOLLOWERS)', () => {
  it('SSE and ?follow=1 streams beyond the cap get 429 quota_exceeded; b can still follow; a client that vanishes frees its slot', async () => {
    const api = await startApiOnly({ tenantMaxFollowers: 3 });
    const id = ((await (await api.submit({ command: ['true'] })).json()) as Job).id; // stays queued: streams never end
    const idB = ((await (await api.submit({ command: ['true'] }, 'b')).json()) as Job).id;
    const open = [];
    try {
      open.push(await openStream(api.url, `/v1/jobs/${id}/logs?follow=1`, 'a', 'text/event-stream'));
      open.push(await openStream(api.url, `/v1/jobs/${id}/logs?follow=1&offset=0`, 'a', 'text/event-stream'));
      open.push(await openStream(api.url, `/v1/jobs/${id}/logs?follow=1`, 'a', 'text/plain'));
      expect(open.map((s) => s.status)).toEqual([200, 200, 200]);
      for (const accept of ['text/event-stream', 'text/plain']) {
        const over = await openStream(api.url, `/v1/jobs/${id}/logs?follow=1`, 'a', accept);
        expect(over.status).toBe(429);
        const p = JSON.parse(over.body) as Problem;
        expect(p).toMatchObject({ code: 'quota_exceeded', quota: 'followers', limit: 3 });
        expect(p.detail).toMatch(/already follows 3 log streams.*RUNBOX_TENANT_MAX_FOLLOWERS=3/);
      }
      // Reading the log without following is not a follower.
      expect((await api.call(`/v1/jobs/${id}/logs`)).status).toBe(200);
      // Tenant b is not affected.
      const b = await openStream(api.url, `/v1/jobs/${idB}/logs?follow=1`, 'b', 'text/event-stream');
      open.push(b);
      expect(b.status).toBe(200);

      // One of a's clients disappears without closing (TCP reset): its slot is freed.
      open.shift()!.destroy();
      let again: Awaited<ReturnType<typeof openStream>> | undefined;
      await waitFor(
        async () => {
          const s = await openStream(api.url, `/v1/jobs/${id}/logs?follow=1`, 'a', 'text/event-stream');
          if (s.status === 200) again = s;
          return s.status === 200;
        },
        'the slot of a vanished follower to be freed',
        5000,
      );
      open.push(again!);
    } finally {
      for (const s of open) s.destroy();
    }
  });
});

describe('checkpoint requests per job (RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC)', () => {
  it('a burst of checkpoint requests reaches the host once per interval, the rest 429 with Retry-After; b is unaffected', async () => {
    const api = await startApiOnly({ checkpointMinIntervalSec: 2 });
    // The host running the jobs: it takes 300 ms per checkpoint (CRIU) and counts what reaches it.
    const hostId = 'abuse-host';
    await api.deps.hosts.heartbeat(host(hostId), 60);
    const received: string[] = [];
    const sub = connectRedis(redis.url);
    const replies = connectRedis(redis.url);
    await sub.subscribe(api.deps.jobs.keys.hostCommands(hostId));
    sub.on('message', (_ch, raw: string) => {
      const cmd = JSON.parse(raw) as { op: string; jobId: string; reply: string };
      received.push(cmd.jobId);
      setTimeout(() => {
        const result = { id: `cp-${received.length}`, createdAt: new Date().toISOString(), sizeBytes: 1, outputOffset: 0 };
        void replies.lpush(api.deps.jobs.keys.reply(cmd.reply), JSON.stringify({ ok: true, result }));
      }, 300);
    });
    try {
      const running = async (as: Tenant) => {
        const id = ((await (await api.submit({ command: ['sleep', '60'] }, as)).json()) as Job).id;
        await api.deps.jobs.transition(id, 'starting', { host: hostId, attempt: 1 }, { host: hostId });
        await api.deps.jobs.transition(id, 'running', { startedAt: new Date().toISOString() }, { host: hostId });
        return id;
      };
      const [ja, jb] = [await running('a'), await running('b')];
      const cp = (id: string, as: Tenant = 'a') => api.call(`/v1/jobs/${id}/checkpoint`, { method: 'POST', as });

      const burst = await Promise.all(Array.from({ length: 12 }, () => cp(ja)));
      expect(burst.map((r) => r.status).sort()).toEqual([201, ...Array(11).fill(429)]);
      const refused = burst.find((r) => r.status === 429)!;
      const p = await problem(refused);
      expect(p.code).toBe('rate_limited');
      expect(p.detail).toMatch(/at most one checkpoint request per 2 s per job \(RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC\)/);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // Tenant b's job is checkpointed meanwhile; a's job stays refused right after its checkpoint.
      expect((await cp(jb, 'b')).status).toBe(201);
      const soon = await cp(ja);
      expect(soon.status).toBe(429);
      expect(received.filter((j) => j === ja)).toHaveLength(1);

      // After the floor, the next one goes through: a floor, not a ban.
      await new Promise((res) => setTimeout(res, Number(soon.headers.get('retry-after')) * 1000 + 100));
      expect((await cp(ja)).status).toBe(201);
      expect(received.filter((j) => j === ja)).toHaveLength(2);
    } finally {
      sub.disconnect();
      replies.disconnect();
    }
  });
});
