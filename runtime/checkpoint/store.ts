import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { RunboxError } from '../../core/errors.js';
import { checkJobId, JOB_ID } from '../../core/ids.js';
import { HostnameSchema, NetworkModeSchema, TemplateNameSchema } from '../../core/vps-request.js';
import { VERSION } from '../templates/store.js';

/**
 * Where checkpoints live. A checkpoint of a job is a directory with:
 *   images/     CRIU images (process tree, memory, files, the agent's state)
 *   disk.img    the VPS's disk (its writable layer) at the same instant, a sparse copy: restoring
 *               it keeps the inode numbers of the job's files (runtime/storage/layer.ts)
 *   meta.json   CheckpointMeta
 * Each checkpoint is complete on its own: older ones are removed whole (prune). The directory
 * driver keeps them under one root, which in production is a shared mount (NFS…) so any host can
 * restore; an object-store driver would implement the same interface.
 */
export interface CheckpointMeta {
  id: string;
  jobId: string;
  seq: number;
  createdAt: string;
  host: string;
  template: { name: string; hash: string };
  network: { mode: string; address?: string };
  hostname: string;
  /** Output bytes the host had received when the VPS resumed (the exact cut comes from the agent, see PROTOCOL.md `Q`). */
  outputOffset: number;
  frozenMs: number;
  imagesBytes: number;
  /** Allocated bytes of disk.img (sparse). */
  diskBytes: number;
  /** The OCI runtime that ran the VPS (absent: runc, as before crun): only it can restore the images. */
  runtime?: 'runc' | 'crun';
}

export interface CheckpointStore {
  /** A new, empty directory for checkpoint `seq` of `jobId` (images/ inside); commit() makes it visible. */
  stage(jobId: string, seq: number): Promise<{ dir: string; imagesDir: string; diskImage: string }>;
  commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void>;
  list(jobId: string): Promise<CheckpointMeta[]>;
  /** Removes all but the newest `keep` checkpoints. */
  prune(jobId: string, keep: number): Promise<void>;
  removeAll(jobId: string): Promise<void>;
  /**
   * The newest checkpoint (complete: committed ones always are), as local files. `caps` bound
   * what a store that downloads may write (the job's memory and disk limits). `release()` once
   * the restore is done with the files (a downloaded copy is removed; `disposable`: its disk image
   * may be moved instead of copied).
   */
  restorable(jobId: string, caps: CheckpointCaps): Promise<RestorableCheckpoint | undefined>;
}

export interface CheckpointCaps {
  memoryMb: number;
  diskMb: number;
}

export interface RestorableCheckpoint {
  meta: CheckpointMeta;
  imagesDir: string;
  diskImage: string;
  disposable: boolean;
  release(): Promise<void>;
}


/** A checkpoint's name in a store: `<seq, 6 digits>-<id>` (sorts by sequence). */
export const checkpointName = (meta: Pick<CheckpointMeta, 'seq' | 'id'>): string => `${String(meta.seq).padStart(6, '0')}-${meta.id}`;
export const CHECKPOINT_NAME = /^\d{6}-[A-Za-z0-9_-]{1,64}$/;

/**
 * meta.json as read back: the checkpoint store may be a shared mount that other hosts write, so
 * every field a restore uses (template name and version: a path; address: a lease file name;
 * hostname: the VPS's) is checked. Unknown fields are kept (newer writers), never used.
 */
export const CheckpointMetaSchema = z.looseObject({
  id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  jobId: z.string().regex(JOB_ID),
  seq: z.number().int().min(0).max(999_999),
  createdAt: z.string().max(64),
  host: z.string().regex(/^[A-Za-z0-9._-]{1,253}$/),
  template: z.object({ name: TemplateNameSchema, hash: z.string().regex(VERSION) }),
  network: z.object({ mode: NetworkModeSchema, address: z.ipv4().optional() }),
  hostname: HostnameSchema,
  outputOffset: z.number().int().nonnegative(),
  frozenMs: z.number().nonnegative(),
  imagesBytes: z.number().int().nonnegative(),
  diskBytes: z.number().int().nonnegative(),
  runtime: z.enum(['runc', 'crun']).optional(),
});
// A field added to CheckpointMeta must be added to the schema too (this stops compiling otherwise).
const _metaSchemaCoversMeta: z.ZodType<CheckpointMeta> = CheckpointMetaSchema;
export const MAX_META_BYTES = 64 * 1024;

/** `checkpoint_incompatible` naming the checkpoint (printable, shortened) and what is wrong with it. */
export function badCheckpoint(name: string, jobId: string, why: string): RunboxError {
  return new RunboxError('checkpoint_incompatible', `checkpoint ${name.slice(0, 80).replace(/[^\x20-\x7e]/g, '?')} of job ${jobId} ${why}`);
}

