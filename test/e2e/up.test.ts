import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
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
