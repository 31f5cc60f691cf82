import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { CAP_SYS_RESOURCE, hasCapability } from '../../runtime/host/caps.js';
import { waitFor } from '../helpers/net.js';
import { startStack, type Stack } from '../helpers/stack.js';

/** Checkpoints of running jobs through the API (CRIU with leave-running, on one host). */
let st: Stack;
let cfg: ServiceConfig;
beforeAll(async () => {
  st = await startStack();
  cfg = st.cfg;
});
afterAll(async () => {
  await st?.stop();
});

const call = (p: string, init?: RequestInit & { as?: 'a' | 'b' }) => st.call(p, init);
const getJob = async (id: string) => (await (await call(`/v1/jobs/${id}`)).json()) as Job;
const submit = async (body: object) => ((await (await call('/v1/jobs', { method: 'POST', body: JSON.stringify(body) })).json()) as Job).id;
const running = (id: string) => waitFor(async () => (await getJob(id)).status === 'running', `job ${id} running`, 20_000);
const done = async (id: string) => {
  await waitFor(async () => ['succeeded', 'failed', 'canceled', 'timed_out'].includes((await getJob(id)).status), `job ${id} to end`, 60_000);
  return getJob(id);
};

/** What the host publishes: it can checkpoint non-root processes (CAP_SYS_RESOURCE, or VPSs in user namespaces). */
const nonRootCheckpoints = async () => {
  const { hosts } = (await (await call('/v1/hosts')).json()) as { hosts: Array<{ checkpointNonRoot?: boolean }> };
  return hosts.length > 0 && hosts.every((h) => h.checkpointNonRoot === true);
};

const COUNTER = 'echo before > /data.txt; i=0; while [ $i -lt 30 ]; do echo "tick $i"; i=$((i+1)); sleep 0.1; done';

describe('POST /v1/jobs/:id/checkpoint', () => {
  it('checkpoints a running job, which keeps running undisturbed; the checkpoint is gone when the job ends', async () => {
    const id = await submit({ script: COUNTER });
    await running(id);
    await new Promise((r) => setTimeout(r, 500));
    const res = await call(`/v1/jobs/${id}/checkpoint`, { method: 'POST' });
    expect(res.status).toBe(201);
    const cp = (await res.json()) as { id: string; sizeBytes: number; outputOffset: number };
    expect(cp.sizeBytes).toBeGreaterThan(0);
    expect(cp.outputOffset).toBeGreaterThan(0);

    // While the job runs, the store holds CRIU images and a sparse copy of the VPS's disk.
    const dir = path.join(cfg.checkpointDir, id);
    const [entry] = (await fs.readdir(dir)).filter((n) => /^\d{6}-/.test(n));
    expect(await fs.readdir(path.join(dir, entry!))).toEqual(expect.arrayContaining(['images', 'disk.img', 'meta.json']));
    const disk = path.join(dir, entry!, 'disk.img');
    expect(execFileSync('debugfs', ['-R', 'cat /upper/data.txt', disk], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toBe('before\n');
    const st = await fs.stat(disk);
    expect(st.blocks * 512).toBeLessThan(st.size / 8); // sparse: holes are not stored

    const job = await done(id);
    expect(job.status).toBe('succeeded');
    expect(job.checkpoints).toEqual([expect.objectContaining({ id: cp.id })]);
    expect(job.history.map((h) => h.status)).toEqual(['queued', 'starting', 'running', 'checkpointing', 'running', 'succeeded']);
    const out = await (await call(`/v1/jobs/${id}/logs`)).text();
    expect(out.trim().split('\n')).toEqual(Array.from({ length: 30 }, (_, i) => `tick ${i}`));
    await waitFor(async () => !(await fs.stat(dir).then(() => true, () => false)), 'checkpoints removed', 5000);
  });

  it('takes automatic checkpoints with checkpoint.everySec', async () => {
    const id = await submit({ script: 'sleep 7', checkpoint: { everySec: 5 } });
    const job = await done(id);
    expect(job.status).toBe('succeeded');
    expect(job.checkpoints.length).toBeGreaterThanOrEqual(1);
    expect(job.history.find((h) => h.status === 'checkpointing')?.note).toBe('checkpoint.everySec');
  });

  it('a job running as a non-root user on a host whose root lacks CAP_SYS_RESOURCE and whose VPSs have no user namespaces: refused up front (409 checkpoint_unsupported), it keeps running, automatic checkpoints stay off', async () => {
    expect(await nonRootCheckpoints()).toBe(hasCapability(CAP_SYS_RESOURCE) || cfg.userns !== 'off');
    if (await nonRootCheckpoints()) return; // such a host checkpoints it: the test below
    const id = await submit({ script: 'i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.1; done', user: 'nobody', checkpoint: { everySec: 5 } });
    await running(id);
    expect((await getJob(id)).runAs).toBe('nobody');
    const res = await call(`/v1/jobs/${id}/checkpoint`, { method: 'POST' });
    expect(res.status).toBe(409);
    const problem = (await res.json()) as { code: string; detail: string };
    expect(problem.code).toBe('checkpoint_unsupported');
    expect(problem.detail).toMatch(/runs as user "nobody".*CAP_SYS_RESOURCE.*keeps running/);
    const move = await call(`/v1/jobs/${id}/migrate`, { method: 'POST' });
    expect([move.status, ((await move.json()) as { code: string }).code]).toEqual([409, 'checkpoint_unsupported']);
    const job = await done(id);
    expect(job).toMatchObject({ status: 'succeeded', checkpoints: [] });
    expect(job.history.map((h) => h.status)).toEqual(['queued', 'starting', 'running', 'succeeded']);
    expect((await (await call(`/v1/jobs/${id}/logs`)).text()).trim().split('\n')).toHaveLength(30);
  });

  it('where root has CAP_SYS_RESOURCE or VPSs have user namespaces, a job running as a non-root user is checkpointed like a root one', async () => {
    if (!(await nonRootCheckpoints())) return; // refused there: the test above
    const id = await submit({ script: 'i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.1; done', user: 'nobody' });
    await running(id);
    await new Promise((r) => setTimeout(r, 500));
    expect((await call(`/v1/jobs/${id}/checkpoint`, { method: 'POST' })).status).toBe(201);
    expect(await done(id)).toMatchObject({ status: 'succeeded', checkpoints: [expect.anything()] });
  });

  it('refuses what cannot be checkpointed, and other tenants', async () => {
    const id = await submit({ command: ['sleep', '5'] });
    await running(id);
    expect((await call(`/v1/jobs/${id}/checkpoint`, { method: 'POST', as: 'b' })).status).toBe(404);
    expect((await call('/v1/jobs/nosuchjob0000/checkpoint', { method: 'POST' })).status).toBe(404);
    await call(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    await done(id);
    const late = await call(`/v1/jobs/${id}/checkpoint`, { method: 'POST' });
    expect(late.status).toBe(409);
    expect(((await late.json()) as { code: string }).code).toBe('conflict');
  });
});
