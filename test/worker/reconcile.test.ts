import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import { REPO_ROOT } from '../../core/config.js';
import { newId } from '../../core/ids.js';
import { JobRequestSchema } from '../../core/job.js';
import { newJobRecord } from '../../core/job-record.js';
import { resolveLimits } from '../../core/limits.js';
import { HostRegistry } from '../../core/store/hosts.js';
import { Keys } from '../../core/store/keys.js';
import { LeaseStore } from '../../core/store/leases.js';
import { TenantSlots } from '../../core/store/slots.js';
import { runcList } from '../../runtime/oci/runc.js';
import { removeState, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { runtimeOf, TEMPLATES_DIR } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/**
 * The cluster, not only the host running a job, decides when a job is over: deadlines are enforced
 * by the reaper, a record that says a job runs where nobody runs it is found within seconds, and a
 * host whose job was taken from it kills its copy (job leases, worker/job/).
 */
let redis: TestRedis;
let prefix: string;
const children: ChildProcess[] = [];
const configs: ServiceConfig[] = [];

beforeAll(async () => {
  redis = await startRedis();
  prefix = redis.prefix();
});
afterAll(async () => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGCONT');
      c.kill('SIGKILL');
    }
  }
  for (const cfg of configs) {
    await runbox(['gc', '--all'], cfg);
    await removeState(cfg);
  }
  await redis?.stop();
});

function envOf(cfg: ServiceConfig, hostId: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    RUNBOX_STATE_DIR: cfg.stateDir,
    RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
    RUNBOX_NET_CIDR: cfg.netCidr,
    RUNBOX_REDIS_URL: redis.url,
    RUNBOX_REDIS_PREFIX: prefix,
    RUNBOX_HOST_ID: hostId,
    RUNBOX_POOLS: '', // no warm VPSs: every container listed is a job's
    RUNBOX_JOB_LOCK_MS: '2000',
    RUNBOX_SHUTDOWN_GRACE_SEC: '5',
    RUNBOX_LOG_LEVEL: 'warn',
  };
}

async function newHost(hostId: string, cfg?: ServiceConfig): Promise<{ cfg: ServiceConfig; proc: ChildProcess; instance: string }> {
  if (!cfg) {
    cfg = await testServiceConfig(redis, { redisPrefix: prefix, hostId });
    configs.push(cfg);
  }
  const before = (await new HostRegistry(redis.client(), prefix).get(hostId))?.instance;
  const proc = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['worker'], { env: envOf(cfg, hostId), stdio: ['ignore', 'inherit', 'inherit'] });
  children.push(proc);
  const hosts = new HostRegistry(redis.client(), prefix);
  let instance = '';
  await waitFor(async () => {
    instance = (await hosts.get(hostId))?.instance ?? '';
    return instance !== '' && instance !== before;
  }, `worker ${hostId} heartbeat`, 20_000);
  return { cfg, proc, instance };
}

function runbox(args: string[], cfg: ServiceConfig): Promise<number | null> {
  return new Promise((resolve) => spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env: envOf(cfg, 'gc'), stdio: 'ignore' }).on('exit', resolve));
}

const exited = (p: ChildProcess) =>
  new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())));

/** Other tests' hosts must not take this test's jobs (killed: some hold fenced or stopped work). */
async function stopAllBut(keep: ChildProcess): Promise<void> {
  const others = children.filter((c) => c !== keep && c.exitCode === null && c.signalCode === null);
  for (const c of others) {
    c.kill('SIGCONT');
    c.kill('SIGKILL');
  }
  await Promise.all(others.map(exited));
}

