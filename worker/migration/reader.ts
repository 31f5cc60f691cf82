import type { Duplex } from 'node:stream';
import { RunboxError } from '../../core/errors.js';
import type { ByteSource } from './files.js';

/** Above this much unread data the socket is paused (the peer then waits: TCP flow control). */
const HIGH_WATER = 1024 * 1024;

/**
 * Reads a socket in exact pieces, with an idle timeout on every read: a peer that stops sending
 * for `idleMs` while something is awaited has its socket destroyed. Buffered chunks are kept as
 * a list and searched once each (a line costs O(n), however it is split up), and at most one
 * read is pending at a time (the one caller awaits each read).
 */
export class SocketReader implements ByteSource {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failure?: Error;
  private ended = false;
  private wake?: () => void;
  /** Bytes received so far (for measurements). */
  bytesRead = 0;
  /** After the stream's last expected byte: what still comes is counted and dropped. */
  private discardLeft = -1;

  constructor(
    private readonly sock: Duplex,
    /** Silence allowed while a read waits (may change between phases). */
    public idleMs: number,
  ) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  private readonly onData = (d: Buffer) => {
    this.bytesRead += d.length;
    if (this.discardLeft >= 0) {
      this.discardLeft -= d.length;
      if (this.discardLeft < 0) this.sock.destroy(new RunboxError('invalid_argument', 'unexpected data after the request'));
      return;
    }
    this.chunks.push(d);
    this.buffered += d.length;
    if (this.buffered > HIGH_WATER) this.sock.pause();
    this.wake?.();
  };
  private readonly onEnd = () => {
    this.ended = true;
    this.wake?.();
  };
  private readonly onError = (e: Error) => {
    this.failure ??= e;
    this.wake?.();
  };

  /** Stops reading: listeners off (the socket's own 'error' handling stays the owner's). */
  detach(): void {
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
  }

  /** From now on incoming data (e.g. tar's end padding) is dropped, up to `max` bytes; more destroys the socket. */
  discard(max: number): void {
    this.discardLeft = max - this.buffered;
    this.chunks = [];
    this.buffered = 0;
    if (this.discardLeft < 0) this.sock.destroy(new RunboxError('invalid_argument', 'unexpected data after the request'));
    this.sock.resume();
  }

  /** Waits until `ready()` or the stream ends/fails; the idle timer restarts with every chunk. */
  private async until(ready: () => boolean): Promise<void> {
    while (!ready()) {
      if (this.failure) throw this.failure;
      if (this.ended) throw new RunboxError('invalid_argument', 'the connection ended early');
      this.sock.resume();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.failure ??= new RunboxError('unavailable', `the peer sent nothing for ${this.idleMs} ms`);
          this.sock.destroy(this.failure);
          resolve();
        }, this.idleMs);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    if (this.buffered < HIGH_WATER / 4) this.sock.resume();
    return out;
  }

  /** The next line (without its newline), at most `max` bytes: a longer one destroys the socket. */
  async line(max: number): Promise<string> {
    // Each chunk is searched once: where the search stopped is kept across wake-ups.
    let index = 0;
    let base = 0;
    let at = -1;
    await this.until(() => {
      for (; index < this.chunks.length; base += this.chunks[index]!.length, index++) {
        const i = this.chunks[index]!.indexOf(10);
        if (i >= 0) {
          at = base + i;
          return true;
        }
      }
      if (this.buffered > max) {
        this.failure = new RunboxError('invalid_argument', `request line longer than ${max} bytes`);
        this.sock.destroy(this.failure);
      }
      return false;
    });
    if (at > max) {
      this.failure = new RunboxError('invalid_argument', `request line longer than ${max} bytes`);
      this.sock.destroy(this.failure);
      throw this.failure;
    }
    return this.take(at + 1).toString('utf8', 0, at);
  }

  async exact(n: number): Promise<Buffer> {
    await this.until(() => this.buffered >= n);
    return this.take(n);
  }

  async some(max: number): Promise<Buffer> {
    await this.until(() => this.buffered > 0);
    const first = this.chunks[0]!;
    if (first.length <= max) {
      this.chunks.shift();
      this.buffered -= first.length;
      if (this.buffered < HIGH_WATER / 4) this.sock.resume();
      return first;
    }
    return this.take(max);
  }
}
