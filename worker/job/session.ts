import { isRunboxError, RunboxError } from '../../core/errors.js';
import { finalStatus } from '../../core/job-state.js';
import { isTerminal, type Job, type JobRequest, type JobStatus } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import { recordHistogram } from '../../core/store/metrics.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { RunningJob, RunningJobs } from '../running.js';
import { MAX_RESTORES, RESTORE_NOTE, type JobDeps } from './deps.js';
import { restoreFromCheckpoint } from './restore.js';
import { supervise, templateDefaults, type Outcome, type SuperviseMode } from './supervise.js';

/** Gives a VPS back once the job is done with it (a pool's release, or a destroy). */
export type Dispose = (vps: RuncVps) => Promise<void>;

/** How long a final status is retried while Redis cannot take it (the result is lost only if this host dies meanwhile). */
const FINAL_WRITE_DEADLINE_MS = 30 * 60_000;

/**
 * One job's life on this host, from the moment the host holds it (started from the queue, moved
 * here, restored from a checkpoint) to the moment it lets go. Every path ends in `settle`, which
 * leaves the job in a definite state:
 *   - ended:  its result is recorded; VPS, checkpoints, tenant slot and lease are released;
 *   - left:   it runs on another host now (slot and lease went with it); the VPS is released;
 *   - lost:   its VPS is killed and destroyed, then it is restored here from its newest
 *             checkpoint (at most MAX_RESTORES times), or it ends `failed` with the loss's code.
 * The session is the only place that releases the job's tenant slot and lease on this host.
 */
export class JobSession {
  readonly entry: RunningJob;
  private closed = false;

  constructor(
    readonly deps: JobDeps,
    private readonly running: RunningJobs,
    readonly jobId: string,
    readonly tenant: string,
    readonly log: Logger,
  ) {
    // One session per job and host: a second one would run a second copy.
    if (running.byId.has(jobId)) throw new RunboxError('conflict', `job ${jobId} already runs on this host`);
    this.entry = { jobId, tenant, abort: new AbortController(), outputBytes: 0 };
    running.byId.set(jobId, this.entry);
  }

  /**
   * Runs `vps` for the job to its outcome and settles it. `job` is the record as the caller last
   * read it (its limits, its start time); `dispose` gives the VPS back when the job is done with it.
   */
  async drive(job: Job, req: JobRequest, vps: RuncVps, mode: SuperviseMode, dispose: Dispose): Promise<void> {
    const startedAt = mode.kind === 'adopt' ? mode.startedAt : new Date().toISOString();
    // Who the job runs as (its request's user, else its template's default): what decides whether it can be checkpointed.
    const runAs = mode.kind === 'run' ? { runAs: req.user ?? (await templateDefaults(this.deps, vps))?.user ?? 'root', progress: null } : {};
    const toRunning = this.deps.jobs
      .transition(job.id, 'running', { startedAt, host: this.deps.hostId, ...runAs }, { host: this.deps.hostId, note: mode.kind === 'adopt' ? mode.note : undefined })
      .catch((e: unknown) => {
        // Canceled (or ended by the cluster) meanwhile: the record says so; the VPS goes on until the cancel reaches it.
        if (!isRunboxError(e, 'conflict')) this.log.warn({ err: e }, 'recording the job as running failed');
      });
    let outcome: Outcome;
    try {
      outcome = await supervise(this.deps, { job, req, entry: this.entry, log: this.log }, vps, mode);
    } catch (e) {
      // Not the VPS's doing (supervise turns those into outcomes): still, the job must not hang here.
      this.log.error({ err: e }, 'supervising the job failed');
      outcome = { kind: 'lost', code: mode.kind === 'adopt' ? 'restore_failed' : 'vps_lost', message: `supervising the job failed: ${(e as Error).message}` };
    }
    await toRunning;
    await this.settle(outcome, job, req, vps, dispose);
  }

  private async settle(outcome: Outcome, job: Job, req: JobRequest, vps: RuncVps, dispose: Dispose): Promise<void> {
    if (outcome.kind === 'left') {
      // Its new host records the result (and its checkpoints stay: the job lives on).
      void dispose(vps).catch((e: unknown) => this.log.error({ err: e, vpsId: vps.id }, 'destroying the VPS failed'));
      this.close();
      return;
    }
    if (outcome.kind === 'lost') {
      // Nothing of it may run on while a copy comes back: killed from the host, destroyed, then restored.
      await vps.killAll().catch((e: unknown) => this.log.warn({ err: e }, 'killing the lost VPS failed'));
      await dispose(vps).catch((e: unknown) => this.log.error({ err: e, vpsId: vps.id }, 'destroying the lost VPS failed'));
      await this.restoreOrFail(job, req, outcome.code, outcome.message);
      return;
    }
    void dispose(vps).catch((e: unknown) => this.log.error({ err: e, vpsId: vps.id }, 'destroying the VPS failed'));
    const { result, artifacts } = outcome;
    const status = finalStatus(result);
    const error = result.error
      ? { code: result.error.code, message: result.error.message }
      : result.oomKilled
        ? { code: 'oom_killed', message: `out of memory: the job exceeded its ${job.limits.memoryMb} MiB limit` }
        : result.timedOut
          ? { code: 'timeout', message: `the job exceeded its ${job.limits.timeoutSec} s time limit` }
          : null;
    await this.finish(status, {
      exitCode: result.exitCode,
      signal: result.signal,
      oomKilled: result.oomKilled,
      error,
      startedAt: result.startedAt,
      finishedAt: result.finishedAt,
      usage: result.usage,
      outputBytes: result.outputBytes,
      outputTruncated: result.outputTruncated,
      artifacts: artifacts.list,
      artifactsTruncated: artifacts.truncated,
    });
    void recordHistogram(this.deps.redis, this.deps.jobs.keys, 'job_queue_seconds', (Date.parse(result.startedAt) - Date.parse(job.createdAt)) / 1000).catch(() => undefined);
    void recordHistogram(this.deps.redis, this.deps.jobs.keys, 'job_run_seconds', result.usage.wallMs / 1000).catch(() => undefined);
    this.log.info({ status, exitCode: result.exitCode, wallMs: result.usage.wallMs }, 'job finished');
  }

