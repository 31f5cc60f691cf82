import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../../core/job.js';
import { startStack, type Stack } from '../helpers/stack.js';

/** The whole system through real HTTP: API + worker + Redis + VPSs. */
let st: Stack;
beforeAll(async () => {
  st = await startStack({ tenantConcurrency: 4 });
});
afterAll(async () => {
  await st?.stop();
});

const call = (path: string, init?: RequestInit & { as?: 'a' | 'b' }) => st.call(path, init);

async function run(body: object, opts: { as?: 'a' | 'b'; headers?: Record<string, string> } = {}): Promise<Job> {
  const res = await call('/v1/jobs?wait=60', { method: 'POST', body: JSON.stringify(body), ...opts });
  expect([200, 201]).toContain(res.status);
  return (await res.json()) as Job;
}

const logs = async (id: string, as: 'a' | 'b' = 'a') => (await call(`/v1/jobs/${id}/logs`, { as })).text();

describe('jobs end to end over HTTP', () => {
  it('echo: submit, wait, result, output', async () => {
    const job = await run({ command: ['echo', 'hello world'] });
    expect(job).toMatchObject({ status: 'succeeded', exitCode: 0, outputBytes: 12, host: st.worker.hostId });
    expect(await logs(job.id)).toBe('hello world\n');
  });

  it('a script with files and stdin, and artifacts to download', async () => {
    const job = await run({
      script: 'set -e; . /job/lib.sh; greet "$(cat)"; mkdir -p /out; greet artifact > /out/result.txt',
      files: { '/job/lib.sh': { content: 'greet() { echo "hi $1"; }\n' } },
      stdin: 'from stdin',
      artifacts: ['/out'],
    });
    expect(job.status).toBe('succeeded');
    expect(await logs(job.id)).toBe('hi from stdin\n');
    expect(job.artifacts.map((a) => a.path)).toEqual(['/out/result.txt']);
    const file = await call(`/v1/jobs/${job.id}/artifacts/out/result.txt`);
    expect(await file.text()).toBe('hi artifact\n');
  });

  it.each([
    ['memory', { command: ['tail', '/dev/zero'], limits: { memoryMb: 32 } }, { status: 'failed', oomKilled: true }],
    ['timeout', { command: ['sleep', '30'], limits: { timeoutSec: 1 } }, { status: 'timed_out' }],
    ['output cap', { script: 'yes | head -c 50000', limits: { outputBytes: 100 } }, { status: 'succeeded', outputBytes: 100, outputTruncated: true }],
    ['disk', { script: 'dd if=/dev/zero of=/fill bs=1M count=64', limits: { diskMb: 16 } }, { status: 'failed', exitCode: 1 }],
    ['pids', { script: 'for i in $(seq 1 40); do sleep 5 & done; echo spawned', limits: { pids: 16, timeoutSec: 10 } }, { oomKilled: false }],
  ])('limit %s: breached and reported', async (name, body, expected) => {
    const job = await run(body);
    expect(job).toMatchObject(expected);
    const out = await logs(job.id);
    if (name === 'disk') expect(out).toMatch(/No space left on device/);
    if (name === 'pids') expect(out).toMatch(/can't fork/);
  });

  it('cancel while running stops the VPS within a second', async () => {
    const res = await call('/v1/jobs', { method: 'POST', body: JSON.stringify({ command: ['sleep', '60'] }) });
    const { id } = (await res.json()) as Job;
    for (let i = 0; i < 200; i++) {
      if (((await (await call(`/v1/jobs/${id}`)).json()) as Job).status === 'running') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const t0 = Date.now();
    expect((await call(`/v1/jobs/${id}/cancel`, { method: 'POST' })).status).toBe(202);
    let job: Job;
    do job = (await (await call(`/v1/jobs/${id}`)).json()) as Job;
    while (job.status === 'running' && Date.now() - t0 < 5000);
    expect(job.status).toBe('canceled');
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('cancel while queued: the job never runs', async () => {
    // Fill this tenant's slots (tenantConcurrency 4) so the next job stays queued.
    const blockers = await Promise.all(
      Array.from({ length: 4 }, async () => ((await (await call('/v1/jobs', { method: 'POST', body: JSON.stringify({ command: ['sleep', '30'] }), as: 'b' })).json()) as Job).id),
    );
    const queued = ((await (await call('/v1/jobs', { method: 'POST', body: JSON.stringify({ script: 'echo ran > /dev/null' }), as: 'b' })).json()) as Job).id;
    const res = await call(`/v1/jobs/${queued}/cancel`, { method: 'POST', as: 'b' });
    expect(res.status).toBe(200);
    expect(((await res.json()) as Job).status).toBe('canceled');
    for (const id of blockers) await call(`/v1/jobs/${id}/cancel`, { method: 'POST', as: 'b' });
    await new Promise((r) => setTimeout(r, 500));
    const job = (await (await call(`/v1/jobs/${queued}`, { as: 'b' })).json()) as Job;
    expect(job.status).toBe('canceled');
    expect(job.startedAt).toBeNull();
  });

  it('streams output live over SSE, and resumes from Last-Event-ID', async () => {
    const res = await call('/v1/jobs', { method: 'POST', body: JSON.stringify({ script: 'for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done' }) });
    const { id } = (await res.json()) as Job;
    const events = await sse(`/v1/jobs/${id}/logs?follow=1`);
    expect(events.filter((e) => e.event === 'output').map((e) => JSON.parse(e.data).data).join('')).toBe(
      'line 1\nline 2\nline 3\nline 4\nline 5\n',
    );
    expect(events.at(-1)?.event).toBe('end');
    const second = events.find((e) => e.event === 'output' && JSON.parse(e.data).data.includes('line 2'))!;
    const resumed = await sse(`/v1/jobs/${id}/logs`, { 'last-event-id': second.id! });
    const text = resumed.filter((e) => e.event === 'output').map((e) => JSON.parse(e.data).data).join('');
    expect(text).toBe('line 3\nline 4\nline 5\n');
  });

  it('Idempotency-Key: a retried submit returns the same job and runs it once', async () => {
    const headers = { 'idempotency-key': `retry-${Date.now()}` };
    const body = { script: 'echo once' };
    const first = await run(body, { headers });
    const again = await run(body, { headers });
    expect(again.id).toBe(first.id);
    expect(await logs(first.id)).toBe('once\n');
    const list = (await (await call('/v1/jobs?limit=200')).json()) as { jobs: Job[] };
    expect(list.jobs.filter((j) => j.id === first.id)).toHaveLength(1);
  });

  it('tenant isolation: B cannot see, read or cancel A\'s job', async () => {
    const job = await run({ command: ['echo', 'secret of a'] });
    for (const path of [`/v1/jobs/${job.id}`, `/v1/jobs/${job.id}/logs`, `/v1/jobs/${job.id}/artifacts`]) {
      const r = await call(path, { as: 'b' });
      expect(r.status, path).toBe(404);
      expect(await r.text()).not.toContain('secret of a');
    }
    expect((await call(`/v1/jobs/${job.id}/cancel`, { method: 'POST', as: 'b' })).status).toBe(404);
    const listB = (await (await call('/v1/jobs?limit=200', { as: 'b' })).json()) as { jobs: Job[] };
    expect(listB.jobs.map((j) => j.id)).not.toContain(job.id);
  });

  it('hosts and templates show this worker and its pool', async () => {
    const hosts = (await (await call('/v1/hosts')).json()) as { hosts: Array<{ id: string; pools: unknown[] }> };
    expect(hosts.hosts.map((h) => h.id)).toContain(st.worker.hostId);
    const templates = (await (await call('/v1/templates')).json()) as { templates: Array<{ name: string; hosts: string[] }> };
    expect(templates.templates.find((t) => t.name === 'base')?.hosts).toContain(st.worker.hostId);
  });
});

async function sse(path: string, headers: Record<string, string> = {}): Promise<Array<{ id?: string; event: string; data: string }>> {
  const res = await call(path, { headers: { accept: 'text/event-stream', ...headers } });
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  const text = await res.text(); // ends with the `end` event
  return text
    .split('\n\n')
    .filter((b) => b.trim() && !b.startsWith(':'))
    .map((b) => {
      const f: Record<string, string> = {};
      for (const line of b.split('\n')) {
        const i = line.indexOf(':');
        if (i > 0) f[line.slice(0, i)] = (f[line.slice(0, i)] ? `${f[line.slice(0, i)]}\n` : '') + line.slice(i + 1).trimStart();
      }
      return { id: f.id, event: f.event ?? 'message', data: f.data ?? '' };
    });
}
