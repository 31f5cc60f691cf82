import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { redisMaxmemoryBytes } from '../core/config.js';
import { RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { connectRedis } from '../core/redis.js';
import { ensurePrivateDir } from '../runtime/host/private-dirs.js';

/**
 * The Redis that `runbox up` starts when RUNBOX_REDIS_URL is not set: data and an append-only
 * file under <state>/redis (jobs survive a restart), listening only on a unix socket there, so
 * no TCP port exists that a VPS or another machine could reach.
 */
export interface EmbeddedRedis {
  url: string;
  /** The redis-server started here (absent when an already running one was reused). */
  child?: ChildProcess;
  stop(): Promise<void>;
}

/**
 * maxmemory when the caller passes none: 25 % of the host's RAM (RUNBOX_REDIS_MAXMEMORY's
 * default). Without a limit Redis grows until the kernel's OOM killer ends it, losing every
 * tenant's jobs; a quarter leaves room for the VPSs and for the copy-on-write growth of Redis's
 * own AOF-rewrite/RDB forks, which can double its footprint for a while.
 */
export const defaultRedisMaxmemory = (): number => redisMaxmemoryBytes('25%', os.totalmem());

/**
 * The argv of the embedded redis-server (pure). With maxmemory, Redis refuses writes once full
 * instead of growing: `noeviction` because BullMQ requires it (evicting queue keys loses jobs)
 * and so does runbox (evicting a job record loses it). The API maps that refusal to 503.
 */
export function redisServerArgs(dir: string, socket: string, opts: { rdbSnapshots?: boolean; maxmemoryBytes: number }): string[] {
  return [
    '--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--dir', dir,
    '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', opts.rdbSnapshots === false ? '' : '60 1',
    '--maxmemory', String(opts.maxmemoryBytes), '--maxmemory-policy', 'noeviction',
    '--daemonize', 'no',
  ];
}

/**
 * `rdbSnapshots: false` (benchmarks) keeps only the append-only file: no forks for RDB saves.
 * `maxmemoryBytes` (ServiceConfig.redisMaxmemoryBytes, from RUNBOX_REDIS_MAXMEMORY; 0 = none)
 * defaults to 25 % of the RAM.
 */
export async function startEmbeddedRedis(
  stateDir: string,
  opts: { rdbSnapshots?: boolean; log?: Logger; maxmemoryBytes?: number } = {},
): Promise<EmbeddedRedis> {
  const maxmemoryBytes = opts.maxmemoryBytes ?? defaultRedisMaxmemory();
  const dir = path.join(stateDir, 'redis');
  await ensurePrivateDir(dir, { log: opts.log }); // every job's request, output and artifacts are in there
  const socket = path.join(dir, 'redis.sock');
  const url = `unix://${socket}`;
  // A redis-server left by a crashed `runbox up` still holds the data: reuse it rather than fight,
  // with this start's memory limit.
  if (await ping(url)) {
    await applyMaxmemory(url, maxmemoryBytes);
    return { url, stop: async () => undefined };
  }
  await fs.rm(socket, { force: true });
  const child: ChildProcess = spawn(
    'redis-server',
    redisServerArgs(dir, socket, { rdbSnapshots: opts.rdbSnapshots, maxmemoryBytes }),
    // Its own process group: a terminal's Ctrl-C goes to runbox, which stops Redis last, in order.
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
  );
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr += d));
  const deadline = Date.now() + 10_000;
  while (!(await ping(url))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new RunboxError('unavailable', `could not start redis-server in ${dir}: ${stderr.trim() || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM'); // redis saves and exits on SIGTERM
      }),
  };
}

async function applyMaxmemory(url: string, bytes: number): Promise<void> {
  const c = connectRedis(url, { maxRetriesPerRequest: 1 });
  try {
    await c.config('SET', 'maxmemory', String(bytes), 'maxmemory-policy', 'noeviction');
  } finally {
    c.disconnect();
  }
}

async function ping(url: string): Promise<boolean> {
  const c = connectRedis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on('error', () => undefined); // "not up yet" is the expected answer while starting
  try {
    await c.connect();
    return (await c.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    c.disconnect();
  }
}
