import { RunboxError } from '../../core/errors.js';
import type { AgentChannel } from './channel.js';

const COLLECT_TIMEOUT_MS = 30_000;

export interface CollectOptions {
  /** Total content bytes to accept; a file that does not fit whole is skipped. */
  maxBytes: number;
  /** Number of files to accept; collection stops there. */
  maxFiles: number;
  /** Deadline for the whole collection (default 30 s). */
  timeoutMs?: number;
}

export interface CollectedFile {
  /** Absolute path inside the VPS. */
  path: string;
  /** Permission bits (07777). */
  mode: number;
  content: Buffer;
}

export interface CollectResult {
  files: CollectedFile[];
  /** Something was left out because of maxBytes or maxFiles. */
  truncated: boolean;
  /** What was skipped and why (symlinks, special files, caps, errors), one entry per line. */
  notes: string[];
}

/**
 * Runs one collection over `ch`: waits for `previous` (collections of one VPS stream one after the
 * other), sends the G request and gathers F/B frames until Z. The host re-checks the caps: a VPS
 * that tampers with its agent must not get past them. Calls `streamDone` when this collection's
 * frames are over (or it never started), so the next one may begin.
 */
export function collectThrough(
  ch: AgentChannel,
  request: Buffer,
  patterns: string[],
  opts: CollectOptions,
  previous: Promise<void>,
  streamDone: () => void,
): Promise<CollectResult> {
  const timeoutMs = opts.timeoutMs ?? COLLECT_TIMEOUT_MS;
  return new Promise<CollectResult>((resolve, reject) => {
    const files: CollectedFile[] = [];
    const notes: string[] = [];
    let current: { path: string; mode: number; chunks: Buffer[] } | undefined;
    let received = 0;
    let overCaps = false;
    let phase = 'turn (an earlier collection of this VPS is still streaming)';
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(
      () =>
        settle(() =>
          reject(
            new RunboxError(
              'unavailable',
              `agent: collecting ${JSON.stringify(patterns)}: no ${phase} within ${timeoutMs} ms (${files.length} files so far)` +
                (ch.diagnostics ? `; ${ch.diagnostics}` : ''),
            ),
          ),
        ),
      timeoutMs,
    );
    const finishFile = () => {
      if (current) files.push({ path: current.path, mode: current.mode, content: Buffer.concat(current.chunks) });
      current = undefined;
    };

    void previous.then(async () => {
      if (settled) return streamDone(); // timed out while waiting: never sent, nothing to drain
      phase = 'end of collection (Z frame)';
      let off: (() => void) | undefined;
      let ended = false;
      const end = () => {
        ended = true;
        off?.();
        streamDone();
      };
      // on() may hand over frames that arrived earlier, synchronously: `end` can run before it returns.
      off = ch.on((f) => {
        if (f.type === 'fileHeader') {
          finishFile();
          // The agent enforces the caps; a VPS that tampers with its agent must not get past them.
          if (files.length >= opts.maxFiles || f.size > opts.maxBytes - received) overCaps = true;
          else current = { path: f.path, mode: f.mode, chunks: [] };
        } else if (f.type === 'fileData') {
          if (!current) return;
          if (f.data.length > opts.maxBytes - received) {
            overCaps = true;
            current = undefined;
            return;
          }
          current.chunks.push(f.data);
          received += f.data.length;
        } else if (f.type === 'collected') {
          finishFile();
          end();
          notes.push(...f.notes);
          if (overCaps) notes.push('host: the agent sent more than the caps allow; the excess was dropped');
          settle(() => resolve({ files, truncated: f.truncated || overCaps, notes }));
        }
      });
      if (ended) off();
      void ch.whenClosed().then(() => {
        end();
        settle(() =>
          reject(new RunboxError('unavailable', `agent exited before the end of collecting ${JSON.stringify(patterns)}: ${ch.diagnostics || 'no diagnostics'}`)),
        );
      });
      try {
        await ch.send(request);
      } catch (e) {
        end();
        settle(() => reject(e as Error));
      }
    });
  });
}
