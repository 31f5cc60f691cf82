import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { freePort, waitFor, canConnect, stopChild } from './net.js';

export interface TestRedis {
  url: string;
  port: number;
  dir: string;
  child: ChildProcess;
  /** A fresh key prefix per test, so tests sharing one server never see each other's data. */
  prefix(): string;
  client(): Redis;
  stop(): Promise<void>;
}

let counter = 0;

/** A real redis-server for one test file, on loopback, with its data in a temp dir. */
export async function startRedis(opts: { persist?: boolean } = {}): Promise<TestRedis> {
  const port = await freePort();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', opts.persist ? 'yes' : 'no'];
  const child = spawn('redis-server', args, { stdio: 'ignore' });
  await waitFor(() => canConnect('127.0.0.1', port), `redis-server on port ${port}`);
  const clients: Redis[] = [];
  const url = `redis://127.0.0.1:${port}`;
  return {
    url,
    port,
    dir,
    child,
    prefix: () => `t${process.pid}x${counter++}:`,
    client: () => {
      const c = new Redis(url, { maxRetriesPerRequest: null, lazyConnect: false });
      clients.push(c);
      return c;
    },
    stop: async () => {
      for (const c of clients) c.disconnect();
      await stopChild(child);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
