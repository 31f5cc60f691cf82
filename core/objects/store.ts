import { createHash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { RunboxError } from '../errors.js';

/** An object as stored: its size and the SHA-256 of its bytes (computed by runbox while writing). */
export interface StoredObject {
  key: string;
  bytes: number;
  sha256: string;
}

/**
 * Keys and bytes in a bucket (S3 API: core/objects/s3.ts). Keys are relative to the location's
 * prefix. What is read back is data like any other from the network: callers check sizes and
 * hashes before using it (runtime/checkpoint/object-store.ts).
 */
export interface ObjectStore {
  /** For logs and doctor (no secrets). */
  readonly description: string;
  /** Creates the bucket when it does not exist (embedded servers, first start). */
  ensureBucket(): Promise<void>;
  /**
   * Streams `body` to `key` (multipart for large bodies, parts sent as they are read); resolves
   * once the store has all of it. Fails with `limit_exceeded` past `maxBytes` (nothing is left).
   */
  put(key: string, body: Readable | Buffer, o?: { maxBytes?: number }): Promise<StoredObject>;
  /** The object's bytes, or undefined when there is no such key. */
  get(key: string): Promise<{ body: Readable; bytes: number } | undefined>;
  /** A small object whole (manifests): undefined when absent; `limit_exceeded` when larger than `maxBytes`. */
  getSmall(key: string, maxBytes: number): Promise<Buffer | undefined>;
  /** Keys under `prefix` (any depth), sorted. */
  list(prefix: string): Promise<Array<{ key: string; bytes: number }>>;
  /** The names one level below `prefix` that hold keys (`a/` of `prefix/a/x`), sorted: one listing per 1000 names, not per key. */
  children(prefix: string): Promise<string[]>;
  remove(keys: readonly string[]): Promise<void>;
  /** Removes every key under `prefix`; returns how many. */
  removePrefix(prefix: string): Promise<number>;
  close(): void;
}

/** Keys runbox makes: plain segments, no empty, "." or ".." segment. */
const KEY = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\/){0,8}[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;
const PREFIX = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\/){1,8}$/;

export function checkKey(key: string): string {
  if (!KEY.test(key)) throw new RunboxError('internal', `invalid object key ${JSON.stringify(key.slice(0, 200))}`);
  return key;
}

export function checkPrefix(prefix: string): string {
  if (!PREFIX.test(prefix)) throw new RunboxError('internal', `invalid object key prefix ${JSON.stringify(prefix.slice(0, 200))}`);
  return prefix;
}

/**
 * A pass-through that counts and hashes what flows through it, and fails the stream once more
 * than `maxBytes` passed (a body that grows while it is sent, a store that sends more than it
 * said).
 */
export function hashingStream(o: { maxBytes?: number; what?: string } = {}): { stream: Transform; result(): { bytes: number; sha256: string } } {
  const hash = createHash('sha256');
  let bytes = 0;
  let digest: string | undefined;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      if (o.maxBytes !== undefined && bytes > o.maxBytes) {
        done(new RunboxError('limit_exceeded', `${o.what ?? 'the object'} exceeds ${o.maxBytes} bytes`));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  return {
    stream,
    result: () => ({ bytes, sha256: (digest ??= hash.digest('hex')) }),
  };
}
