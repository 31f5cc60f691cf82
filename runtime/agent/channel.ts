import fs from 'node:fs';
import net from 'node:net';
import { RunboxError } from '../../core/errors.js';
import { FrameDecoder, type AgentFrame } from './protocol.js';
import { pendingBytes } from '../native/pipe.js';

type Listener = (f: AgentFrame) => void;

/**
 * One VPS's connection to its agent: frames in over a pipe (agent fd 1), frames out over another
 * (agent fd 0), and the agent's diagnostic text (agent fd 2, also where runc writes its own errors
 * while starting the container).
 *
 * Frames out are written with fs.write, one frame per write() call, so each one is atomic in the
 * pipe (<= PIPE_BUF); writes are serialized so frames never interleave.
 */
export class AgentChannel {
  private readonly decoder = new FrameDecoder();
  private readonly listeners = new Set<Listener>();
  private readonly in: net.Socket;
  private readonly err: net.Socket;
  private writeChain: Promise<void> = Promise.resolve();
  private stderrTail = '';
  private closedFlag = false;
  private readonly closedPromise: Promise<void>;
  private protocolError?: Error;
  /**
   * Frames that arrived while nobody listened. A restored agent starts writing before `runc
   * restore` has even returned, i.e. before the job's listener moved over to this channel.
   */
  private backlog: AgentFrame[] = [];
  /** Frames that describe a state rather than an event ('ready', 'exited'), kept for late waiters. */
  private readonly sticky: AgentFrame[] = [];

  /** The pipes' identities (`pipe:[inode]`, as /proc/PID/fd shows them), taken while they are open. */
  readonly pipes: { control: string; output: string };

  constructor(
    private readonly readFd: number,
    private readonly writeFd: number,
    stderrFd: number,
  ) {
    const id = (fd: number) => {
      try {
        return `pipe:[${fs.fstatSync(fd).ino}]`;
      } catch {
        return '?';
      }
    };
    this.pipes = { control: id(writeFd), output: id(readFd) };
    this.in = new net.Socket({ fd: readFd, readable: true, writable: false });
    this.err = new net.Socket({ fd: stderrFd, readable: true, writable: false });
    this.err.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-4096);
    });
    this.err.on('error', () => undefined);
    this.closedPromise = new Promise((resolve) => {
      this.in.on('close', () => {
        this.closedFlag = true;
        resolve();
      });
    });
    this.in.on('error', () => undefined);
    this.in.on('data', (chunk: Buffer) => {
      let frames: AgentFrame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (e) {
        // A VPS can corrupt its own channel (root inside can ptrace the agent): stop listening.
        this.protocolError = e as Error;
        this.in.destroy();
        return;
      }
      for (const f of frames) {
        if (f.type === 'ready' || f.type === 'exited') this.sticky.push(f);
        if (this.listeners.size === 0) this.backlog.push(f);
        for (const l of this.listeners) l(f);
      }
    });
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Resolves when the agent's output pipe reaches EOF: every process of the VPS is gone. */
  whenClosed(): Promise<void> {
    return this.closedPromise;
  }

  get error(): Error | undefined {
    return this.protocolError;
  }

  /** The last few KB the agent (or runc) wrote to stderr, for error messages. */
  get diagnostics(): string {
    return this.stderrTail.trim();
  }

  /** Adds a listener; the first one also receives, at once and in order, what arrived before it. */
  on(l: Listener): () => void {
    this.listeners.add(l);
    const early = this.backlog;
    this.backlog = [];
    for (const f of early) l(f);
    return () => this.listeners.delete(l);
  }

  /** Waits for the first frame matching `pred`, with a deadline and a message naming it. */
  waitFor<T extends AgentFrame>(pred: (f: AgentFrame) => f is T, what: string, timeoutMs: number): Promise<T> {
    const seen = this.sticky.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const done = (fn: () => void) => {
        clearTimeout(timer);
        off();
        fn();
      };
      const timer = setTimeout(
        () => done(() => reject(new RunboxError('unavailable', `agent: no ${what} within ${timeoutMs} ms; ${this.diagnostics}`))),
        timeoutMs,
      );
      const off = this.on((f) => {
        if (pred(f)) done(() => resolve(f));
      });
      void this.closedPromise.then(() =>
        done(() => reject(new RunboxError('unavailable', `agent exited before ${what}: ${this.diagnostics || 'no diagnostics'}`))),
      );
    });
  }

  send(frames: Buffer | Buffer[]): Promise<void> {
    const list = Array.isArray(frames) ? frames : [frames];
    const next = this.writeChain.then(async () => {
      for (const f of list) await writeAll(this.writeFd, f);
    });
    this.writeChain = next.catch(() => undefined);
    return next;
  }

  /**
   * Resolves once everything the agent has written is read and dispatched. Only meaningful while
   * the agent cannot write (its VPS is frozen): then an empty pipe means nothing is in flight.
   */
  async drained(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await new Promise((r) => setImmediate(r)); // let pending 'data' events run
      if (this.closedFlag || pendingBytes(this.readFd) === 0) return;
      if (Date.now() > deadline) throw new RunboxError('unavailable', 'agent output pipe did not drain');
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  private released = false;

  /**
   * Releases our ends of the pipes, once: a second close of the write fd would close whatever file
   * got its number since (a helper's output pipe, another VPS's channel).
   */
  close(): void {
    if (this.released) return;
    this.released = true;
    this.in.destroy();
    this.err.destroy();
    try {
      fs.closeSync(this.writeFd);
    } catch {
      /* already closed */
    }
  }
}

function writeAll(fd: number, buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, 0, buf.length, null, (err, n) => {
      if (err) reject(new RunboxError('unavailable', `agent channel write failed: ${err.message}`, { cause: err }));
      else if (n !== buf.length) reject(new RunboxError('internal', `agent channel: short write (${n}/${buf.length})`));
      else resolve();
    });
  });
}
