import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';

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
}

export interface CheckpointStore {
  /** A new, empty directory for checkpoint `seq` of `jobId` (images/ inside); commit() makes it visible. */
  stage(jobId: string, seq: number): Promise<{ dir: string; imagesDir: string; diskImage: string }>;
  commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void>;
  list(jobId: string): Promise<CheckpointMeta[]>;
  /** Removes all but the newest `keep` checkpoints. */
  prune(jobId: string, keep: number): Promise<void>;
  removeAll(jobId: string): Promise<void>;
  /** The newest checkpoint (complete: committed ones always are). */
  restorable(jobId: string): Promise<{ meta: CheckpointMeta; imagesDir: string; diskImage: string } | undefined>;
}

const JOB_ID = /^[a-z0-9]{8,40}$/;

export class DirectoryCheckpointStore implements CheckpointStore {
  constructor(readonly root: string) {}

  private jobDir(jobId: string): string {
    if (!JOB_ID.test(jobId)) throw new RunboxError('invalid_argument', `invalid job id "${jobId}"`);
    return path.join(this.root, jobId);
  }

  async stage(jobId: string, seq: number) {
    const dir = path.join(this.jobDir(jobId), `.staging-${seq}-${process.pid}`);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(path.join(dir, 'images'), { recursive: true, mode: 0o700 });
    return { dir, imagesDir: path.join(dir, 'images'), diskImage: path.join(dir, 'disk.img') };
  }

  async commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void> {
    await fs.writeFile(path.join(stagedDir, 'meta.json'), JSON.stringify(meta, null, 2));
    await fs.rename(stagedDir, path.join(this.jobDir(jobId), `${String(meta.seq).padStart(6, '0')}-${meta.id}`));
  }

  async list(jobId: string): Promise<CheckpointMeta[]> {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    const metas = await Promise.all(names.map(async (n) => JSON.parse(await fs.readFile(path.join(dir, n, 'meta.json'), 'utf8')) as CheckpointMeta));
    return metas;
  }

  async prune(jobId: string, keep: number): Promise<void> {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    for (const n of names.slice(0, Math.max(0, names.length - keep))) await fs.rm(path.join(dir, n), { recursive: true, force: true });
  }

  async restorable(jobId: string) {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    const newest = names.at(-1);
    if (!newest) return undefined;
    const meta = JSON.parse(await fs.readFile(path.join(dir, newest, 'meta.json'), 'utf8')) as CheckpointMeta;
    return { meta, imagesDir: path.join(dir, newest, 'images'), diskImage: path.join(dir, newest, 'disk.img') };
  }

  async removeAll(jobId: string): Promise<void> {
    await fs.rm(this.jobDir(jobId), { recursive: true, force: true });
  }
}
