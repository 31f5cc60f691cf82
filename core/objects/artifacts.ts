import { createHash } from 'node:crypto';
import { RunboxError } from '../errors.js';
import { checkJobId, JOB_ID } from '../ids.js';
import type { ArtifactStorage, PutResult } from '../store/artifacts.js';
import type { ObjectStore } from './store.js';

/**
 * Artifacts in the object store (RUNBOX_OBJECT_STORE=s3://…): each file is one object
 * `artifacts/<job>/<sha256 of its path>` (paths are the job's text: hashed, never a key of their
 * own). Nothing of them is held in Redis, so the per-tenant budget of artifact bytes in Redis
 * (RUNBOX_TENANT_MAX_ARTIFACT_BYTES) does not apply; RUNBOX_MAX_ARTIFACT_BYTES per job does (the
 * worker collects no more). They live as long as the job's record: ArtifactSweeper removes those
 * of records that are gone.
 */
/** Artifact uploads in flight per job. */
const PUT_CONCURRENCY = 8;

export class ObjectArtifactStore implements ArtifactStorage {
  constructor(private readonly objects: ObjectStore) {}

  static key(jobId: string, path: string): string {
    return `artifacts/${checkJobId(jobId)}/${createHash('sha256').update(path).digest('hex')}`;
  }

  async put(jobId: string, files: Array<{ path: string; content: Buffer }>): Promise<PutResult> {
    // A job may leave up to 1000 files (the worker's cap): uploads go PUT_CONCURRENCY at a time.
    let storedBytes = 0;
    let next = 0;
    const lane = async () => {
      for (let f = files[next++]; f; f = files[next++]) storedBytes += (await this.objects.put(ObjectArtifactStore.key(jobId, f.path), f.content)).bytes;
    };
    await Promise.all(Array.from({ length: Math.min(PUT_CONCURRENCY, files.length) }, lane));
    return { storedBytes, tenantBytes: 0, skipped: [] };
  }

  /** The file's bytes, which must be exactly as many as recorded (the store is not trusted to have kept them). */
  async get(jobId: string, path: string, size: number): Promise<Buffer | null> {
    let content: Buffer | undefined;
    try {
      content = await this.objects.getSmall(ObjectArtifactStore.key(jobId, path), size);
    } catch (e) {
      if (e instanceof RunboxError && e.code === 'limit_exceeded') throw new RunboxError('unavailable', `artifact of job ${jobId} in the object store is larger than recorded`);
      throw e;
    }
    if (!content) return null;
    if (content.length !== size) throw new RunboxError('unavailable', `artifact of job ${jobId} in the object store is smaller than recorded`);
    return content;
  }

  /**
   * Removes the artifacts of jobs whose record is gone (`exists`: expired with the job's result).
   * Returns the job ids cleaned.
   */
  async sweep(exists: (jobId: string) => Promise<boolean>): Promise<string[]> {
    const gone: string[] = [];
    for (const id of (await this.objects.children('artifacts/')).filter((c) => JOB_ID.test(c))) {
      if (await exists(id)) continue;
      await this.objects.removePrefix(`artifacts/${id}/`);
      gone.push(id);
    }
    return gone;
  }
}
