import { canCheckpoint, nonRootMessage } from '../core/checkpointable.js';
import { errorMessage, isRunboxError, RunboxError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { isTerminal, type Job } from '../core/job.js';
import type { Logger } from '../core/log.js';
import type { JobStore } from '../core/store/jobs.js';
import { snapshot } from '../runtime/checkpoint/checkpoint.js';
import type { CheckpointStore } from '../runtime/checkpoint/store.js';
import type { RuncEngine } from '../runtime/runc-engine.js';
import { Places } from './places.js';
import type { RunningJob } from './running.js';

export type CheckpointEntry = Job['checkpoints'][number];

/** Checkpoints one host takes at the same time (each is a CRIU dump plus a disk copy on its CPU). */
export const MAX_CONCURRENT = 2;

/**
 * Checkpoints of running jobs (on request, on a job's `checkpoint.everySec`, or by the host policy),
 * one at a time per job. The job is `checkpointing` while its VPS is frozen and dumped, and keeps
 * running afterwards; its record lists the checkpoints, the store keeps the newest `keep` complete.
 */
export class JobCheckpointer {
  private readonly busy = new Map<string, Promise<CheckpointEntry>>();
  private readonly places = new Places(MAX_CONCURRENT);

  constructor(
    private readonly deps: { engine: RuncEngine; store: CheckpointStore; jobs: JobStore; hostId: string; keep: number; log: Logger; checkpointNonRoot: boolean },
  ) {}

  /**
   * `automatic` checkpoints (a job's interval, the host policy) skip a turn when the host already
   * runs MAX_CONCURRENT (a `conflict`); requested ones wait for a place. CRIU and the disk copy
   * run on the host's CPU, not the job's: however many jobs ask, a host dumps only so many at once.
   */
  checkpoint(job: RunningJob, reason: string, o: { automatic?: boolean } = {}): Promise<CheckpointEntry> {
    const inFlight = this.busy.get(job.jobId);
    if (inFlight) return inFlight;
    const place = o.automatic ? this.places.tryTake() : undefined;
    if (o.automatic && !place) return Promise.reject(new RunboxError('conflict', `host ${this.deps.hostId} is busy with ${this.places.inUse} other checkpoints`));
    const p = (place ? Promise.resolve(place) : this.places.take())
      .then((free) => this.run(job, reason).finally(free))
      .finally(() => this.busy.delete(job.jobId));
    this.busy.set(job.jobId, p);
    return p;
  }


  private async run(job: RunningJob, reason: string): Promise<CheckpointEntry> {
    const { jobs, store, engine, hostId } = this.deps;
    const vps = job.vps;
    if (!vps) throw new RunboxError('conflict', `job ${job.jobId} has not started yet`);
    // A job on its way to another host (its record may already say `running` there) is not this host's to checkpoint.
    if (job.leaving || vps.isHandedOver) throw new RunboxError('conflict', `job ${job.jobId} is moving away from ${this.deps.hostId}`);
    const stored = await jobs.get(job.jobId);
    if (!stored) throw new RunboxError('not_found', `job ${job.jobId} not found`);
    if (stored.job.host !== hostId) throw new RunboxError('conflict', `job ${job.jobId} runs on ${stored.job.host}, not on ${hostId}`);
    if (!canCheckpoint(stored.job.runAs, { checkpointNonRoot: this.deps.checkpointNonRoot })) {
      throw new RunboxError('checkpoint_unsupported', nonRootMessage(job.jobId, stored.job.runAs!, [hostId]));
    }
    await jobs.transition(job.jobId, 'checkpointing', {}, { from: ['running'], host: hostId, note: reason });
    const seq = stored.job.checkpoints.length + 1;
    const id = newId(6);
    try {
      const staged = await store.stage(job.jobId, seq);
      const r = await snapshot(engine, vps, staged);
      const spec = vps.info().spec;
      const entry: CheckpointEntry = { id, createdAt: new Date().toISOString(), sizeBytes: r.imagesBytes + r.diskBytes, outputOffset: job.outputBytes };
      await store.commit(
        job.jobId,
        {
          id,
          jobId: job.jobId,
          seq,
          createdAt: entry.createdAt,
          host: hostId,
          template: { name: spec.template.name, hash: spec.template.hash },
          network: { mode: vps.info().network.mode, address: vps.info().network.address },
          hostname: spec.hostname,
          outputOffset: entry.outputOffset,
          frozenMs: r.frozenMs,
          imagesBytes: r.imagesBytes,
          diskBytes: r.diskBytes,
          runtime: this.deps.engine.ociRuntime.kind,
        },
        staged.dir,
      );
      await store.prune(job.jobId, this.deps.keep);
      await this.backToRunning(job.jobId, { checkpoints: [...stored.job.checkpoints, entry] });
      this.deps.log.info({ jobId: job.jobId, checkpoint: id, frozenMs: r.frozenMs, bytes: entry.sizeBytes }, 'checkpointed');
      return entry;
    } catch (e) {
      await this.backToRunning(job.jobId, {}, `checkpoint failed: ${errorMessage(e)}`);
      // The job ended while it was checkpointed (its end removes its checkpoints, staged ones too).
      const now = await jobs.get(job.jobId).catch(() => undefined);
      if (!now || isTerminal(now.job.status)) throw new RunboxError('conflict', `job ${job.jobId} ended during its checkpoint`, { cause: e });
      throw e;
    }
  }

  /** The job may have ended meanwhile (its final status wins): then there is nothing to undo. */
  private async backToRunning(jobId: string, patch: Partial<Job>, note?: string): Promise<void> {
    try {
      await this.deps.jobs.transition(jobId, 'running', patch, { from: ['checkpointing'], host: this.deps.hostId, note });
    } catch (e) {
      if (!isRunboxError(e, 'conflict')) throw e;
      if (patch.checkpoints) await this.deps.jobs.update(jobId, { checkpoints: patch.checkpoints });
    }
  }
}