/**
 * Reads `<dir>/<name>/meta.json` (name: `<seq>-<id>`) of `jobId`: no symlink followed, size
 * capped, checked, consistent with its directory. A message names the checkpoint and the field,
 * never the file's content.
 */
async function readMeta(dir: string, name: string, jobId: string): Promise<CheckpointMeta> {
  const bad = (why: string) => badCheckpoint(name, jobId, why);
  let text: string;
  try {
    const fh = await fs.open(path.join(dir, name, 'meta.json'), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > MAX_META_BYTES) throw bad('has a meta.json that is not a regular file of at most 64 KiB');
      const buf = Buffer.alloc(st.size);
      text = buf.subarray(0, (await fh.read(buf, 0, st.size, 0)).bytesRead).toString('utf8');
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (e instanceof RunboxError) throw e;
    throw bad(`has no readable meta.json (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return parseCheckpointMeta(text, name, jobId);
}

/** The field of a schema's first complaint, as a message may quote it: plain names and indexes, anything else "?". */
export function issueField(error: z.ZodError): string {
  return error.issues[0]!.path.map((k) => (typeof k === 'number' || /^[A-Za-z]{1,32}$/.test(String(k)) ? String(k) : '?')).join('.') || '(top level)';
}

/**
 * meta.json's text as a checkpoint's metadata: checked field by field and against the checkpoint
 * it claims to be (`name`, `jobId`). A message names the checkpoint and the field, never the content.
 */
export function parseCheckpointMeta(text: string, name: string, jobId: string): CheckpointMeta {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw badCheckpoint(name, jobId, 'has a meta.json that is not valid JSON');
  }
  return checkCheckpointMeta(raw, name, jobId);
}

/** A checkpoint's metadata already parsed from JSON (meta.json, or a manifest's `meta`), checked as parseCheckpointMeta does. */
export function checkCheckpointMeta(raw: unknown, name: string, jobId: string): CheckpointMeta {
  const bad = (why: string) => badCheckpoint(name, jobId, why);
  const r = CheckpointMetaSchema.safeParse(raw);
  if (!r.success) throw bad(`has an invalid meta.json (field ${issueField(r.error)})`);
  const meta = r.data as CheckpointMeta;
  if (meta.jobId !== jobId || name !== checkpointName(meta)) throw bad('has a meta.json of another checkpoint');
  return meta;
}

/** `<root>/<jobId>`, for a job id that is one (never a path in disguise). */
export function jobDirOf(root: string, jobId: string): string {
  return path.join(root, checkJobId(jobId));
}

/** A new, empty staging directory for checkpoint `seq` under `<root>/<jobId>` (images/ inside). */
export async function stageIn(root: string, jobId: string, seq: number): Promise<{ dir: string; imagesDir: string; diskImage: string }> {
  const dir = path.join(jobDirOf(root, jobId), `.staging-${seq}-${process.pid}`);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(path.join(dir, 'images'), { recursive: true, mode: 0o700 });
  return { dir, imagesDir: path.join(dir, 'images'), diskImage: path.join(dir, 'disk.img') };
}

export class DirectoryCheckpointStore implements CheckpointStore {
  constructor(readonly root: string) {}

  private jobDir(jobId: string): string {
    return jobDirOf(this.root, jobId);
  }

  stage(jobId: string, seq: number) {
    return stageIn(this.root, jobId, seq);
  }

  async commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void> {
    await fs.writeFile(path.join(stagedDir, 'meta.json'), JSON.stringify(meta, null, 2));
    await fs.rename(stagedDir, path.join(this.jobDir(jobId), checkpointName(meta)));
  }

  async list(jobId: string): Promise<CheckpointMeta[]> {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    return Promise.all(names.map((n) => readMeta(dir, n, jobId)));
  }

  async prune(jobId: string, keep: number): Promise<void> {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    for (const n of names.slice(0, Math.max(0, names.length - keep))) await fs.rm(path.join(dir, n), { recursive: true, force: true });
  }

  async restorable(jobId: string, _caps?: CheckpointCaps): Promise<RestorableCheckpoint | undefined> {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    const newest = names.at(-1);
    if (!newest) return undefined;
    const meta = await readMeta(dir, newest, jobId);
    // The store's own copy: a restore copies the disk image, the checkpoint stays for the next.
    return { meta, imagesDir: path.join(dir, newest, 'images'), diskImage: path.join(dir, newest, 'disk.img'), disposable: false, release: async () => undefined };
  }

  async removeAll(jobId: string): Promise<void> {
    await fs.rm(this.jobDir(jobId), { recursive: true, force: true });
  }
}
