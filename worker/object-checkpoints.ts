import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { finished } from 'node:stream/promises';
import { z } from 'zod';
import { isRunboxError, RunboxError } from '../core/errors.js';
import { checkJobId } from '../core/ids.js';
import type { Logger } from '../core/log.js';
import type { ObjectStoreChoice } from '../core/objects/location.js';
import { S3ObjectStore } from '../core/objects/s3.js';
import { hashingStream, type ObjectStore } from '../core/objects/store.js';
import {
  badCheckpoint,
  CHECKPOINT_NAME,
  checkCheckpointMeta,
  checkpointName,
  DirectoryCheckpointStore,
  issueField,
  jobDirOf,
  MAX_META_BYTES,
  stageIn,
  type CheckpointCaps,
  type CheckpointMeta,
  type CheckpointStore,
  type RestorableCheckpoint,
} from '../runtime/checkpoint/store.js';
import { BLOCKING_FACTOR, receiveFiles, sendFiles, type FileSpec } from './migration/files.js';
import { checkpointFiles } from './migration/protocol.js';
import { SocketReader } from './migration/reader.js';

/**
 * Checkpoints in an object store (S3), so that any host can restore a job whose host is gone.
 * A checkpoint `<seq>-<id>` of a job is two objects under `checkpoints/<job>/<seq>-<id>/`:
 *   data.tar       its images/ and disk.img as one GNU tar stream (sparse: the disk costs its
 *                  data), the format of a move (worker/migration/files.ts), uploaded as it is made
 *   manifest.json  { format, meta, data: { bytes, sha256 } }, written only after data.tar is
 *                  fully stored: a checkpoint without it (a host that died mid-upload) does not
 *                  exist for readers, and prune removes its leftovers
 * Staging and downloads use a local directory (RUNBOX_CHECKPOINT_DIR). Whatever is read back is
 * hostile input: the manifest is parsed strictly, the data size is bounded by the job's limits,
 * the tar is read by the strict reader of moves, and its SHA-256 must match the manifest before
 * anything of it is used; a checkpoint that fails these checks is skipped for the one before it.
 */
export class ObjectCheckpointStore implements CheckpointStore {
  private downloads = 0;

  constructor(
    private readonly objects: ObjectStore,
    /** Local working space: staged checkpoints before upload, downloads before a restore. */
    readonly localRoot: string,
    private readonly log?: Logger,
  ) {}

  private localDir(jobId: string): string {
    return jobDirOf(this.localRoot, jobId);
  }

  private prefix(jobId: string): string {
    return `checkpoints/${checkJobId(jobId)}/`;
  }

  stage(jobId: string, seq: number) {
    return stageIn(this.localRoot, jobId, seq);
  }

  /** Uploads data.tar (streamed, multipart), then the manifest; the staged copy goes once both are stored. */
  async commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void> {
    const base = `${this.prefix(jobId)}${checkpointName(meta)}/`;
    const started = Date.now();
    const tar = new PassThrough({ highWaterMark: BLOCKING_FACTOR * 512 * 4 });
    const files: FileSpec[] = [
      { name: 'images', path: path.join(stagedDir, 'images'), dir: true, maxBytes: 0 },
      { name: 'disk.img', path: path.join(stagedDir, 'disk.img'), maxBytes: 0 },
    ];
    const sending = sendFiles(files, tar).then(() => tar.end());
    // A failed upload stops reading: ending the stream kills tar (sendFiles), which would block on a full pipe.
    const storing = this.objects.put(`${base}data.tar`, tar).catch((e: unknown) => {
      tar.destroy(e as Error);
      throw e;
    });
    const [data] = await Promise.all([storing, sending]);
    const manifest: Manifest = { format: 1, meta, data: { bytes: data.bytes, sha256: data.sha256 } };
    await this.objects.put(`${base}manifest.json`, Buffer.from(JSON.stringify(manifest)));
    await fs.rm(stagedDir, { recursive: true, force: true });
    this.log?.info({ jobId, checkpoint: meta.id, bytes: data.bytes, uploadMs: Date.now() - started, store: this.objects.description }, 'checkpoint stored');
  }

