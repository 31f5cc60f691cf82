import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { TEMPLATES_DIR } from './engine.js';
import { usernsPostCopyRefusal } from '../../runtime/checkpoint/lazy.js';
import { freePort, waitFor } from './net.js';

export const TOKENS = { default: 'cluster-token-default', b: 'cluster-token-b' };

/**
 * For clusters whose tests need post-copy moves: hosts without user namespaces where VPSs in them
 * cannot be restored lazily here (vm.unprivileged_userfaultfd=0, runtime/checkpoint/lazy.ts), so
 * that post-copy is what they test; moves of userns VPSs are tested in test/e2e/userns.test.ts.
 */
export function postCopyClusterEnv(): NodeJS.ProcessEnv {
  if ((process.env.RUNBOX_USERNS ?? 'auto') === 'off') return {};
  const unprivileged = (() => {
    try {
      return readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
    } catch {
      return '0';
    }
  })();
  return usernsPostCopyRefusal(unprivileged) ? { RUNBOX_USERNS: 'off' } : {};
}

/** `runbox cluster up --hosts N` as a child process, with an HTTP client for its API. */
export class TestCluster {
  private out = '';
  private constructor(
    readonly stateDir: string,
    readonly env: NodeJS.ProcessEnv,
    readonly proc: ChildProcess,
  ) {}

  static async start(hosts: number, extraEnv: NodeJS.ProcessEnv = {}): Promise<TestCluster> {
    const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-tcluster-'));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      RUNBOX_STATE_DIR: stateDir,
      RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
      RUNBOX_API_PORT: String(await freePort()),
      RUNBOX_POOL_MIN_IDLE: '1',
      RUNBOX_LOG_LEVEL: 'warn',
      // Two tenants: "default", whose token has the admin role (the operator), and "b".
      RUNBOX_API_TOKENS: `default:admin=${TOKENS.default},b=${TOKENS.b}`,
      ...extraEnv,
    };
    delete env.RUNBOX_REDIS_URL;
    const proc = spawn(path.join(REPO_ROOT, 'bin/runbox'), ['cluster', 'up', '--hosts', String(hosts), '--cidr', `10.97.${process.pid % 250}.0/24`], {
      env,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const c = new TestCluster(stateDir, env, proc);
    proc.stdout!.on('data', (d) => (c.out += d));
    await waitFor(() => c.out.includes('stops everything'), 'the cluster banner', 90_000);
    return c;
  }

  get url(): string {
    return /API:\s+(\S+)/.exec(this.out)![1]!;
  }
  get token(): string {
    return TOKENS.default;
  }

  async call(p: string, init: { method?: string; body?: unknown; token?: string } = {}): Promise<Response> {
    return fetch(this.url + p, {
      method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
      headers: { authorization: `Bearer ${init.token ?? this.token}`, 'content-type': 'application/json' },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
  }

  async json<T>(p: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
    const r = await this.call(p, init);
    if (!r.ok) throw new Error(`${init.method ?? 'GET'} ${p}: ${r.status} ${await r.text()}`);
    return (await r.json()) as T;
  }

  job(id: string): Promise<Job> {
    return this.json<Job>(`/v1/jobs/${id}`);
  }

  async waitStatus(id: string, ok: (j: Job) => boolean, what: string, ms = 60_000): Promise<Job> {
    let last: Job | undefined;
    await waitFor(async () => ok((last = await this.job(id))), what, ms);
    return last!;
  }

  /**
   * A host crash: SIGKILL its worker (found by its RUNBOX_HOST_ID in /proc) and every process of
   * its VPSs (runc kill of each container in its runc root).
   */
  killHost(hostId: string): void {
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      try {
        const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        const ours = env.includes(`RUNBOX_STATE_DIR=${path.join(this.stateDir, 'cluster', 'hosts', hostId)}`);
        if (cmd.includes('main.js') && cmd.includes('worker') && env.includes(`RUNBOX_HOST_ID=${hostId}`) && ours) process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone, or not ours */
      }
    }
    const root = path.join(this.stateDir, 'cluster', 'hosts', hostId, 'runc');
    // runc list fails when a container's dir goes away while it reads them (one being destroyed): again.
    for (let attempt = 1; ; attempt++) {
      const list = spawnSync('runc', ['--root', root, 'list', '--format', 'json']);
      if (list.status !== 0) {
        if (attempt < 20) continue;
        throw new Error(`runc list failed: ${list.stderr.toString()}`);
      }
      for (const ct of (JSON.parse(list.stdout.toString() || 'null') as Array<{ id: string }> | null) ?? []) {
        spawnSync('runc', ['--root', root, 'kill', '--all', ct.id, 'KILL']); // one that ended meanwhile is fine
      }
      break;
    }
  }

  /** Stops the cluster (`runbox cluster down`); `keepState` leaves its state dir for a look at what is left. */
  async stop(o: { keepState?: boolean } = {}): Promise<void> {
    if (this.proc.exitCode === null) {
      this.proc.kill('SIGTERM');
      await new Promise((r) => this.proc.once('exit', r));
    }
    await new Promise<void>((r) => spawn(path.join(REPO_ROOT, 'bin/runbox'), ['cluster', 'down'], { env: this.env, stdio: 'ignore' }).on('exit', () => r()));
    if (!o.keepState) await fs.rm(this.stateDir, { recursive: true, force: true });
  }
}
