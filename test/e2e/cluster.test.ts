import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { S3ObjectStore } from '../../core/objects/s3.js';
import { Layout } from '../../runtime/layout.js';
import { TEMPLATES_DIR } from '../helpers/engine.js';
import { createUplink, freePort, listenInNetns, waitFor } from '../helpers/net.js';

/** `runbox cluster up --hosts 2`: two worker hosts in their own network namespaces, one API. */
let stateDir: string;
let env: NodeJS.ProcessEnv;
let cluster: ChildProcess | undefined;
let out = '';
let token = '';

beforeAll(async () => {
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-cluster-'));
  const port = await freePort();
  env = { ...process.env, RUNBOX_STATE_DIR: stateDir, RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR, RUNBOX_API_PORT: String(port), RUNBOX_POOL_MIN_IDLE: '1', RUNBOX_LOG_LEVEL: 'warn' };
  delete env.RUNBOX_REDIS_URL;
  delete env.RUNBOX_API_TOKENS;
  cluster = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['cluster', 'up', '--hosts', '2', '--cidr', `10.98.${process.pid % 250}.0/24`], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  cluster.stdout!.on('data', (d) => (out += d));
  await waitFor(() => out.includes('stops everything'), 'the cluster banner', 60_000);
  token = /token: (\S+)/.exec(out)![1]!;
}, 90_000);
afterAll(async () => {
  if (cluster && cluster.exitCode === null) cluster.kill('SIGKILL');
  await runbox(['cluster', 'down']);
  await fs.rm(stateDir, { recursive: true, force: true });
});

function runbox(args: string[]): Promise<number | null> {
  return new Promise((resolve) => spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env, stdio: 'ignore' }).on('exit', resolve));
}

async function api<T>(p: string, body?: object): Promise<T> {
  const url = /API:\s+(\S+)/.exec(out)![1]!;
  const res = await fetch(url + p, {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return (await res.json()) as T;
}

describe('runbox cluster', () => {
  it('runs hosts with their own addresses, and jobs land on both', async () => {
    const { hosts } = await api<{ hosts: Array<{ id: string; address: string }> }>('/v1/hosts');
    expect(hosts.map((h) => h.id)).toEqual(['h1', 'h2']);
    expect(hosts.map((h) => h.address)).toEqual([expect.stringMatching(/^10\.98\.\d+\.2$/), expect.stringMatching(/^10\.98\.\d+\.3$/)]);
    const jobs = await Promise.all(Array.from({ length: 8 }, () => api<Job>('/v1/jobs?wait=60', { script: 'sleep 0.4' })));
    expect(jobs.every((j) => j.status === 'succeeded')).toBe(true);
    expect(new Set(jobs.map((j) => j.host))).toEqual(new Set(['h1', 'h2']));
  });

  it("keeps checkpoints in the cluster's object store (the embedded S3 server on the bridge), not in a directory the hosts share; a job's end removes them", async () => {
    const endpoint = /store: s3:\/\/runbox\/ at (http:\/\/10\.98\.\d+\.1:\d+)/.exec(out)?.[1];
    expect(endpoint, out).toBeDefined();
    const creds = JSON.parse(await fs.readFile(path.join(stateDir, 'cluster', 'objects', 'credentials.json'), 'utf8')) as { accessKeyId: string; secretAccessKey: string };
    const objects = new S3ObjectStore({ bucket: 'runbox', prefix: '', endpoint, region: 'us-east-1', forcePathStyle: true, credentials: creds });
    try {
      const job = await api<Job>('/v1/jobs', { script: 'i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.1; done' });
      await waitFor(async () => (await api<Job>(`/v1/jobs/${job.id}`)).status === 'running', 'the job running', 20_000);
      const cp = await api<{ id: string }>(`/v1/jobs/${job.id}/checkpoint`, {});
      const keys = (await objects.list(`checkpoints/${job.id}/`)).map((o) => o.key.split('/').slice(2).join('/'));
      expect(keys).toEqual([expect.stringMatching(new RegExp(`^000001-${cp.id}/data\\.tar$`)), expect.stringMatching(new RegExp(`^000001-${cp.id}/manifest\\.json$`))]);
      expect(await fs.stat(path.join(stateDir, 'cluster', 'checkpoints')).catch(() => undefined)).toBeUndefined();
      await waitFor(async () => (await api<Job>(`/v1/jobs/${job.id}`)).status === 'succeeded', 'the job to succeed', 30_000);
      await waitFor(async () => (await objects.list(`checkpoints/${job.id}/`)).length === 0, "the job's checkpoints removed from the store", 10_000);
    } finally {
      objects.close();
    }
  });

  it('runs private and egress jobs on every host (the host end of each veth lands in its host namespace)', async () => {
    for (const network of ['private', 'egress'] as const) {
      // Which host takes a job is the queue's choice: batches until both took some (a busy machine
      // can let one host take a whole batch).
      const seen = new Set<string | null>();
      for (let round = 0; round < 4 && seen.size < 2; round++) {
        const jobs = await Promise.all(Array.from({ length: 8 }, () => api<Job>('/v1/jobs?wait=60', { network, script: 'ip -4 -o addr show eth0 | grep -q inet && sleep 0.4' })));
        expect(jobs.map((j) => [j.status, j.error])).toEqual(jobs.map(() => ['succeeded', null]));
        for (const j of jobs) seen.add(j.host);
      }
      expect(seen).toEqual(new Set(['h1', 'h2']));
    }
  });

  it("hosts reach beyond this machine through its NAT (as real hosts reach their package mirrors), nothing reaches them unasked", async () => {
    const uplink = createUplink('clnat', '203.0.113');
    const listener = listenInNetns(uplink.ns, 8001, 'from-outside');
    try {
      const ns = /h1: \S+\s+\(netns (\S+)\)/.exec(out)![1]!;
      await waitFor(() => {
        const r = spawnSync('ip', ['netns', 'exec', ns, 'busybox', 'nc', '-w', '2', uplink.address, '8001'], { input: '' });
        return r.stdout.toString().trim() === 'from-outside';
      }, 'an answer from outside to cluster host h1', 10_000);
      // The outside has no route to the cluster's addresses (it only saw this machine's).
      const h1 = /h1: (\S+)/.exec(out)![1]!;
      expect(spawnSync('ip', ['netns', 'exec', uplink.ns, 'busybox', 'nc', '-w', '1', h1, '22'], { input: '' }).status).not.toBe(0);
    } finally {
      listener.kill();
      uplink.remove();
    }
  });

  it('cluster down stops everything and removes the namespaces', async () => {
    expect(await runbox(['cluster', 'down'])).toBe(0);
    await new Promise<void>((r) => (cluster!.exitCode !== null ? r() : cluster!.once('exit', () => r())));
    const netns = execFileSync('ip', ['netns', 'list']).toString();
    const instance = new Layout(path.join(stateDir, 'cluster')).instance; // other clusters may run in parallel
    expect(netns).not.toContain(`rbc${instance}-h`);
    expect(spawnSync('nft', ['list', 'table', 'ip', `runbox_cluster_${instance}`]).status).not.toBe(0); // its NAT is gone too
  });
});