  /** Complete checkpoints (a manifest and a data object; the data's size is checked when it is read), oldest first. */
  private async complete(jobId: string): Promise<{ names: string[]; all: Array<{ key: string; bytes: number }> }> {
    const prefix = this.prefix(jobId);
    const all = await this.objects.list(prefix);
    const keys = new Set(all.map((o) => o.key));
    const names = all
      .map((o) => o.key.slice(prefix.length).split('/'))
      .filter((p) => p.length === 2 && p[1] === 'manifest.json' && CHECKPOINT_NAME.test(p[0]!) && keys.has(`${prefix}${p[0]}/data.tar`))
      .map((p) => p[0]!)
      .sort();
    return { names, all };
  }

  private async manifest(jobId: string, name: string): Promise<Manifest> {
    const bad = (why: string) => badCheckpoint(name, jobId, why);
    let text: Buffer | undefined;
    try {
      text = await this.objects.getSmall(`${this.prefix(jobId)}${name}/manifest.json`, MAX_META_BYTES);
    } catch (e) {
      if (isRunboxError(e, 'limit_exceeded')) throw bad('has a manifest larger than 64 KiB');
      throw e;
    }
    if (!text) throw bad('has no manifest');
    let raw: unknown;
    try {
      raw = JSON.parse(text.toString('utf8'));
    } catch {
      throw bad('has a manifest that is not valid JSON');
    }
    const r = ManifestSchema.safeParse(raw);
    if (!r.success) throw bad(`has an invalid manifest (field ${issueField(r.error)})`);
    return { format: 1, meta: checkCheckpointMeta(r.data.meta, name, jobId), data: r.data.data };
  }

  async list(jobId: string): Promise<CheckpointMeta[]> {
    const { names } = await this.complete(jobId);
    return Promise.all(names.map(async (n) => (await this.manifest(jobId, n)).meta));
  }

  /** Keeps the newest `keep` complete checkpoints; everything older goes, incomplete leftovers too. */
  async prune(jobId: string, keep: number): Promise<void> {
    const prefix = this.prefix(jobId);
    const { names, all } = await this.complete(jobId);
    const oldestKept = names.length > keep ? names[names.length - keep]! : names[0];
    if (oldestKept === undefined) return;
    const gone = all.filter((o) => o.key.slice(prefix.length).split('/')[0]! < oldestKept).map((o) => o.key);
    await this.objects.remove(gone);
  }

  async removeAll(jobId: string): Promise<void> {
    await this.objects.removePrefix(this.prefix(jobId));
    await fs.rm(this.localDir(jobId), { recursive: true, force: true });
  }

  /**
   * The newest checkpoint that downloads and verifies. One that fails its checks (corrupt,
   * truncated, forged, over the job's limits) is skipped, with a warning, for the one before it;
   * the store being unreachable is an error (the caller retries), not a reason to go back further.
   */
  async restorable(jobId: string, caps: CheckpointCaps): Promise<RestorableCheckpoint | undefined> {
    const { names } = await this.complete(jobId);
    let firstError: unknown;
    for (const name of names.reverse()) {
      try {
        return await this.download(jobId, name, caps);
      } catch (e) {
        if (!isRunboxError(e, 'checkpoint_incompatible')) throw e;
        firstError ??= e;
        this.log?.warn({ jobId, checkpoint: name, err: e }, 'checkpoint in the object store skipped');
      }
    }
    if (firstError) throw firstError;
    return undefined;
  }

