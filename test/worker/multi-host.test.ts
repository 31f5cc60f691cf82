import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import { REPO_ROOT } from '../../core/config.js';
import { HostRegistry } from '../../core/store/hosts.js';
import { runcList } from '../../runtime/oci/runc.js';
import { removeState, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { runtimeOf, TEMPLATES_DIR } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
let prefix: string;
const children: ChildProcess[] = [];
const configs: ServiceConfig[] = [];

beforeAll(async () => {
  redis = await startRedis();
  prefix = redis.prefix();
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const cfg of configs) {
    await runbox(['gc', '--all'], cfg); // a killed worker's VPSs, bridge, cgroups
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
    RUNBOX_POOL_MIN_IDLE: '1',
    RUNBOX_JOB_LOCK_MS: '2000',
    RUNBOX_SHUTDOWN_GRACE_SEC: '20',
    RUNBOX_LOG_LEVEL: 'warn',
  };
}

async function newHost(hostId: string): Promise<{ cfg: ServiceConfig; proc: ChildProcess }> {
  const cfg = await testServiceConfig(redis, { redisPrefix: prefix, hostId });
  configs.push(cfg);
  const proc = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['worker'], { env: envOf(cfg, hostId), stdio: ['ignore', 'inherit', 'inherit'] });
  children.push(proc);
  const hosts = new HostRegistry(redis.client(), prefix);
  await waitFor(async () => (await hosts.list()).some((h) => h.id === hostId), `worker ${hostId} heartbeat`, 20_000);
  return { cfg, proc };
}

function runbox(args: string[], cfg: ServiceConfig): Promise<number | null> {
  return new Promise((resolve) => {
    const c = spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env: envOf(cfg, 'gc'), stdio: 'ignore' });
    c.on('exit', (code) => resolve(code));
  });
}

const exited = (p: ChildProcess) =>
  new Promise<number | null>((r) => (p.exitCode !== null || p.signalCode !== null ? r(p.exitCode) : p.once('exit', (c) => r(c))));

describe('several worker hosts on one Redis', () => {
  it('spreads jobs over both hosts', async () => {
    const a = await newHost('host-a');
    await newHost('host-b');
    const s = new Submitter(a.cfg, redis.url);
    try {
      const ids = await Promise.all(Array.from({ length: 12 }, () => s.submit({ script: 'sleep 0.3; hostname' })));
      const jobs = await Promise.all(ids.map((id) => s.wait(id)));
      expect(jobs.every((j) => j.status === 'succeeded')).toBe(true);
      expect(new Set(jobs.map((j) => j.host))).toEqual(new Set(['host-a', 'host-b']));
    } finally {
      await s.close();
    }
  });

  it('a worker killed with SIGKILL mid-job: the job is recorded host_lost and gc removes its VPS', async () => {
    const victim = await newHost('host-victim');
    const s = new Submitter(victim.cfg, redis.url);
    try {
      // Only the victim takes new jobs for a moment: stop the others first.
      for (const c of children.slice(0, -1)) c.kill('SIGTERM');
      await Promise.all(children.slice(0, -1).map(exited));
      const id = await s.submit({ command: ['sleep', '300'] });
      await waitFor(async () => (await s.jobs.get(id))?.job.status === 'running', 'the job to run on the victim', 20_000);
      victim.proc.kill('SIGKILL');
      await exited(victim.proc);
      const runc = runtimeOf(victim.cfg.stateDir);
      expect((await runcList(runc)).length).toBeGreaterThan(0); // its VPS outlived it

      await newHost('host-rescuer'); // picks up the stalled job
      const job = await s.wait(id, 30_000);
      expect(job).toMatchObject({ status: 'failed', error: { code: 'host_lost' } });
      expect(job.history.map((h) => h.status)).toEqual(['queued', 'starting', 'running', 'failed']);

      expect(await runbox(['gc'], victim.cfg)).toBe(0);
      expect(await runcList(runc)).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it('SIGTERM: stops taking jobs, lets the running one finish, leaves no VPS behind', async () => {
    const host = await newHost('host-graceful');
    for (const c of children.slice(0, -1)) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.all(children.slice(0, -1).map(exited));
    const s = new Submitter(host.cfg, redis.url);
    try {
      const id = await s.submit({ script: 'sleep 1.5; echo finished' });
      await waitFor(async () => (await s.jobs.get(id))?.job.status === 'running', 'the job to run', 20_000);
      host.proc.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 500)); // the signal reaches the worker, which stops fetching
      const queuedLater = await s.submit({ command: ['true'] });
      expect(await exited(host.proc)).toBe(0);
      expect(await s.wait(id)).toMatchObject({ status: 'succeeded' });
      expect(await s.output(id)).toBe('finished\n');
      expect((await s.jobs.get(queuedLater))!.job.status).toBe('queued'); // not taken while stopping
      expect(await runcList(runtimeOf(host.cfg.stateDir))).toEqual([]);
      expect((await new HostRegistry(s.redis, prefix).list()).map((h) => h.id)).not.toContain('host-graceful');
    } finally {
      await s.close();
    }
  });
});
