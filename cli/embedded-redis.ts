import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../core/errors.js';
import { connectRedis } from '../core/redis.js';

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

/** `rdbSnapshots: false` (benchmarks) keeps only the append-only file: no forks for RDB saves. */
export async function startEmbeddedRedis(stateDir: string, opts: { rdbSnapshots?: boolean } = {}): Promise<EmbeddedRedis> {
  const dir = path.join(stateDir, 'redis');
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const socket = path.join(dir, 'redis.sock');
  const url = `unix://${socket}`;
  // A redis-server left by a crashed `runbox up` still holds the data: reuse it rather than fight.
  if (await ping(url)) return { url, stop: async () => undefined };
  await fs.rm(socket, { force: true });
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', opts.rdbSnapshots === false ? '' : '60 1', '--daemonize', 'no'],
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
