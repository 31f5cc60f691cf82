import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Job } from '../../core/job.js';
import { recordHistogram } from '../../core/store/metrics.js';
import { freePort } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { harness, host, postJson, worker, type Harness } from './harness.js';

let redis: TestRedis;
let h: Harness;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});
beforeEach(() => {
  h = harness(redis);
});
afterEach(async () => {
  await h.close();
});

describe('artifacts', () => {
  it('lists and downloads the collected files', async () => {
    const job = await h.create({ command: ['true'], artifacts: ['/out/*'] });
    await worker.start(h.deps, job.id);
    const bin = Buffer.from([0, 1, 2, 255]);
    await h.deps.artifacts.put(job.id, [
      { path: '/out/result.txt', content: Buffer.from('42\n') },
      { path: '/out/sub dir/data.bin', content: bin },
    ]);
    await h.deps.jobs.update(job.id, {
      artifacts: [
        { path: '/out/result.txt', size: 3, mode: 0o644 },
        { path: '/out/sub dir/data.bin', size: 4, mode: 0o600 },
      ],
      artifactsTruncated: true,
    });
    await worker.finish(h.deps, job.id);

    const list = await h.call(`/v1/jobs/${job.id}/artifacts`);
    expect(await list.json()).toEqual({
      artifacts: [
        { path: '/out/result.txt', size: 3, mode: 0o644 },
        { path: '/out/sub dir/data.bin', size: 4, mode: 0o600 },
      ],
      truncated: true,
    });

    const one = await h.call(`/v1/jobs/${job.id}/artifacts/out/result.txt`);
    expect(one.status).toBe(200);
    expect(one.headers.get('content-type')).toBe('application/octet-stream');
    expect(one.headers.get('content-disposition')).toContain('filename="result.txt"');
    expect(await one.text()).toBe('42\n');
    const two = await h.call(`/v1/jobs/${job.id}/artifacts/out/sub%20dir/data.bin`);
    expect(Buffer.from(await two.arrayBuffer())).toEqual(bin);

    const missing = await h.call(`/v1/jobs/${job.id}/artifacts/out/nope.txt`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { code: string }).code).toBe('not_found');
  });
});

describe('hosts and templates', () => {
  it('lists live hosts and aggregates templates with known recipes', async () => {
    await h.deps.hosts.heartbeat(
      host('h2', { templates: [{ name: 'base', hash: 'sha256:abc' }, { name: 'extra', hash: 'sha256:def', sizeBytes: 1234, builtAt: '2025-01-02T03:04:05Z' }] }),
      30,
    );
    await h.deps.hosts.heartbeat(host('h1'), 30);
    const hosts = (await (await h.call('/v1/hosts', { as: 'admin' })).json()) as { hosts: Array<{ id: string; pools: unknown[] }> };
    expect(hosts.hosts.map((x) => x.id)).toEqual(['h1', 'h2']);
    expect(hosts.hosts[0]).toMatchObject({ address: '127.0.0.1', draining: false, running: 1, capacity: 8, pools: [{ template: 'base', idle: 2 }] });
    // A tenant's token sees the same hosts without where they are (test/security/authz.test.ts).
    const mine = (await (await h.call('/v1/hosts')).json()) as { hosts: Array<Record<string, unknown>> };
    expect(mine.hosts.map((x) => x.id)).toEqual(['h1', 'h2']);
    expect(mine.hosts[0]).toMatchObject({ draining: false, running: 1, capacity: 8, pools: [{ template: 'base', idle: 2 }] });
    expect(mine.hosts[0]).not.toHaveProperty('address');

    const t = await (await h.call('/v1/templates')).json();
    expect(t).toEqual({
      templates: [
        {
          name: 'base',
          hosts: ['h1', 'h2'],
          hash: 'sha256:abc',
          sizeBytes: null,
          builtAt: null,
          versions: [{ hash: 'sha256:abc', hosts: ['h1', 'h2'], sizeBytes: null, builtAt: null }],
        },
        {
          name: 'extra',
          hosts: ['h2'],
          hash: 'sha256:def',
          sizeBytes: 1234,
          builtAt: '2025-01-02T03:04:05Z',
          versions: [{ hash: 'sha256:def', hosts: ['h2'], sizeBytes: 1234, builtAt: '2025-01-02T03:04:05Z' }],
        },
        { name: 'python', hosts: [], hash: null, sizeBytes: null, builtAt: null, versions: [] },
      ],
    });
  });
});

