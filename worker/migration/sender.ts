import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { RunboxError, type ErrorCode } from '../../core/errors.js';
import type { MigrationCredentials } from './credentials.js';
import type { FileSpec } from './files.js';
import type { Answer } from './protocol.js';
import { request, type PeerAddress } from './transport.js';
import type { Logger } from '../../core/log.js';

/**
 * Sends a move's request with its checkpoint files from a worker thread of its own: tar's output
 * (the job's memory and disk, up to gigabytes) is read and encrypted there, beside the event loop
 * that keeps this host's jobs, leases and heartbeats going, and beside the receiving side when
 * both hosts share a machine (tests, benchmarks). The thread starts once (`warm`, before a
 * freeze) and stays; if it dies, its requests fail `unavailable` and the next one starts another.
 * A thread that cannot start at all (its script missing: a checkout that was never built) is not
 * retried: moves then send from this thread, and the host log says so once.
 */
export interface SendRequest {
  id: number;
  creds: MigrationCredentials;
  to: PeerAddress;
  message: object;
  files: readonly FileSpec[];
  breakMidway?: boolean;
  timeoutMs: number;
}

export type SendResult = { id: number; answer: Answer } | { id: number; error: { code: ErrorCode; message: string } };

/** Beyond the request's own deadline (enforced in the thread), how long before a silent thread counts as lost. */
const THREAD_GRACE_MS = 10_000;

export class FileSender {
  private thread?: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (a: Answer) => void; reject: (e: Error) => void; inline: () => void }>();
  /** Set when a thread failed before it ran: every send is made in this thread from then on. */
  private cannotStart = false;

  constructor(private readonly o: { log?: Logger; script?: URL } = {}) {}

  /** Whether sends run in the thread (false once it could not start). */
  get threaded(): boolean {
    return !this.cannotStart;
  }

  /** Starts the thread ahead of use (its start-up, ~50 ms, must not fall into a move's pause). */
  warm(): void {
    this.worker();
  }

  /** As transport.ts `request`, with the files; made in the thread. */
  send(creds: MigrationCredentials, to: PeerAddress, message: object, o: { files: readonly FileSpec[]; breakMidway?: boolean; timeoutMs: number }): Promise<Answer> {
    if (this.cannotStart) return request(creds, to, message, o);
    const id = this.nextId++;
    const thread = this.worker();
    return new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => settle(new RunboxError('unavailable', `the file sender gave no answer within ${o.timeoutMs + THREAD_GRACE_MS} ms`)), o.timeoutMs + THREAD_GRACE_MS);
      const settle = (r: Answer | Error) => {
        clearTimeout(timer);
        this.pending.delete(id);
        if (this.pending.size === 0) thread.unref(); // an idle thread keeps no process alive
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      const inline = () => {
        clearTimeout(timer);
        this.pending.delete(id);
        request(creds, to, message, o).then(resolve, reject);
      };
      this.pending.set(id, { resolve: settle, reject: settle, inline });
      thread.ref();
      thread.postMessage({ id, creds, to, message, files: o.files, breakMidway: o.breakMidway, timeoutMs: o.timeoutMs } satisfies SendRequest);
    });
  }

  async close(): Promise<void> {
    const thread = this.thread;
    this.thread = undefined;
    await thread?.terminate();
  }

  private worker(): Worker {
    if (this.thread) return this.thread;
    const thread = new Worker(this.o.script ?? threadScript());
    thread.unref();
    let online = false; // its script loaded (it says so first)
    thread.on('message', (r: SendResult | { ready: true }) => {
      if ('ready' in r) {
        online = true;
        return;
      }
      const p = this.pending.get(r.id);
      if (!p) return;
      if ('answer' in r) p.resolve(r.answer);
      else p.reject(new RunboxError(r.error.code, r.error.message));
    });
    const lost = (why: string) => {
      const current = this.thread === thread; // not one close() ended
      if (current) this.thread = undefined;
      if (current && !online && !this.cannotStart) {
        // Nothing was sent from it: its requests are made here instead, and all later ones.
        this.cannotStart = true;
        this.o.log?.warn({ why }, 'the file sender thread cannot start; moves send their files from the main thread');
        for (const p of [...this.pending.values()]) p.inline();
        return;
      }
      for (const p of [...this.pending.values()]) p.reject(new RunboxError('unavailable', `the file sender thread ${why}`));
    };
    thread.on('error', (e) => lost(`failed: ${e.message}`));
    thread.on('exit', (code) => lost(`exited (${code})`));
    this.thread = thread;
    return thread;
  }
}

/**
 * The thread's script, compiled: worker threads run plain Node, so under the test runner (which
 * runs these sources as TypeScript) the copy in dist/ is used; scripts/setup.sh builds it first.
 */
function threadScript(): URL {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return new URL('./send-thread.js', import.meta.url);
  const root = path.resolve(path.dirname(here), '../..');
  return pathToFileURL(path.join(root, 'dist/worker/migration/send-thread.js'));
}
