import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';

/**
 * Where checkpoints live. A checkpoint of a job is a directory with:
 *   images/     CRIU images (process tree, memory, files, the agent's state)
 *   fs.tar      the VPS's filesystem changes since the previous checkpoint (GNU tar incremental,
 *               level n of the job's chain; restoring replays fs.tar of every checkpoint in order)
 *   meta.json   CheckpointMeta
 * The directory driver keeps them under one root, which in production is a shared mount (NFS…)
 * so any host can restore; an object-store driver would implement the same interface.
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
  fsBytes: number;
}

export interface CheckpointStore {
  /** A new, empty directory for checkpoint `seq` of `jobId` (images/ inside); commit() makes it visible. */
  stage(jobId: string, seq: number): Promise<{ dir: string; imagesDir: string; fsTar: string; snapshot: string }>;
  commit(jobId: string, meta: CheckpointMeta, stagedDir: string): Promise<void>;
  list(jobId: string): Promise<CheckpointMeta[]>;
  /** Drops the CRIU images of all but the newest `keep` checkpoints (fs increments stay: the chain needs them). */
  prune(jobId: string, keep: number): Promise<void>;
  removeAll(jobId: string): Promise<void>;
  /** The newest checkpoint that can still be restored (its images kept), with its fs chain. */
  restorable(jobId: string): Promise<{ meta: CheckpointMeta; imagesDir: string; fsTars: string[] } | undefined>;
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
    // The incremental-tar state of the job's chain: shared by all its checkpoints, updated by each.
    return { dir, imagesDir: path.join(dir, 'images'), fsTar: path.join(dir, 'fs.tar'), snapshot: path.join(this.jobDir(jobId), 'fs.snar') };
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
    for (const n of names.slice(0, Math.max(0, names.length - keep))) await fs.rm(path.join(dir, n, 'images'), { recursive: true, force: true });
  }

  async restorable(jobId: string) {
    const dir = this.jobDir(jobId);
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d{6}-/.test(n)).sort();
    for (let i = names.length - 1; i >= 0; i--) {
      const imagesDir = path.join(dir, names[i]!, 'images');
      if (!(await fs.stat(imagesDir).then(() => true, () => false))) continue;
      const meta = JSON.parse(await fs.readFile(path.join(dir, names[i]!, 'meta.json'), 'utf8')) as CheckpointMeta;
      return { meta, imagesDir, fsTars: names.slice(0, i + 1).map((n) => path.join(dir, n, 'fs.tar')) };
    }
    return undefined;
  }

  async removeAll(jobId: string): Promise<void> {
    await fs.rm(this.jobDir(jobId), { recursive: true, force: true });
  }
}
