import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, type Job } from '../../core/job.js';
import { TestCluster } from '../helpers/cluster-proc.js';

/**
 * Moves of VPSs in user namespaces between two hosts of a `runbox cluster` (issue 15): each host
 * gives a moved VPS its own id range; the job goes on as the same users inside.
 */
let c: TestCluster;
beforeAll(async () => {
  c = await TestCluster.start(2, { RUNBOX_USERNS: 'on', RUNBOX_RATE_LIMIT_PER_SEC: '100000', RUNBOX_LOG_LEVEL: process.env.RUNBOX_TEST_CLUSTER_LOG ?? 'warn' });
}, 120_000);
afterAll(async () => {
  await c?.stop();
});

const other = (h: string | null) => (h === 'h1' ? 'h2' : 'h1');
const isRunning = (j: Job) => j.status === 'running';
const isDone = (j: Job) => isTerminal(j.status);

/** The user namespace slot a host gave a VPS of this cluster (its vps.json). */
async function slotOf(hostId: string, hostname: string): Promise<number | undefined> {
  const dir = path.join(c.stateDir, 'cluster', 'hosts', hostId, 'vps');
  for (const id of await fs.readdir(dir).catch(() => [] as string[])) {
    const r = JSON.parse(await fs.readFile(path.join(dir, id, 'vps.json'), 'utf8').catch(() => '{}')) as { spec?: { hostname?: string }; userns?: { slot: number } };
    if (r.spec?.hostname === hostname) return r.userns?.slot;
  }
  return undefined;
}

describe('user namespaces across hosts', () => {
  it('hosts publish that their VPSs have user namespaces and that non-root jobs can be checkpointed', async () => {
    const { hosts } = await c.json<{ hosts: Array<{ userns?: boolean; checkpointNonRoot?: boolean }> }>('/v1/hosts');
    expect(hosts).toHaveLength(2);
    for (const h of hosts) expect(h).toMatchObject({ userns: true, checkpointNonRoot: true });
  });

  it('moves a running job by stop-and-copy: the target gives it other host ids, its files keep their owners inside, its log has no gap', async () => {
    const script = [
      'echo root-file > /tmp/r.txt; echo user-file > /tmp/u.txt; chown 1000:1000 /tmp/u.txt',
      'i=0; while [ $i -lt 40 ]; do echo "tick $i uid=$(id -u)"; i=$((i+1)); sleep 0.1; done',
      'stat -c "%u %n" /tmp/r.txt /tmp/u.txt',
      'cat /proc/self/uid_map | tr -s " " | sed "s/^ //"',
    ].join('; ');
    const created = await c.json<Job>('/v1/jobs', { body: { script, hostname: 'ns-mover' } });
    const running = await c.waitStatus(created.id, isRunning, 'the job to run');
    await new Promise((r) => setTimeout(r, 1000));
    const from = await slotOf(running.host!, 'ns-mover');
    // Post-copy is refused by these hosts (vm.unprivileged_userfaultfd=0 here) with the reason.
    const unprivileged = (await fs.readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8')).trim();
    if (unprivileged !== '1') {
      const lazy = await c.call(`/v1/jobs/${created.id}/migrate`, { method: 'POST', body: { host: other(running.host), mode: 'post-copy' } });
      expect(lazy.ok).toBe(false);
      expect(((await lazy.json()) as { code: string }).code).toBe('host_unsupported');
    }
    const to = other(running.host);
    const moved = await c.json<Job>(`/v1/jobs/${created.id}/migrate`, { body: { host: to } });
    expect(moved.migrations).toEqual([expect.objectContaining({ from: running.host, to, mode: 'stop-and-copy' })]);
    const landed = await slotOf(to, 'ns-mover');
    expect(typeof from).toBe('number');
    expect(typeof landed).toBe('number');
    const done = await c.waitStatus(created.id, isDone, 'the job to end');
    expect(done).toMatchObject({ status: 'succeeded', host: to });
    const lines = (await (await c.call(`/v1/jobs/${created.id}/logs`)).text()).trim().split('\n');
    expect(lines.slice(0, 40)).toEqual(Array.from({ length: 40 }, (_, i) => `tick ${i} uid=0`));
    expect(lines.slice(40, 42)).toEqual(['0 /tmp/r.txt', '1000 /tmp/u.txt']);
    // The map it ended with is the target's range for it.
    expect(lines[42]).toBe(`0 ${2 ** 30 + landed! * 65536} 65536`);
  });

  it('moves a job that runs as a non-root user (python template), which hosts without user namespaces here refuse', async () => {
    const created = await c.json<Job>('/v1/jobs', {
      body: { template: 'python', command: ['python3', '-c', 'import os, time\nfor i in range(30):\n    print(i, os.getuid(), flush=True)\n    time.sleep(0.1)\n'] },
    });
    const running = await c.waitStatus(created.id, isRunning, 'the python job to run', 120_000);
    expect(running.runAs).not.toBe('root');
    await new Promise((r) => setTimeout(r, 800));
    const moved = await c.json<Job>(`/v1/jobs/${created.id}/migrate`, { body: { host: other(running.host) } });
    expect(moved.host).toBe(other(running.host));
    const done = await c.waitStatus(created.id, isDone, 'the python job to end');
    expect(done.status).toBe('succeeded');
    const lines = (await (await c.call(`/v1/jobs/${created.id}/logs`)).text()).trim().split('\n');
    const uid = lines[0]!.split(' ')[1];
    expect(uid).not.toBe('0');
    expect(lines).toEqual(Array.from({ length: 30 }, (_, i) => `${i} ${uid}`));
  });
});
