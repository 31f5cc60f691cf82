import {
  CreateBucketCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable } from 'node:stream';
import { RunboxError } from '../errors.js';
import { describeLocation, type ObjectStoreLocation } from './location.js';
import { checkKey, checkPrefix, hashingStream, type ObjectStore, type StoredObject } from './store.js';

/** Multipart part size: S3's minimum is 5 MiB; 8 MiB parts keep 64 MiB of a checkpoint in 8 requests. */
export const PART_BYTES = 8 * 1024 * 1024;
/** Parts in flight per upload (each is held in memory while it is sent). */
const QUEUE_SIZE = 4;
const DELETE_BATCH = 1000;

const notFound = (e: unknown) =>
  e instanceof S3ServiceException && (e.name === 'NoSuchKey' || e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404);

/** A store failure as runbox reports it: the operation and key, the server's error name, never credentials. */
function storeError(op: string, key: string, e: unknown): RunboxError {
  if (e instanceof RunboxError) return e;
  const status = e instanceof S3ServiceException ? e.$metadata?.httpStatusCode : undefined;
  const name = e instanceof S3ServiceException ? `${status === 403 && e.name === 'Unknown' ? 'access denied' : e.name} (HTTP ${status ?? '?'})` : e instanceof Error ? e.message : String(e);
  return new RunboxError('unavailable', `object store: ${op} ${key} failed: ${name}`, { cause: e });
}

/**
 * Any S3-compatible store (AWS S3, MinIO, Ceph RGW, …) through the AWS SDK. Uploads are streamed
 * (lib-storage's Upload: a single PUT below PART_BYTES, multipart above, parts sent as the body is
 * read), and runbox hashes every byte itself (SHA-256) so readers can check objects end to end,
 * whatever checksums the server keeps.
 */
export class S3ObjectStore implements ObjectStore {
  readonly description: string;
  private readonly client: S3Client;

