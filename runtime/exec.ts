import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { RunboxError } from '../core/errors.js';
import { pipe2 } from './native/pipe.js';
import { loadSys, spawnProcess, type SpawnedProcess } from './native/sys.js';

/**
 * The one place that starts host processes. Everything else builds argv arrays (never shell
 * strings) and hands them here, so timeouts, error reporting and output limits are uniform.
 */
export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string;
  /** Extra stdio: fds handed to the child as its 0/1/2 (e.g. the VPS's agent pipes). */
  stdio?: StdioOptions;
  /** Own process group (kill(-pid) reaches the helpers it starts, e.g. runc's criu). */
  group?: boolean;
  /** Live output, one complete line at a time (e.g. build progress); capture still happens. */
  onLine?: (stream: 'stdout' | 'stderr', line: string) => void;
}

const MAX_CAPTURE = 1024 * 1024;

/**
 * Runs argv to its end. Without extra `stdio` it starts the process with posix_spawn (runtime/
 * native/sys.ts): libuv's fork() copies the worker's page tables for every helper, blocking the
 * event loop ~1.5 ms at 110 MiB of RSS and more as the worker grows; a vfork costs the same at any
 * size. Falls back to Node's spawn where the addon is not built.
 */
export function exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  if (opts.stdio === undefined && spawnAddon()) return execSpawned(argv, opts);
  return start(argv, opts).result;
}

let addonState: boolean | undefined;
function spawnAddon(): boolean {
  if (addonState === undefined) {
    try {
      loadSys();
      addonState = true;
    } catch {
      addonState = false;
    }
  }
  return addonState;
}

async function execSpawned(argv: readonly string[], opts: ExecOptions): Promise<ExecResult> {
  const [file, ...args] = argv;
  if (!file) throw new RunboxError('internal', 'exec: empty argv');
  const out = pipe2();
  const err = pipe2();
  const inp = opts.input === undefined ? undefined : pipe2();
  let proc: SpawnedProcess;
  try {
    proc = spawnProcess(argv, { env: opts.env, cwd: opts.cwd, fds: [inp?.read ?? -1, out.write, err.write], newSession: opts.group });
  } catch (e) {
    for (const fd of [out.read, err.read, inp?.write]) if (fd !== undefined) fs.closeSync(fd);
    throw new RunboxError('unavailable', `cannot run ${file}: ${(e as Error).message}`, { cause: e });
  } finally {
    // The child has its copies; ours would keep its output open after it exits.
    for (const fd of [out.write, err.write, inp?.read]) if (fd !== undefined) fs.closeSync(fd);
  }
  const output = new Output(opts.onLine);
  const drained = (['stdout', 'stderr'] as const).map((name) => {
    const sock = new net.Socket({ fd: name === 'stdout' ? out.read : err.read, readable: true, writable: false });
    output.capture(name, sock);
    return new Promise<void>((resolve) => {
      sock.on('error', () => sock.destroy());
      sock.on('close', () => resolve());
    });
  });
  if (inp) {
    const w = new net.Socket({ fd: inp.write, readable: false, writable: true });
    w.on('error', () => w.destroy()); // EPIPE: it exited without reading all of it
    w.end(opts.input ?? '');
  }
  const deadline = new Deadline(opts.timeoutMs, () => killQuietly(proc.pid, !!opts.group, 'SIGKILL'));
  const exit = await proc.exit;
  deadline.clear();
  await Promise.all(drained);
  output.end();
  if (deadline.fired) throw timeoutError(file, args, opts.timeoutMs);
  return { code: exit.code, signal: exit.signal, ...output.captured };
}

