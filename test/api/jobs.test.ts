import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Job } from '../../core/job.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { harness, postJson, worker, type Harness } from './harness.js';

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

type ProblemBody = { type: string; title: string; status: number; code: string; detail: string; requestId: string; errors?: Array<{ path: string; message: string }>; [k: string]: unknown };

async function problem(res: Response, status: number, code: string): Promise<ProblemBody> {
  const body = (await res.json()) as ProblemBody;
  expect({ status: res.status, code: body.code }).toEqual({ status, code });
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(body.type).toBe(`https://runbox.dev/problems/${code}`);
  expect(body.status).toBe(status);
  expect(body.requestId).toBe(res.headers.get('x-request-id'));
  return body;
}

describe('POST /v1/jobs', () => {
  it('creates a queued job, stores its request and enqueues it once', async () => {
    const res = await h.call('/v1/jobs', postJson({ command: ['echo', 'hi'], labels: { team: 'x' }, limits: { memoryMb: 256 } }));
    expect(res.status).toBe(201);
    const job = (await res.json()) as Job;
    expect(job).toMatchObject({ status: 'queued', template: 'base', network: 'none', labels: { team: 'x' }, exitCode: null });
    expect(job.limits).toEqual({ ...h.deps.config.defaultLimits, memoryMb: 256 });
    expect(res.headers.get('location')).toBe(`/v1/jobs/${job.id}`);
    expect(res.headers.get('x-request-id')).toMatch(/^[a-f0-9]{16}$/);
    const bull = await h.deps.queue.queue.getJob(job.id);
    expect(bull?.data).toEqual({ jobId: job.id, tenant: 'a' });
    expect(await h.deps.jobs.getRequest(job.id)).toMatchObject({ command: ['echo', 'hi'], env: {}, priority: 50 });
  });

  it('keeps a sane incoming X-Request-Id and replaces an odd one', async () => {
    const ok = await h.call('/v1/jobs/nope0000', { headers: { 'X-Request-Id': 'trace-123.abc' } });
    expect(ok.headers.get('x-request-id')).toBe('trace-123.abc');
    expect(((await ok.json()) as ProblemBody).requestId).toBe('trace-123.abc');
    const odd = await h.call('/v1/jobs/nope0000', { headers: { 'X-Request-Id': 'has spaces <script>' } });
    expect(odd.headers.get('x-request-id')).toMatch(/^[a-f0-9]{16}$/);
  });

  it.each([
    ['neither command nor script', {}, ['command']],
    ['both command and script', { command: ['true'], script: 'true' }, ['command']],
    ['a bad env name', { command: ['true'], env: { '1BAD': 'x', GOOD: 'y' } }, ['env["1BAD"]']],
    ['a limit of the wrong type', { command: ['true'], limits: { memoryMb: '256', cpus: 'lots' } }, ['limits.memoryMb', 'limits.cpus']],
    ['unknown fields', { command: ['true'], colour: 'blue', limits: { ram: 1 } }, ['colour', 'limits.ram']],
    ['a file path with ".."', { command: ['true'], files: { '/etc/../shadow': { content: 'x' } } }, ['files["/etc/../shadow"]']],
    ['a relative file path and bad base64', { command: ['true'], files: { 'rel/x': { content: 'x' } } }, ['files["rel/x"]']],
    ['a bad network and priority', { script: 'true', network: 'wide', priority: 101 }, ['network', 'priority']],
  ])('rejects %s with 400 naming each field', async (_what, body, paths) => {
    const res = await h.call('/v1/jobs', postJson(body));
    const p = await problem(res, 400, 'invalid_argument');
    expect(p.errors?.map((e) => e.path).sort()).toEqual([...paths].sort());
    for (const e of p.errors ?? []) expect(e.message).not.toBe('');
  });

  it('rejects malformed JSON and invalid base64 with 400', async () => {
    let p = await problem(await h.call('/v1/jobs', postJson('{"command": [')), 400, 'invalid_argument');
    expect(p.errors?.[0]?.path).toBe('(body)');
    p = await problem(await h.call('/v1/jobs', postJson({ command: ['true'], files: { '/a': { content: 'no!pe', encoding: 'base64' } } })), 400, 'invalid_argument');
    expect(p.errors?.[0]?.path).toBe('files["/a"].content');
  });

  it('refuses an unknown template with 422 naming the known ones', async () => {
    const p = await problem(await h.call('/v1/jobs', postJson({ template: 'ubuntu', command: ['true'] })), 422, 'template_missing');
    expect(p.detail).toContain('ubuntu');
    expect(p.known).toEqual(['base', 'python']);
  });

  it('refuses limits above the maximum with 422 naming the field', async () => {
    const p = await problem(await h.call('/v1/jobs', postJson({ command: ['true'], limits: { memoryMb: 4096 } })), 422, 'limit_exceeded');
    expect(p).toMatchObject({ field: 'limits.memoryMb', max: 1024 });
  });

  it('refuses a body above the limit with 413', async () => {
    const body = JSON.stringify({ command: ['true'], stdin: 'x'.repeat(70 * 1024) });
    await problem(await h.call('/v1/jobs', postJson(body)), 413, 'payload_too_large');
    // Declared too large by Content-Length: refused before reading.
    await problem(await h.call('/v1/jobs', postJson(body, { 'Content-Length': String(body.length) })), 413, 'payload_too_large');
  });

  it('holds the response with ?wait until a worker finishes the job', async () => {
    const t0 = Date.now();
    const pending = h.call('/v1/jobs?wait=10', postJson({ command: ['sleep', '0.2'] }));
    const id = await waitForQueuedJob(h);
    await worker.start(h.deps, id);
    await new Promise((r) => setTimeout(r, 200));
    await worker.finish(h.deps, id, 0);
    const res = await pending;
    expect(res.status).toBe(201);
    const job = (await res.json()) as Job;
    expect(job).toMatchObject({ id, status: 'succeeded', exitCode: 0 });
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('returns the still-running job when the wait expires (Prefer: wait)', async () => {
    const pending = h.call('/v1/jobs', postJson({ command: ['sleep', '100'] }, { Prefer: 'wait=0.5' }));
    const id = await waitForQueuedJob(h);
    await worker.start(h.deps, id);
    const res = await pending;
    expect(res.status).toBe(201);
    expect(res.headers.get('preference-applied')).toBe('wait=0.5');
    expect(((await res.json()) as Job).status).toBe('running');
  });

  it.each(['abc', '301', '-1', ''])('rejects ?wait=%s with 400', async (v) => {
    const p = await problem(await h.call(`/v1/jobs?wait=${v}`, postJson({ command: ['true'] })), 400, 'invalid_argument');
    expect(p.errors?.[0]?.path).toBe('wait');
  });
});

describe('Idempotency-Key', () => {
  it('returns the same job with 200 on a retry and enqueues once', async () => {
    const body = { command: ['echo', 'once'], env: { B: '2', A: '1' } };
    const first = await h.call('/v1/jobs', postJson(body, { 'Idempotency-Key': 'k-1' }));
    expect(first.status).toBe(201);
    const job = (await first.json()) as Job;
    // Same request, keys in another order: the same canonical request.
    const retry = await h.call('/v1/jobs', postJson({ env: { A: '1', B: '2' }, command: ['echo', 'once'] }, { 'Idempotency-Key': 'k-1' }));
    expect(retry.status).toBe(200);
    expect(((await retry.json()) as Job).id).toBe(job.id);
    const counts = await h.deps.queue.queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed');
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(1);
    // Another tenant's key space is its own.
    const b = await h.call('/v1/jobs', { ...postJson(body, { 'Idempotency-Key': 'k-1' }), as: 'b' });
    expect(b.status).toBe(201);
    expect(((await b.json()) as Job).id).not.toBe(job.id);
  });

  it('refuses the same key with a different body with 409', async () => {
    expect((await h.call('/v1/jobs', postJson({ command: ['a'] }, { 'Idempotency-Key': 'k-2' }))).status).toBe(201);
    await problem(await h.call('/v1/jobs', postJson({ command: ['b'] }, { 'Idempotency-Key': 'k-2' })), 409, 'conflict');
  });

  it('rejects an over-long key with 400', async () => {
    const p = await problem(await h.call('/v1/jobs', postJson({ command: ['a'] }, { 'Idempotency-Key': 'k'.repeat(201) })), 400, 'invalid_argument');
    expect(p.errors?.[0]?.path).toBe('Idempotency-Key');
  });
});

describe('auth and tenants', () => {
  it('answers 401 with WWW-Authenticate without a token or with a wrong one', async () => {
    for (const headers of [{}, { Authorization: 'Bearer nope' }, { Authorization: 'Basic dXNlcjpwYXNz' }] as Array<Record<string, string>>) {
      const res = await h.call('/v1/jobs', { as: null, headers });
      await problem(res, 401, 'unauthorized');
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer /);
    }
  });

  it("hides tenant A's job from tenant B exactly like an unknown id", async () => {
    const job = await h.create({ command: ['true'] }, 'a');
    const unknown = await problem(await h.call('/v1/jobs/0000000000000000', { as: 'b' }), 404, 'not_found');
    const p = await problem(await h.call(`/v1/jobs/${job.id}`, { as: 'b' }), 404, 'not_found');
    expect(p.detail).toBe(unknown.detail.replace('0000000000000000', job.id));
    await problem(await h.call(`/v1/jobs/${job.id}/logs`, { as: 'b' }), 404, 'not_found');
    await problem(await h.call(`/v1/jobs/${job.id}/logs`, { as: 'b', headers: { Accept: 'text/event-stream' } }), 404, 'not_found');
    await problem(await h.call(`/v1/jobs/${job.id}/artifacts`, { as: 'b' }), 404, 'not_found');
    await problem(await h.call(`/v1/jobs/${job.id}/artifacts/out.txt`, { as: 'b' }), 404, 'not_found');
    await problem(await h.call(`/v1/jobs/${job.id}/cancel`, { method: 'POST', as: 'b' }), 404, 'not_found');
    const list = (await (await h.call('/v1/jobs', { as: 'b' })).json()) as { jobs: Job[] };
    expect(list.jobs.map((j) => j.id)).not.toContain(job.id);
    // Still queued: B's cancel did nothing.
    expect(((await (await h.call(`/v1/jobs/${job.id}`)).json()) as Job).status).toBe('queued');
  });
});

describe('POST /v1/jobs/:id/cancel', () => {
  it('cancels a queued job at once', async () => {
    const job = await h.create({ command: ['true'] });
    const res = await h.call(`/v1/jobs/${job.id}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    const out = (await res.json()) as Job;
    expect(out.status).toBe('canceled');
    expect(out.finishedAt).not.toBeNull();
  });

  it('asks the worker to stop a running job (202, cancelRequested, cancel channel)', async () => {
    const job = await h.create({ command: ['sleep', '100'] });
    await worker.start(h.deps, job.id);
    const sub = redis.client();
    const got = new Promise<string>((resolve) => sub.on('message', (_ch: string, msg: string) => resolve(msg)));
    await sub.subscribe(`${h.deps.config.redisPrefix}cancel`);
    try {
      const res = await h.call(`/v1/jobs/${job.id}/cancel`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(((await res.json()) as Job).cancelRequested).toBe(true);
      expect(await got).toBe(job.id);
      expect((await h.deps.jobs.get(job.id))?.job).toMatchObject({ status: 'running', cancelRequested: true });
    } finally {
      sub.disconnect();
    }
  });

  it('refuses to cancel a finished job with 409 naming its status', async () => {
    const job = await h.create({ command: ['true'] });
    await worker.start(h.deps, job.id);
    await worker.finish(h.deps, job.id, 0);
    const p = await problem(await h.call(`/v1/jobs/${job.id}/cancel`, { method: 'POST' }), 409, 'conflict');
    expect(p.detail).toContain('succeeded');
    expect(p.jobStatus).toBe('succeeded');
  });
});

describe('GET /v1/jobs', () => {
  it('filters by status and labels and pages with a cursor', async () => {
    const made: Job[] = [];
    for (let i = 0; i < 5; i++) {
      made.push(await h.create({ command: ['true'], labels: { team: i % 2 ? 'odd' : 'even', n: String(i) } }));
    }
    await worker.start(h.deps, made[0]!.id);
    await worker.finish(h.deps, made[0]!.id);

    const list = async (q: string) => (await (await h.call(`/v1/jobs${q}`)).json()) as { jobs: Job[]; nextCursor: string | null };
    const all = await list('');
    expect(all.jobs.map((j) => j.id)).toEqual(made.map((j) => j.id).reverse());
    expect(all.nextCursor).toBeNull();

    expect((await list('?status=succeeded')).jobs.map((j) => j.id)).toEqual([made[0]!.id]);
    expect((await list('?label=team=even')).jobs.map((j) => j.id)).toEqual([made[4]!.id, made[2]!.id, made[0]!.id]);
    expect((await list('?label=team=even&label=n=2')).jobs.map((j) => j.id)).toEqual([made[2]!.id]);

    const p1 = await list('?limit=2');
    expect(p1.jobs.map((j) => j.id)).toEqual([made[4]!.id, made[3]!.id]);
    expect(p1.nextCursor).toMatch(/^\d+:[a-z0-9]+$/);
    const p2 = await list(`?limit=2&cursor=${p1.nextCursor}`);
    expect(p2.jobs.map((j) => j.id)).toEqual([made[2]!.id, made[1]!.id]);
    const p3 = await list(`?limit=2&cursor=${p2.nextCursor}`);
    expect(p3.jobs.map((j) => j.id)).toEqual([made[0]!.id]);
    expect(p3.nextCursor).toBeNull();
  });

  it('rejects bad query values with 400 naming them', async () => {
    const p = await problem(await h.call('/v1/jobs?limit=500&status=sleeping&label=novalue'), 400, 'invalid_argument');
    expect(p.errors?.map((e) => e.path).sort()).toEqual(['label[0]', 'limit', 'status']);
  });
});

async function waitForQueuedJob(hh: Harness): Promise<string> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const ids = await hh.deps.redis.zrange(hh.deps.jobs.keys.tenantJobs('a'), 0, -1);
    if (ids[0]) return ids[0];
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('timed out after 5000 ms waiting for the created job to appear in the index');
}