  constructor(private readonly location: ObjectStoreLocation) {
    this.description = describeLocation(location);
    // The SDK warns once per process that its releases after January 2027 need Node 22; the
    // version package-lock.json pins runs on Node 20 (README "Dependencies"), so the line is noise.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      region: location.region,
      endpoint: location.endpoint,
      forcePathStyle: location.forcePathStyle,
      credentials: location.credentials,
      // Our SHA-256 covers every object end to end; the SDK's extra CRC trailers are only sent
      // where an operation requires them (self-hosted servers differ in which they accept).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 4,
    });
  }

  private full(key: string): string {
    return this.location.prefix + checkKey(key);
  }

  async ensureBucket(): Promise<void> {
    const Bucket = this.location.bucket;
    try {
      await this.client.send(new HeadBucketCommand({ Bucket }));
      return;
    } catch (e) {
      if (!notFound(e)) throw storeError('checking bucket', Bucket, e);
    }
    try {
      await this.client.send(new CreateBucketCommand({ Bucket }));
    } catch (e) {
      if (e instanceof S3ServiceException && (e.name === 'BucketAlreadyOwnedByYou' || e.name === 'BucketAlreadyExists')) return;
      throw storeError('creating bucket', Bucket, e);
    }
  }

  async put(key: string, body: Readable | Buffer, o: { maxBytes?: number } = {}): Promise<StoredObject> {
    const Key = this.full(key);
    const counted = hashingStream({ maxBytes: o.maxBytes, what: `object ${key}` });
    const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
    source.on('error', (e) => counted.stream.destroy(e));
    source.pipe(counted.stream);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.location.bucket, Key, Body: counted.stream },
      partSize: PART_BYTES,
      queueSize: QUEUE_SIZE,
      // A failed multipart upload is aborted: no invisible parts are left billed in the bucket.
      leavePartsOnError: false,
    });
    // A body that fails (or grows past maxBytes) ends the upload with that error, not a store error.
    let bodyError: Error | undefined;
    counted.stream.once('error', (e) => {
      bodyError = e;
      void upload.abort().catch(() => undefined);
    });
    try {
      await upload.done();
    } catch (e) {
      throw bodyError ?? storeError('upload of', key, e);
    }
    if (bodyError) throw bodyError;
    return { key, ...counted.result() };
  }

  async get(key: string): Promise<{ body: Readable; bytes: number } | undefined> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.location.bucket, Key: this.full(key) }));
      if (!(r.Body instanceof Readable)) throw new RunboxError('internal', `object store: ${key} came without a body stream`);
      return { body: r.Body, bytes: r.ContentLength ?? -1 };
    } catch (e) {
      if (notFound(e)) return undefined;
      throw storeError('download of', key, e);
    }
  }

  async getSmall(key: string, maxBytes: number): Promise<Buffer | undefined> {
    const r = await this.get(key);
    if (!r) return undefined;
    if (r.bytes > maxBytes) {
      r.body.destroy();
      throw new RunboxError('limit_exceeded', `object ${key} has ${r.bytes} bytes, more than the ${maxBytes} allowed`);
    }
    const parts: Buffer[] = [];
    let n = 0;
    try {
      for await (const chunk of r.body as AsyncIterable<Buffer>) {
        n += chunk.length;
        if (n > maxBytes) throw new RunboxError('limit_exceeded', `object ${key} is larger than the ${maxBytes} bytes allowed`);
        parts.push(chunk);
      }
    } catch (e) {
      r.body.destroy();
      throw e instanceof RunboxError ? e : storeError('download of', key, e);
    }
    return Buffer.concat(parts);
  }

  async list(prefix: string): Promise<Array<{ key: string; bytes: number }>> {
    const out: Array<{ key: string; bytes: number }> = [];
    await this.listing(prefix, undefined, (r) => {
      for (const o of r.Contents ?? []) {
        if (o.Key?.startsWith(this.location.prefix)) out.push({ key: o.Key.slice(this.location.prefix.length), bytes: o.Size ?? 0 });
      }
    });
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async children(prefix: string): Promise<string[]> {
    const full = this.location.prefix + checkPrefix(prefix);
    const out: string[] = [];
    await this.listing(prefix, '/', (r) => {
      for (const p of r.CommonPrefixes ?? []) if (p.Prefix?.startsWith(full)) out.push(p.Prefix.slice(full.length).replace(/\/$/, ''));
    });
    return out.sort();
  }

  /** Every page of a ListObjectsV2 under `prefix` (optionally grouped by `delimiter`). */
  private async listing(prefix: string, Delimiter: string | undefined, page: (r: ListObjectsV2CommandOutput) => void): Promise<void> {
    const Prefix = this.location.prefix + checkPrefix(prefix);
    let ContinuationToken: string | undefined;
    do {
      let r: ListObjectsV2CommandOutput;
      try {
        r = await this.client.send(new ListObjectsV2Command({ Bucket: this.location.bucket, Prefix, Delimiter, ContinuationToken }));
      } catch (e) {
        throw storeError('listing', prefix, e);
      }
      page(r);
      ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  async remove(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      // Keys as listed (a store may hold keys runbox did not write under its prefix: they go too).
      const batch = keys.slice(i, i + DELETE_BATCH).map((k) => {
        if (!k || k.length > 1024) throw new RunboxError('internal', 'invalid object key to remove');
        return { Key: this.location.prefix + k };
      });
      let r;
      try {
        r = await this.client.send(new DeleteObjectsCommand({ Bucket: this.location.bucket, Delete: { Objects: batch, Quiet: true } }));
      } catch (e) {
        throw storeError('removing', `${batch.length} objects`, e);
      }
      const failed = (r.Errors ?? []).filter((x) => x.Code !== 'NoSuchKey');
      if (failed.length) throw new RunboxError('unavailable', `object store: removing ${failed.length} objects failed (${failed[0]!.Code}: ${failed[0]!.Key})`);
    }
  }

  async removePrefix(prefix: string): Promise<number> {
    const keys = (await this.list(prefix)).map((o) => o.key);
    await this.remove(keys);
    return keys.length;
  }

  close(): void {
    this.client.destroy();
  }
}