  /**
   * After a loss: the newest checkpoint brings the job back here (under this session, which holds
   * its lease), else it ends failed with `code`. Restores are counted in the job's history.
   */
  async restoreOrFail(job: Job, req: JobRequest, code: string, message: string): Promise<void> {
    if (!(await this.stillOurs())) return;
    const stored = await this.deps.jobs.get(job.id).catch(() => null);
    if (!stored || isTerminal(stored.job.status)) {
      this.release(); // ended meanwhile (canceled, or by the cluster): nothing to bring back
      return;
    }
    const restores = stored.job.history.filter((h) => h.note?.startsWith(RESTORE_NOTE)).length;
    let none = false;
    if (restores < MAX_RESTORES) {
      try {
        const restored = await restoreFromCheckpoint(this.deps, stored.job, message, this.log);
        none = !restored;
        if (restored) {
          this.log.warn({ checkpoint: restored.checkpointId, code }, 'job lost here: restored from its newest checkpoint');
          await this.drive({ ...stored.job, status: 'migrating' }, req, restored.vps, { kind: 'adopt', startedAt: stored.job.startedAt ?? new Date().toISOString(), note: `restored from checkpoint ${restored.checkpointId}` }, (v) => this.deps.engine.destroy(v.id));
          return;
        }
      } catch (e) {
        this.log.error({ err: e }, 'restoring the lost job from its checkpoint failed');
        await this.fail('restore_failed', `${message}; restoring it from its checkpoint failed too: ${(e as Error).message}`);
        return;
      }
    }
    await this.fail(code, none ? `${message}, and it had no checkpoint` : `${message}, and it was restored from checkpoints ${restores} times already`);
  }

  /** Nothing of the job ran here (no VPS could be made): back to the queue for another attempt. */
  async requeue(note: string): Promise<void> {
    await this.deps.jobs.transition(this.jobId, 'queued', { host: null }, { from: ['starting'], host: this.deps.hostId, note });
    this.release();
  }

  /** Ends the job failed with `code` (no result of its own). */
  fail(code: string, message: string): Promise<void> {
    this.log.warn({ code }, `job failed: ${message}`);
    return this.finish('failed', { error: { code, message }, finishedAt: new Date().toISOString() });
  }

  /**
   * Records a final status (retried while Redis cannot take it: losing it would leave a `running`
   * record nobody runs), then lets go of everything the job holds here.
   */
  private async finish(status: JobStatus, patch: Parameters<JobDeps['jobs']['transition']>[2]): Promise<void> {
    if (!(await this.stillOurs())) return;
    const deadline = Date.now() + FINAL_WRITE_DEADLINE_MS;
    for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await this.deps.jobs.transition(this.jobId, status, patch, { host: this.deps.hostId });
        break;
      } catch (e) {
        // Already final (canceled through the API while finishing, or ended by the cluster): that record stands.
        if (isRunboxError(e, 'conflict') || isRunboxError(e, 'not_found')) break;
        if (Date.now() > deadline) {
          this.log.error({ err: e, status }, 'giving up recording the final status');
          break;
        }
        this.log.warn({ err: e, status }, 'recording the final status failed; retrying');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    // The slot first: a client told the job ended may submit its next one at once.
    await this.deps.slots.release(this.tenant, this.jobId).catch((e: unknown) => this.log.warn({ err: e }, 'releasing the tenant slot failed'));
    await this.deps.jobs.expire(this.jobId, this.deps.resultTtlSec).catch((e: unknown) => this.log.warn({ err: e }, 'setting the result TTL failed'));
    // A finished job's checkpoints are of no further use.
    void this.deps.checkpoints.removeAll(this.jobId).catch((e: unknown) => this.log.warn({ err: e }, 'removing checkpoints failed'));
    this.release();
  }

  /**
   * Whether this host still holds the job's lease. If another holder took it (the cluster ended it,
   * or recovered it while this host was cut off), this host records nothing and lets go.
   */
  private async stillOurs(): Promise<boolean> {
    let ours = !this.entry.fenced;
    if (ours) {
      const lease = await this.deps.leases.get(this.jobId).catch(() => undefined);
      // Unreadable (Redis down): assume ours; the final write retries until Redis answers.
      ours = lease === undefined || lease?.holder === this.deps.instance;
    }
    if (!ours) {
      this.log.warn('another holder took this job: nothing of it is recorded here');
      this.close();
    }
    return ours;
  }

  /** The job's tenant slot and lease go, and this host forgets it. */
  private release(): void {
    void this.deps.slots.release(this.tenant, this.jobId).catch((e: unknown) => this.log.warn({ err: e }, 'releasing the tenant slot failed'));
    void this.deps.leases.release(this.jobId, this.deps.instance).catch((e: unknown) => this.log.warn({ err: e }, 'releasing the job lease failed'));
    this.close();
  }

  /** This host no longer holds the job (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.running.byId.get(this.jobId) === this.entry) this.running.byId.delete(this.jobId);
  }

  get isClosed(): boolean {
    return this.closed;
  }
}
