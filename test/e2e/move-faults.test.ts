import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, type Job } from '../../core/job.js';
import { postCopyClusterEnv, TestCluster } from '../helpers/cluster-proc.js';

/**
 * What happens to a job when things break after its move's target said "I run it now": every
 * path ends in a definite state (issue 12). The faults are injected on the target (worker/
 * migration/faults.ts labelFaults, RUNBOX_FAULT_INJECTION=1): its pipes to the restored agent broken, the
 * restored VPS's init killed (the host's next write gets EPIPE), the target's worker killed.
 */
let c: TestCluster;
beforeAll(async () => {
  c = await TestCluster.start(3, {
    ...postCopyClusterEnv(),
    RUNBOX_RATE_LIMIT_PER_SEC: '100000',
    RUNBOX_JOB_LOCK_MS: '3000',
    RUNBOX_FAULT_INJECTION: '1',
    RUNBOX_LOG_LEVEL: process.env.RUNBOX_TEST_CLUSTER_LOG ?? 'error',
  });
}, 120_000);
afterAll(async () => {
  await c?.stop();
});

const isRunning = (j: Job) => j.status === 'running';
const isDone = (j: Job) => isTerminal(j.status);
const COUNT = 60;
const script = (tag: string) => `i=0; while [ $i -lt ${COUNT} ]; do echo "${tag} $i"; i=$((i+1)); sleep 0.1; done`;

/** A running job with one checkpoint and more output after it (which a restore must cut back). */
async function checkpointed(tag: string, fault: string): Promise<Job> {
  const created = await c.json<Job>('/v1/jobs', { body: { script: script(tag), labels: { 'runbox.fault': fault } } });
  await c.waitStatus(created.id, isRunning, 'the job to run');
  await new Promise((r) => setTimeout(r, 800));
  expect((await c.call(`/v1/jobs/${created.id}/checkpoint`, { method: 'POST' })).status).toBe(201);
  await new Promise((r) => setTimeout(r, 700));
  return c.job(created.id);
}

async function moveAway(job: Job, mode: 'stop-and-copy' | 'post-copy' = 'stop-and-copy'): Promise<string> {
  const { hosts } = await c.json<{ hosts: Array<{ id: string }> }>('/v1/hosts');
  const to = hosts.find((h) => h.id !== job.host)!.id;
  const r = await c.call(`/v1/jobs/${job.id}/migrate`, { body: { host: to, mode } });
  expect(r.status).toBe(200); // the target took it: whatever breaks now is the target's to handle
  return to;
}

const log = async (id: string) => (await (await c.call(`/v1/jobs/${id}/logs`)).text()).trim().split('\n');
const lines = (tag: string) => Array.from({ length: COUNT }, (_, i) => `${tag} ${i}`);

describe('after a move, a target that loses the job', () => {
  it.each(['stop-and-copy', 'post-copy'] as const)('%s: its pipes to the restored agent broken: the job is restored there from its checkpoint, output exactly once', async (mode) => {
    const tag = mode === 'post-copy' ? 'p' : 's';
    const job = await checkpointed(tag, 'channel');
    const to = await moveAway(job, mode);
    const done = await c.waitStatus(job.id, isDone, 'the job to end');
    expect(done).toMatchObject({ status: 'succeeded', host: to });
    expect(done.history.some((h) => h.status === 'migrating' && /^restore: the host lost contact with the job's VPS.*restoring checkpoint/.test(h.note ?? ''))).toBe(true);
    expect(await log(job.id)).toEqual(lines(tag));
  });

  it("the restored VPS's init killed before the host first wrote to it (EPIPE): restored from its checkpoint, output exactly once", async () => {
    const job = await checkpointed('k', 'kill');
    await moveAway(job);
    const done = await c.waitStatus(job.id, isDone, 'the job to end');
    expect(done.status).toBe('succeeded');
    expect(done.history.some((h) => /^restore: .*(EPIPE|without reporting an exit status)/.test(h.note ?? ''))).toBe(true);
    expect(await log(job.id)).toEqual(lines('k'));
  });

  it('without a checkpoint to come back from: the job ends failed with restore_failed at once, its slot and lease released', async () => {
    const created = await c.json<Job>('/v1/jobs', { body: { script: script('n'), labels: { 'runbox.fault': 'channel' } } });
    const running = await c.waitStatus(created.id, isRunning, 'the job to run');
    await new Promise((r) => setTimeout(r, 500));
    await moveAway(running);
    const done = await c.waitStatus(created.id, isDone, 'the job to end', 20_000);
    expect(done).toMatchObject({ status: 'failed', error: { code: 'restore_failed' } });
    expect(done.error!.message).toMatch(/lost contact .*no checkpoint/);
    // Its tenant slot is free again: a tenant at its limit could run the next job.
    const next = await c.json<Job>('/v1/jobs?wait=30', { body: { command: ['true'] } });
    expect(next.status).toBe('succeeded');
  });

  // Destructive (a host dies): last.
  it("the target's worker killed right after it adopted the job: another host restores it from its checkpoint", async () => {
    const job = await checkpointed('c', 'crash');
    const to = await moveAway(job);
    const done = await c.waitStatus(job.id, isDone, 'the job to end on a third host', 90_000);
    expect(done.status).toBe('succeeded');
    expect(done.host).not.toBe(to);
    expect(done.history.some((h) => h.status === 'migrating' && new RegExp(`^restore: the host running this job \\(${to}\\) stopped`).test(h.note ?? ''))).toBe(true);
    expect(await log(job.id)).toEqual(lines('c'));
  }, 120_000);
});