/** stdout and stderr of a process: captured up to MAX_CAPTURE each, and passed on line by line. */
class Output {
  readonly captured = { stdout: '', stderr: '' };
  private readonly lines?: Record<'stdout' | 'stderr', LineSplitter>;
  constructor(onLine?: ExecOptions['onLine']) {
    if (onLine) this.lines = { stdout: new LineSplitter('stdout', onLine), stderr: new LineSplitter('stderr', onLine) };
  }
  capture(name: 'stdout' | 'stderr', stream: Readable | null | undefined): void {
    stream?.setEncoding('utf8').on('data', (d: string) => {
      if (this.captured[name].length < MAX_CAPTURE) this.captured[name] += d;
      this.lines?.[name].push(d);
    });
  }
  end(): void {
    this.lines?.stdout.end();
    this.lines?.stderr.end();
  }
}

/** Calls `kill` once `ms` have passed (never without `ms`), unless cleared first. */
class Deadline {
  fired = false;
  private readonly timer?: NodeJS.Timeout;
  constructor(ms: number | undefined, kill: () => void) {
    if (ms !== undefined) {
      this.timer = setTimeout(() => {
        this.fired = true;
        kill();
      }, ms);
    }
  }
  clear(): void {
    clearTimeout(this.timer);
  }
}

const timeoutError = (file: string, args: readonly string[], ms: number | undefined) =>
  new RunboxError('unavailable', `${file} ${args[0] ?? ''} did not finish within ${ms} ms`);

/** Signals pid (its whole group with `group`); a process already gone is not an error. */
function killQuietly(pid: number, group: boolean, sig: NodeJS.Signals): void {
  try {
    process.kill(group ? -pid : pid, sig);
  } catch {
    /* gone already */
  }
}

/** A started process: its handle (for extra stdio, or to kill it) and its result once it exits. */
export interface Started {
  child: ChildProcess;
  result: Promise<ExecResult>;
  /** Signals the process (its whole group, when started with `group`); a process already gone is not an error. */
  signal(signal: NodeJS.Signals): void;
}

/** Starts argv like exec() but hands back the process while it runs (long-lived helpers: criu lazy-pages). */
export function start(argv: readonly string[], opts: ExecOptions = {}): Started {
  const [file, ...args] = argv;
  if (!file) throw new RunboxError('internal', 'exec: empty argv');
  const child = spawn(file, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    stdio: opts.stdio ?? [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    detached: opts.group ?? false,
  });
  const result = new Promise<ExecResult>((resolve, reject) => {
    const output = new Output(opts.onLine);
    output.capture('stdout', child.stdout);
    output.capture('stderr', child.stderr);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const deadline = new Deadline(opts.timeoutMs, () => child.kill('SIGKILL'));
    child.on('error', (err) => {
      deadline.clear();
      reject(new RunboxError('unavailable', `cannot run ${file}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      deadline.clear();
      output.end();
      if (deadline.fired) reject(timeoutError(file, args, opts.timeoutMs));
      else resolve({ code, signal, ...output.captured });
    });
  });
  const signal = (sig: NodeJS.Signals) => {
    if (!child.pid || child.exitCode !== null || child.signalCode !== null) return;
    killQuietly(child.pid, !!opts.group, sig);
  };
  return { child, result, signal };
}

/** Splits a text stream into lines (\n or \r: progress bars redraw with \r). */
class LineSplitter {
  private rest = '';
  constructor(
    private readonly stream: 'stdout' | 'stderr',
    private readonly cb: (stream: 'stdout' | 'stderr', line: string) => void,
  ) {}
  push(d: string): void {
    const parts = (this.rest + d).split(/\r?\n|\r/);
    this.rest = parts.pop() ?? '';
    for (const l of parts) if (l) this.cb(this.stream, l);
  }
  end(): void {
    if (this.rest) this.cb(this.stream, this.rest);
    this.rest = '';
  }
}

/** Runs argv and fails with the command's stderr when it does not exit 0. */
export async function execOk(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await exec(argv, opts);
  if (r.code !== 0) {
    const detail = (r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ');
    throw new RunboxError('internal', `${argv.slice(0, 3).join(' ')} failed (${r.code ?? r.signal}): ${detail}`, {
      meta: { argv },
    });
  }
  return r;
}