describe('health, readiness, metrics', () => {
  it('healthz always answers, without auth', async () => {
    const res = await h.call('/healthz', { as: null });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it('readyz needs Redis and a heartbeating host', async () => {
    const down = await h.call('/readyz', { as: null });
    expect(down.status).toBe(503);
    const p = (await down.json()) as { code: string; detail: string };
    expect(p.code).toBe('unavailable');
    expect(p.detail).toMatch(/no worker host/);
    await h.deps.hosts.heartbeat(host('h1'), 30);
    const up = await h.call('/readyz', { as: null });
    expect(up.status).toBe(200);
    expect(await up.json()).toEqual({ ok: true, redis: true, hosts: 1 });
  });

  it('readyz answers 503 promptly when Redis does not', async () => {
    const dead = new Redis(`redis://127.0.0.1:${await freePort()}`, { maxRetriesPerRequest: null, lazyConnect: true, retryStrategy: () => 200 });
    dead.on('error', () => {}); // refused connections are the point
    const hh = harness(redis, { redis: dead });
    try {
      const t0 = Date.now();
      const res = await hh.call('/readyz', { as: null });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { detail: string }).detail).toMatch(/^Redis does not answer/);
      expect(Date.now() - t0).toBeLessThan(4000);
    } finally {
      dead.disconnect();
      await hh.close();
    }
  });

  it('metrics expose queue, jobs, pools and histograms in text format 0.0.4', async () => {
    await h.deps.hosts.heartbeat(host('h1'), 30);
    const a = await h.create({ command: ['true'] });
    await h.create({ command: ['true'] });
    await worker.start(h.deps, a.id);
    await worker.finish(h.deps, a.id);
    await recordHistogram(h.deps.redis, h.deps.jobs.keys, 'job_queue_seconds', 0.003);
    await recordHistogram(h.deps.redis, h.deps.jobs.keys, 'job_queue_seconds', 0.2);
    const res = await h.call('/metrics', { as: 'admin' }); // who else may read it: test/security/authz.test.ts
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const text = await res.text();
    expect(text).toContain('# TYPE runbox_queue_jobs gauge');
    expect(text).toMatch(/^runbox_queue_jobs\{state="waiting"\} 2$/m); // BullMQ still holds both: no worker ran
    expect(text).toMatch(/^runbox_jobs\{status="queued"\} 1$/m);
    expect(text).toMatch(/^runbox_jobs\{status="succeeded"\} 1$/m);
    expect(text).toMatch(/^runbox_hosts 1$/m);
    expect(text).toMatch(/^runbox_pool_vps\{host="h1",template="base",network="none",state="idle"\} 2$/m);
    expect(text).toMatch(/^runbox_vps_create_ms_avg\{host="h1",template="base",network="none"\} 41.5$/m);
    expect(text).toMatch(/^runbox_job_queue_seconds_bucket\{le="0.005"\} 1$/m);
    expect(text).toMatch(/^runbox_job_queue_seconds_bucket\{le="0.25"\} 2$/m);
    expect(text).toMatch(/^runbox_job_queue_seconds_bucket\{le="\+Inf"\} 2$/m);
    expect(text).toMatch(/^runbox_job_queue_seconds_count 2$/m);
    expect(text).toMatch(/^runbox_job_run_seconds_count 0$/m);
    for (const line of text.trimEnd().split('\n')) {
      expect(line, line).toMatch(/^(# (HELP|TYPE) \w+ .+|[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? [-+0-9.eInfNa]+)$/);
    }
  });
});

describe('openapi and docs', () => {
  it('serves an OpenAPI 3.1 document generated from the schemas', async () => {
    const res = await h.call('/openapi.json', { as: null });
    expect(res.status).toBe(200);
    const doc = (await res.json()) as {
      openapi: string;
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { $ref: string } }> } }>>;
      components: { schemas: Record<string, { properties?: Record<string, unknown>; required?: string[] }>; securitySchemes: Record<string, unknown> };
    };
    expect(doc.openapi).toMatch(/^3\.1\./);
    expect(doc.paths['/v1/jobs']?.post?.requestBody?.content['application/json']?.schema.$ref).toBe('#/components/schemas/JobRequest');
    const req = doc.components.schemas.JobRequest!;
    expect(Object.keys(req.properties ?? {})).toEqual(expect.arrayContaining(['command', 'script', 'env', 'files', 'limits', 'labels']));
    expect(req.required ?? []).not.toContain('template'); // defaulted: optional for clients
    expect(doc.components.schemas.Job?.required).toEqual(expect.arrayContaining(['id', 'status', 'exitCode']));
    expect(doc.components.schemas.Problem?.properties).toHaveProperty('code');
    expect(doc.components.securitySchemes).toEqual({ bearerAuth: expect.objectContaining({ type: 'http', scheme: 'bearer' }) });
    for (const p of ['/v1/jobs/{id}', '/v1/jobs/{id}/logs', '/v1/jobs/{id}/cancel', '/v1/jobs/{id}/artifacts', '/v1/hosts', '/v1/templates', '/metrics']) {
      expect(doc.paths, p).toHaveProperty([p]);
    }
    // Every $ref resolves.
    const refs = JSON.stringify(doc).match(/"#\/components\/schemas\/[A-Za-z]+"/g) ?? [];
    for (const r of new Set(refs)) expect(doc.components.schemas).toHaveProperty([JSON.parse(r).split('/').pop()]);
  });

  it('serves the interactive reference from local assets only', async () => {
    const page = await h.call('/docs', { as: null });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).not.toMatch(/https?:\/\//);
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(assets).toContain('/docs/swagger-ui-bundle.js');
    for (const a of assets) {
      const res = await h.call(a, { as: null });
      expect(res.status, a).toBe(200);
    }
    expect(await (await h.call('/docs/init.js', { as: null })).text()).toContain("url: '/openapi.json'");
    expect((await h.call('/docs/package.json', { as: null })).status).toBe(404);
  });
});

