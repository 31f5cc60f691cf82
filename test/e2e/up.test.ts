import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
import { S3ObjectStore } from '../../core/objects/s3.js';
import { runcList } from '../../runtime/oci/runc.js';
import { runtimeOf, TEMPLATES_DIR } from '../helpers/engine.js';
import { freePort, waitFor } from '../helpers/net.js';

/** The user's path: `runbox up` (what `npm start` runs), the CLI against it, Ctrl-C, start again. */
let stateDir: string;
let env: NodeJS.ProcessEnv;
let up: ChildProcess | undefined;
let out = '';

beforeAll(async () => {
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-up-'));
  const port = await freePort();
  env = {
    ...process.env,
    RUNBOX_STATE_DIR: stateDir,
    RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
    RUNBOX_API_PORT: String(port),
    RUNBOX_API_URL: `http://127.0.0.1:${port}`,
    RUNBOX_NET_CIDR: `10.${200 + (process.pid % 50)}.250.0/24`,
    RUNBOX_POOL_MIN_IDLE: '1',
    RUNBOX_LOG_LEVEL: 'warn',
    // Checkpoints in the embedded S3 server (the default is a directory): one run covers both the
    // user's path and that store's start, reuse of its credentials across a restart, and its stop.
    RUNBOX_OBJECT_STORE: 'embedded',
  };
  delete env.RUNBOX_REDIS_URL;
  delete env.RUNBOX_API_TOKENS;
  delete env.RUNBOX_TOKEN;
});
afterAll(async () => {
  if (up && up.exitCode === null) up.kill('SIGKILL');
  await cli(['gc', '--all']);
  await fs.rm(stateDir, { recursive: true, force: true });
});

function startUp(): ChildProcess {
  out = '';
  const p = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['up'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  p.stdout!.on('data', (d) => (out += d));
  return p;
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const exitOf = (p: ChildProcess) => new Promise<number | null>((r) => (p.exitCode !== null ? r(p.exitCode) : p.once('exit', (c) => r(c))));

describe('runbox up', () => {
  let jobId = '';

  it('starts Redis, API and a worker, prints the URL and a token', async () => {
    up = startUp();
    await waitFor(() => out.includes('Ctrl-C stops everything'), 'runbox up to print its banner', 30_000);
    expect(out).toContain(`API:    ${env.RUNBOX_API_URL}`);
    const token = /token:\s+(\S+)/.exec(out)?.[1];
    expect(token).toMatch(/^[A-Za-z0-9_-]{40,}$/);
    expect((await fs.stat(path.join(stateDir, 'api-tokens'))).mode & 0o777).toBe(0o600);
    expect(out).toMatch(/store: {2}s3:\/\/runbox\/ at http:\/\/127\.0\.0\.1:\d+/);
    expect((await fs.stat(path.join(stateDir, 'objects', 'credentials.json'))).mode & 0o777).toBe(0o600);
  });

  it('runs a job submitted with the CLI', async () => {
    const r = await cli(['submit', '--wait', '60', '--json', '--', 'sh', '-c', 'echo hi from $(hostname)']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^hi from vps-/);
    jobId = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { id: string }).id;
    expect((await cli(['logs', jobId])).stdout).toMatch(/^hi from vps-/);
    expect((await cli(['ls'])).stdout).toContain(jobId);
    expect((await cli(['hosts'])).stdout).toMatch(/base:none/);
  });

  it('checkpoints a running job into the embedded object store', async () => {
    const sub = await cli(['submit', '--json', '--', 'sh', '-c', 'for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done']);
    expect(sub.code).toBe(0);
    const id = (JSON.parse(sub.stdout.slice(sub.stdout.indexOf('{'))) as { id: string }).id;
    await waitFor(async () => /"status": ?"running"/.test((await cli(['status', id])).stdout), 'the job running', 20_000);
    const cp = await cli(['checkpoint', id]);
    expect(cp.stderr).toBe('');
    expect(cp.code).toBe(0);
    // While the job runs, the store holds its checkpoint (the data and the manifest written last).
    const endpoint = /store: {2}s3:\/\/runbox\/ at (\S+)/.exec(out)![1]!;
    const creds = JSON.parse(await fs.readFile(path.join(stateDir, 'objects', 'credentials.json'), 'utf8')) as { accessKeyId: string; secretAccessKey: string };
    const objects = new S3ObjectStore({ bucket: 'runbox', prefix: '', endpoint, region: 'us-east-1', forcePathStyle: true, credentials: creds });
    try {
      expect((await objects.list(`checkpoints/${id}/`)).map((o) => o.key.split('/').pop())).toEqual(['data.tar', 'manifest.json']);
    } finally {
      objects.close();
    }
    await waitFor(async () => /"status": ?"succeeded"/.test((await cli(['status', id])).stdout), 'the job to succeed', 30_000);
  });

  it('Ctrl-C stops everything cleanly and leaves no VPS behind', async () => {
    up!.kill('SIGINT');
    expect(await exitOf(up!)).toBe(0);
    expect(await runcList(runtimeOf(stateDir))).toEqual([]);
    expect(await fs.readdir(path.join(stateDir, 'vps')).catch(() => [])).toEqual([]);
    const r = await cli(['status', jobId]);
    expect(r.code).not.toBe(0); // the API is gone
  });

  it('keeps jobs across a restart (Redis persistence under the state dir)', async () => {
    up = startUp();
    await waitFor(() => out.includes('Ctrl-C stops everything'), 'runbox up to start again', 30_000);
    const r = await cli(['status', jobId]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ id: jobId, status: 'succeeded' });
    up.kill('SIGTERM');
    expect(await exitOf(up)).toBe(0);
  });
});
