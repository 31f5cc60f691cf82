import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
import { testEngine, TEMPLATES_DIR, type TestEngine } from '../helpers/engine.js';

let t: TestEngine;
let env: NodeJS.ProcessEnv;
beforeAll(async () => {
  t = await testEngine('cli');
  env = { ...process.env, RUNBOX_STATE_DIR: t.stateDir, RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR, RUNBOX_NET_CIDR: t.engine.net.cidrText };
});
afterAll(async () => {
  await t?.cleanup();
});

function runbox(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env: { ...env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.end(opts.input ?? '');
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('runbox run', () => {
  it('streams output and exits with the command\'s status', async () => {
    const r = await runbox(['run', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    expect(r).toMatchObject({ code: 7, stdout: 'out\n', stderr: 'err\n' });
  });

  it('applies flags: env, user, hostname, workdir, stdin', async () => {
    const r = await runbox(
      ['run', '--env', 'A=1', '--env', 'B=two words', '--user', 'runbox', '--hostname', 'cli-box', '--workdir', '/tmp', '-i', '--', 'sh', '-c', 'echo "$A $B $(id -un) $(hostname) $(pwd) $(cat)"'],
      { input: 'from-stdin' },
    );
    expect(r.stdout).toBe('1 two words runbox cli-box /tmp from-stdin\n');
    expect(r.code).toBe(0);
  });

  it('exits 128+N when the command is killed by signal N', async () => {
    expect((await runbox(['run', '--', 'sh', '-c', 'kill -USR1 $$'])).code).toBe(138);
  });

  it('exits 124 on timeout and says so', async () => {
    const r = await runbox(['run', '--timeout', '1s', '--', 'sleep', '30']);
    expect(r.code).toBe(124);
    expect(r.stderr).toMatch(/timed out after 1s/);
  });

  it('exits 137 on an OOM kill and says so', async () => {
    const r = await runbox(['run', '--memory', '32m', '--', 'tail', '/dev/zero']);
    expect(r.code).toBe(137);
    expect(r.stderr).toMatch(/out of memory \(limit 32 MiB\)/);
  });

  it('exits 127 for a command that does not exist', async () => {
    const r = await runbox(['run', '--', 'no-such-command']);
    expect(r.code).toBe(127);
    expect(r.stderr).toMatch(/no-such-command/);
  });

  it.each([
    [['run', '--template', 'nope', '--', 'true'], /template "nope" is not built/],
    [['run', '--template', '../etc', '--', 'true'], /--template/],
    [['run', '--memory', 'lots', '--', 'true'], /--memory: invalid size "lots"/],
    [['run', '--memory', '2m', '--', 'true'], /limits\.memoryMb/],
    [['run', '--cpus', '-1', '--', 'true'], /--cpus/],
    [['run', '--pids', '1.5', '--', 'true'], /--pids/],
    [['run', '--timeout', 'forever', '--', 'true'], /--timeout/],
    [['run', '--net', 'internet', '--', 'true'], /--net/],
    [['run', '--env', 'NOVALUE', '--', 'true'], /--env "NOVALUE": expected K=V/],
    [['run', '--hostname', 'bad_host!', '--', 'true'], /--hostname/],
    [['run', '--workdir', 'relative', '--', 'true'], /--workdir/],
    [['run', '--bogus', '--', 'true'], /bogus/],
    [['run', '--'], /no command given/],
    [['run'], /no command given/],
    [['frobnicate'], /unknown command "frobnicate"/],
  ])('rejects bad input %j with exit 2 and a clear message', async (args, message) => {
    const r = await runbox(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it('rejects limits above the host maximum', async () => {
    const r = await runbox(['run', '--memory', '1g', '--', 'true'], { env: { RUNBOX_MAX_MEMORY_MB: '512' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/limits\.memoryMb = 1024 is above this host's maximum of 512/);
  });

  it('migrate: rejects an unknown --mode before calling the API', async () => {
    const r = await runbox(['migrate', 'job123', '--mode', 'teleport'], { env: { RUNBOX_API_URL: 'http://127.0.0.1:9', RUNBOX_TOKEN: 'x' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--mode must be auto, post-copy or stop-and-copy/);
  });

  it('rejects invalid configuration before doing anything', async () => {
    const r = await runbox(['run', '--', 'true'], { env: { RUNBOX_NET_CIDR: 'not-a-cidr' } });
    expect(r.code).toBe(125);
    expect(r.stderr).toMatch(/RUNBOX_NET_CIDR/);
  });

  it('leaves no VPS behind, also after Ctrl-C', async () => {
    const child = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['run', '--', 'sleep', '30'], { env, stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 1500));
    child.kill('SIGINT');
    const code = await new Promise((r) => child.once('exit', r));
    expect(code).toBe(130);
    expect(await fs.readdir(path.join(t.stateDir, 'vps')).catch(() => [])).toEqual([]);
  });
});

describe('runbox gc and doctor', () => {
  it('gc reports when there is nothing to clean', async () => {
    const r = await runbox(['gc']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/nothing to clean|gc removed/);
  });

  it('doctor checks the host in plain words', async () => {
    const r = await runbox(['doctor']);
    expect(r.stdout).toMatch(/runc/);
    expect(r.stdout).toMatch(/criu/i);
    expect(r.stdout).toMatch(/cgroup/i);
    expect(r.code).toBe(0);
  });
});