describe('errors and limits', () => {
  it('answers unknown routes with a 404 problem', async () => {
    const res = await h.call('/v2/nothing');
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    expect(res.headers.get('x-request-id')).toBeTruthy();
  });

  it('hides internals of unexpected failures but keeps the request id', async () => {
    const hh = harness(redis, {
      knownTemplates: async () => {
        throw new Error('ENOENT /var/lib/runbox/templates secret');
      },
    });
    try {
      const res = await hh.call('/v1/jobs', postJson({ command: ['true'] }));
      expect(res.status).toBe(500);
      const body = (await res.json()) as { code: string; detail: string; requestId: string };
      expect(body.code).toBe('internal');
      expect(body.detail).not.toContain('/var/lib');
      expect(body.requestId).toBe(res.headers.get('x-request-id'));
    } finally {
      await hh.close();
    }
  });

  it('rate-limits per tenant with 429 and Retry-After', async () => {
    const hh = harness(redis, { config: { rateLimitPerSec: 3 } });
    try {
      // Start right after a second boundary so all requests land in one window.
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
      const statuses: number[] = [];
      let limited: Response | undefined;
      for (let i = 0; i < 5; i++) {
        const res = await hh.call('/v1/jobs');
        statuses.push(res.status);
        if (res.status === 429) limited = res;
      }
      expect(statuses).toEqual([200, 200, 200, 429, 429]);
      expect(limited!.headers.get('retry-after')).toBe('1');
      expect(((await limited!.json()) as { code: string }).code).toBe('rate_limited');
      // Another tenant has its own budget.
      expect((await hh.call('/v1/jobs', { as: 'b' })).status).toBe(200);
      // Probes are not rate-limited.
      expect((await hh.call('/healthz', { as: null })).status).toBe(200);
    } finally {
      await hh.close();
    }
  });

  it('logs one line per request with request id, tenant and job id, never tokens or bodies', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        cb();
      },
    });
    const hh = harness(redis, { log: pino({ level: 'info' }, sink) });
    try {
      const job = await hh.create({ command: ['echo', 'top-secret-arg'], env: { PASSWORD: 'hunter2' } });
      await hh.call(`/v1/jobs/${job.id}`, { headers: { 'X-Request-Id': 'req-42' } });
      await hh.call('/v1/jobs', { as: null });
      const text = JSON.stringify(lines);
      for (const secret of ['top-secret-arg', 'hunter2', 'token-of-tenant-a']) expect(text).not.toContain(secret);
      expect(lines.find((l) => l.requestId === 'req-42')).toMatchObject({ method: 'GET', status: 200, tenant: 'a', jobId: job.id });
      expect(lines.find((l) => l.method === 'POST')).toMatchObject({ status: 201, tenant: 'a', jobId: job.id });
      expect(lines.some((l) => l.status === 401 && l.tenant === undefined)).toBe(true);
    } finally {
      await hh.close();
    }
  });

  it('a job created through the API is readable by its tenant', async () => {
    const job = await h.create({ script: 'echo hi' });
    const got = (await (await h.call(`/v1/jobs/${job.id}`)).json()) as Job;
    expect(got).toEqual(job);
  });
});