describe('reconciliation and deadlines', () => {
  it('a host that stops answering past a job deadline: the cluster ends the job timed_out; the host, back, kills its copy and records nothing', async () => {
    const a = await newHost('host-a');
    await stopAllBut(a.proc);
    const s = new Submitter(a.cfg, redis.url);
    try {
      const id = await s.submit({ command: ['sleep', '300'], limits: { timeoutSec: 2 } });
      await waitFor(async () => (await s.jobs.get(id))?.job.status === 'running', 'the job to run on host-a', 20_000);
      a.proc.kill('SIGSTOP'); // its timers stop with it: it cannot end the job itself
      const b = await newHost('host-b'); // the cluster: its reaper sees host-a's heartbeat expire
      const job = await s.wait(id, 40_000);
      expect(job).toMatchObject({ status: 'timed_out', host: 'host-a', error: { code: 'timeout' } });
      expect(job.error!.message).toMatch(/ended by the cluster/);
      expect(job.history.at(-1)).toMatchObject({ status: 'timed_out', host: 'host-b', note: 'deadline enforced by the cluster' });

      a.proc.kill('SIGCONT');
      const runc = runtimeOf(a.cfg.stateDir);
      await waitFor(async () => (await runcList(runc)).length === 0, "host-a to kill its fenced copy", 20_000);
      const after = (await s.jobs.get(id))!.job;
      expect(after.history).toEqual(job.history); // host-a recorded nothing over the cluster's result
      expect(await new TenantSlots(s.redis, prefix).acquire('default', 'probe', 1)).toBe(true); // the slot was freed
      await new TenantSlots(s.redis, prefix).release('default', 'probe');
      void b;
    } finally {
      await s.close();
    }
  }, 90_000);

  it('a record that says a job runs on a live host that does not run it is found and ended within seconds', async () => {
    const a = await newHost('host-c');
    await stopAllBut(a.proc);
    const s = new Submitter(a.cfg, redis.url);
    try {
      // As a host that lost track of a job would leave it: running, its lease held by host-c, no VPS anywhere.
      const req = JobRequestSchema.parse({ command: ['true'] });
      const id = newId(10);
      await s.jobs.create('default', newJobRecord(id, req, resolveLimits(req.limits, a.cfg.defaultLimits, a.cfg.maxLimits)), req);
      await s.jobs.transition(id, 'starting', { host: 'host-c' });
      await s.jobs.transition(id, 'running', { host: 'host-c', startedAt: new Date().toISOString() });
      await new LeaseStore(s.redis, prefix).claim(id, '', a.instance);
      await new TenantSlots(s.redis, prefix).acquire('default', id, 100);
      const t0 = Date.now();
      const job = await s.wait(id, 40_000);
      expect(job).toMatchObject({ status: 'failed', error: { code: 'host_lost' } });
      expect(job.error!.message).toMatch(/no checkpoint/);
      expect(Date.now() - t0).toBeLessThan(30_000);
      // Released right after the final record (a moment after a client can see it).
      await waitFor(async () => (await s.redis.sismember(new Keys(prefix).tenantActive('default'), id)) === 0, 'the tenant slot to be released', 5_000);
      await waitFor(async () => (await new LeaseStore(s.redis, prefix).get(id)) === null, 'the lease to be released', 5_000);
    } finally {
      await s.close();
    }
  }, 60_000);

  it('a host restarted under the same id: the jobs of its previous process are recovered, not left running', async () => {
    const first = await newHost('host-d');
    await stopAllBut(first.proc);
    const s = new Submitter(first.cfg, redis.url);
    try {
      const id = await s.submit({ command: ['sleep', '300'] });
      await waitFor(async () => (await s.jobs.get(id))?.job.status === 'running', 'the job to run on host-d', 20_000);
      first.proc.kill('SIGKILL');
      await exited(first.proc);
      const second = await newHost('host-d', first.cfg); // same id and state dir, within the heartbeat's TTL
      expect(second.instance).not.toBe(first.instance);
      const job = await s.wait(id, 30_000);
      expect(job).toMatchObject({ status: 'failed', error: { code: 'host_lost' } });
      expect(await runcList(runtimeOf(first.cfg.stateDir))).toEqual([]); // gc at start
    } finally {
      await s.close();
    }
  }, 60_000);
});