  private async download(jobId: string, name: string, caps: CheckpointCaps): Promise<RestorableCheckpoint> {
    const bad = (why: string) => badCheckpoint(name, jobId, why);
    const m = await this.manifest(jobId, name);
    const dir = path.join(this.localDir(jobId), `.restore-${name}-${process.pid}-${++this.downloads}`);
    const specs = checkpointFiles(dir, caps);
    // Tar adds a header per file and pads to its record size: bounded by the entries' caps plus slack.
    const maxData = specs.reduce((n, s) => n + s.maxBytes, 0) + 64 * 1024 * 1024;
    if (m.data.bytes > maxData) throw bad(`has ${m.data.bytes} bytes of data, more than job ${jobId}'s limits allow`);
    const obj = await this.objects.get(`${this.prefix(jobId)}${name}/data.tar`);
    if (!obj) throw bad('has lost its data object');
    const started = Date.now();
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      if (obj.bytes >= 0 && obj.bytes !== m.data.bytes) throw bad(`has a data object of ${obj.bytes} bytes; its manifest says ${m.data.bytes}`);
      const hashed = hashingStream({ maxBytes: m.data.bytes, what: `checkpoint ${name}'s data` });
      obj.body.on('error', (e) => hashed.stream.destroy(e));
      obj.body.pipe(hashed.stream);
      const reader = new SocketReader(hashed.stream, DOWNLOAD_IDLE_MS);
      try {
        await receiveFiles(reader, specs);
        reader.discard(m.data.bytes); // tar's end padding; the hash covers it too
        await finished(hashed.stream);
      } catch (e) {
        if (isRunboxError(e, 'invalid_argument') || isRunboxError(e, 'limit_exceeded')) throw bad(`has unusable data: ${(e as Error).message}`);
        throw e;
      } finally {
        reader.detach();
      }
      const got = hashed.result();
      if (got.bytes !== m.data.bytes || got.sha256 !== m.data.sha256) throw bad('has data that does not match the SHA-256 of its manifest');
    } catch (e) {
      obj.body.destroy();
      await fs.rm(dir, { recursive: true, force: true });
      throw e;
    }
    this.log?.info({ jobId, checkpoint: m.meta.id, bytes: m.data.bytes, downloadMs: Date.now() - started }, 'checkpoint downloaded');
    return {
      meta: m.meta,
      imagesDir: specs[0]!.path,
      diskImage: specs[1]!.path,
      disposable: true,
      release: () => fs.rm(dir, { recursive: true, force: true }),
    };
  }
}

/** A store that sends nothing for this long while a download waits is given up on. */
const DOWNLOAD_IDLE_MS = 30_000;

interface Manifest {
  format: 1;
  meta: CheckpointMeta;
  data: { bytes: number; sha256: string };
}

/** The manifest's frame; `meta` is checked by parseCheckpointMeta (the same rules as a directory store's meta.json). */
const ManifestSchema = z.object({
  format: z.literal(1),
  meta: z.record(z.string(), z.unknown()),
  data: z.object({ bytes: z.number().int().min(1024).max(Number.MAX_SAFE_INTEGER), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
});

/**
 * The checkpoint store the configuration asks for: the directory store (RUNBOX_OBJECT_STORE=dir),
 * or checkpoints in S3 with RUNBOX_CHECKPOINT_DIR as local working space. `embedded` must have
 * been resolved to an s3 location by whoever started the embedded server (cli/embedded-s3.ts).
 */
export async function openCheckpointStore(
  choice: ObjectStoreChoice,
  checkpointDir: string,
  log: Logger,
): Promise<{ store: CheckpointStore; objects?: ObjectStore }> {
  if (choice.kind === 'dir') return { store: new DirectoryCheckpointStore(checkpointDir) };
  if (choice.kind === 'embedded') {
    throw new RunboxError('invalid_argument', 'RUNBOX_OBJECT_STORE=embedded is started by `runbox up` / `runbox cluster up`; a worker started on its own needs s3://BUCKET[/PREFIX] and RUNBOX_S3_ENDPOINT');
  }
  const objects = new S3ObjectStore(choice.location);
  try {
    await objects.ensureBucket();
  } catch (e) {
    objects.close();
    throw e;
  }
  log.info({ store: objects.description }, 'checkpoints go to the object store');
  return { store: new ObjectCheckpointStore(objects, checkpointDir, log), objects };
}
