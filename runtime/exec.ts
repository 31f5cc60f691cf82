import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { RunboxError } from '../core/errors.js';

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

export function exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return start(argv, opts).result;
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
    let stdout = '';
    let stderr = '';
    const lines = opts.onLine && { stdout: new LineSplitter('stdout', opts.onLine), stderr: new LineSplitter('stderr', opts.onLine) };
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d;
      lines?.stdout.push(d);
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d;
      lines?.stderr.push(d);
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new RunboxError('unavailable', `cannot run ${file}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      lines?.stdout.end();
      lines?.stderr.end();
      if (timedOut) {
        reject(new RunboxError('unavailable', `${file} ${args[0] ?? ''} did not finish within ${opts.timeoutMs} ms`));
        return;
      }
      resolve({ code, signal, stdout, stderr });
    });
  });
  const signal = (sig: NodeJS.Signals) => {
    if (!child.pid || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(opts.group ? -child.pid : child.pid, sig);
    } catch {
      /* gone already */
    }
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
