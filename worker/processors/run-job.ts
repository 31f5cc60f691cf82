import { DelayedError, type Job as BullJob } from 'bullmq';
import { errorMessage, isRunboxError, RunboxError } from '../../core/errors.js';
import { finalStatus } from '../../core/job-state.js';
import { isTerminal, QueuePayloadSchema, type Job, type JobRequest } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import { MiB } from '../../core/units.js';
import type { ArtifactStore } from '../../core/store/artifacts.js';
import type { JobStore } from '../../core/store/jobs.js';
import type { LogStore } from '../../core/store/logs.js';
import { recordHistogram } from '../../core/store/metrics.js';
import type { TenantSlots } from '../../core/store/slots.js';
import type { Redis } from 'ioredis';
import type { VpsPool } from '../../runtime/pool.js';
import type { RuncEngine } from '../../runtime/runc-engine.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { ensureTemplate } from '../../runtime/templates/builder.js';
import { cachedTemplateInfo } from '../../runtime/templates/store.js';
import { DEFAULT_RECIPES_DIR } from '../../runtime/templates/recipes.js';
import { newId } from '../../core/ids.js';
import { OutputWriter } from '../logs.js';
import type { JobCheckpointer } from '../checkpoints.js';
import type { CheckpointStore } from '../../runtime/checkpoint/store.js';
import { RunningJobs, type RunningJob } from '../running.js';
import { recoverJob } from '../recovery.js';
import type { HostRegistry } from '../../core/store/hosts.js';

export { RunningJobs };

export interface RunJobDeps {
  hostId: string;
  engine: RuncEngine;
  pools: VpsPool[];
  jobs: JobStore;
  logs: LogStore;
  artifacts: ArtifactStore;
  slots: TenantSlots;
  redis: Redis;
  tenantConcurrency: number;
  resultTtlSec: number;
  maxArtifactBytes: number;
  /** Template recipes for on-demand builds (default: templates/ of this checkout). */
  recipesDir?: string;
  checkpointer: JobCheckpointer;
  checkpoints: CheckpointStore;
  /** Host policy: checkpoint jobs running longer than this, every this many seconds (0: off). */
  checkpointAfterSec: number;
  hosts: HostRegistry;
  log: Logger;
}


const SLOT_RETRY_MS = 250;

/**
 * The BullMQ processor: one queued job → one fresh VPS → a recorded result.
 *
 * Retries are for infrastructure only: if no VPS can be made, the job goes back to `queued` and
 * BullMQ retries it with backoff; a job whose command ran is completed whatever its exit status.
 * A job found `running` when picked up again was running on a worker that died: it is recorded
 * as failed with error.code "host_lost" (not re-run: jobs need not be idempotent).
 */
export function createProcessor(deps: RunJobDeps, running: RunningJobs) {
  return async (bull: BullJob, token?: string): Promise<void> => {
    const { jobId, tenant } = QueuePayloadSchema.parse(bull.data);
    const log = deps.log.child({ jobId, tenant });
    const stored = await deps.jobs.get(jobId);
    if (!stored) return; // expired or deleted: nothing to do
    const job = stored.job;
    if (isTerminal(job.status)) return; // e.g. canceled while queued
    if (running.byId.has(jobId)) return; // a duplicate delivery of a job this worker is running
    if (job.status === 'running' || job.status === 'checkpointing' || job.status === 'migrating') {
      // Its host is gone (or this is a duplicate delivery): resume from a checkpoint, or host_lost.
      await recoverJob(deps, running, job, tenant, log);
      return;
    }
    if (job.status === 'starting') {
      // Taken by a worker that stopped before the job ran: it can simply start over, here.
      if (job.host && job.host !== deps.hostId && (await deps.hosts.get(job.host))) return;
      await deps.jobs.transition(jobId, 'queued', { host: null }, { from: ['starting'], note: `host ${job.host} stopped before the job ran` });
      job.status = 'queued';
    }
    if (job.cancelRequested) {
      await deps.jobs.transition(jobId, 'canceled', { finishedAt: new Date().toISOString() }, { host: deps.hostId }).catch(() => undefined);
      return;
    }
    if (!(await deps.slots.acquire(tenant, jobId, deps.tenantConcurrency))) {
      await bull.moveToDelayed(Date.now() + SLOT_RETRY_MS, token);
      throw new DelayedError();
    }
    const entry: RunningJob = { jobId, tenant, abort: new AbortController(), outputBytes: 0 };
    running.byId.set(jobId, entry);
    try {
      await runOne(deps, bull, job, entry, log);
    } finally {
      running.byId.delete(jobId);
      await deps.slots.release(tenant, jobId);
    }
  };
}

async function runOne(deps: RunJobDeps, bull: BullJob, job: Job, entry: RunningJob, log: Logger): Promise<void> {
  const req = await deps.jobs.getRequest(job.id);
  if (!req) throw new RunboxError('internal', `job ${job.id} has no stored request`);
  await deps.jobs.transition(job.id, 'starting', { host: deps.hostId, attempt: job.attempt + 1 }, { host: deps.hostId });

  let vps: RuncVps | undefined;
  let pool: VpsPool | undefined;
  const dispose = (v: RuncVps) => {
    // The VPS served its one job; destroying it does not hold up the result.
    const done = pool ? pool.release(v) : deps.engine.destroy(v.id);
    void done.catch((e) => log.error({ err: e, vpsId: v.id }, 'destroying the VPS failed'));
  };
  try {
    ({ vps, pool } = await acquireVps(deps, req, job));
    await prepare(vps, req, job);
  } catch (e) {
    if (vps) dispose(vps);
    // Nothing of the job ran: put it back for a retry, or fail it on the last attempt.
    const last = bull.attemptsMade + 1 >= (bull.opts.attempts ?? 1);
    log.warn({ err: e, last }, 'could not start the job');
    if (last || !isInfraError(e)) {
      await deps.jobs.transition(job.id, 'failed', { error: errorOf(e), finishedAt: new Date().toISOString() }, { host: deps.hostId });
      await deps.jobs.expire(job.id, deps.resultTtlSec);
      return;
    }
    await deps.jobs.transition(job.id, 'queued', { host: null }, { host: deps.hostId, note: errorMessage(e) });
    throw e;
  }

  if (!vps) throw new RunboxError('internal', 'no VPS');
  await superviseJob(deps, job, req, vps, entry, log, { kind: 'run' }, dispose);
}

/**
 * From "the job's process runs in `vps`" to the recorded result: live output, automatic
 * checkpoints, timeout and cancellation, artifacts, the final status, cleanup. `adopt` is for a job
 * that arrived already running (migrated here or restored from a checkpoint). A job that leaves
 * for another host (`migrated`) is not finished here: its new host records the result.
 */
export async function superviseJob(
  deps: RunJobDeps,
  job: Job,
  req: JobRequest,
  vps: RuncVps,
  entry: RunningJob,
  log: Logger,
  /**
   * `gate` (post-copy arrivals): settles true once every memory page has arrived; false means the
   * VPS ran with memory that never came, so its end (if it ended) is no result of the job.
   */
  mode: { kind: 'run' } | { kind: 'adopt'; startedAt: string; note?: string; gate?: Promise<boolean> },
  dispose: (v: RuncVps) => void,
): Promise<void> {
  const abort = entry.abort;
  entry.vps = vps;
  const writer = new OutputWriter(deps.logs, job.id, log);
  const startedAt = mode.kind === 'adopt' ? mode.startedAt : new Date().toISOString();
  const toRunning = deps.jobs.transition(job.id, 'running', { startedAt, host: deps.hostId }, { host: deps.hostId, note: mode.kind === 'adopt' ? mode.note : undefined });
  // Automatic checkpoints: the job's own interval, else the host policy for long jobs.
  const everySec = req.checkpoint?.everySec ?? deps.checkpointAfterSec;
  const autoCheckpoint =
    everySec > 0
      ? setInterval(() => {
          void deps.checkpointer
            .checkpoint(entry, req.checkpoint?.everySec ? 'checkpoint.everySec' : 'host policy: long-running job')
            .catch((e) => (isRunboxError(e, 'conflict') ? log.debug({ err: e }, 'automatic checkpoint skipped') : log.warn({ err: e }, 'automatic checkpoint failed')));
        }, everySec * 1000)
      : undefined;
  let migrated = false;
  try {
    const common = {
      timeoutSec: Math.max(0.001, job.limits.timeoutSec - (Date.now() - Date.parse(startedAt)) / 1000),
      outputBytes: job.limits.outputBytes,
      signal: abort.signal,
      onOutput: (stream: 'stdout' | 'stderr', data: Buffer, offset: number) => {
        entry.outputBytes = offset + data.length;
        writer.push(stream, data, offset);
      },
    };
    // The template's defaults (from its manifest or image config) fill what the job leaves open.
    const tpl = vps.info().spec.template;
    const defaults = mode.kind === 'run' ? (await cachedTemplateInfo(deps.engine.layout.templatesDir, tpl.name, tpl.hash))?.defaults : undefined;
    const result =
      mode.kind === 'run'
        ? await vps.run({
            ...common,
            argv: req.command ?? ['/bin/sh', '-c', req.script!],
            env: { ...defaults?.env, ...req.env },
            workdir: req.workdir ?? defaults?.workdir,
            user: req.user ?? defaults?.user,
            stdin: req.stdin === undefined ? undefined : Buffer.from(req.stdin),
          })
        : await vps.adopt(
            {
              ...common,
              argv: [],
              // The log is cut back to where this VPS's output resumes: nothing lost, nothing twice.
              onResume: async (offset) => {
                entry.outputBytes = offset;
                await deps.logs.truncate(job.id, offset);
              },
            },
            { startedAt },
          );
    clearInterval(autoCheckpoint);
    await toRunning.catch(() => undefined);
    // Post-copy memory that never arrived: whatever the VPS did is void; the job is recovered instead.
    const voided = mode.kind === 'adopt' && mode.gate !== undefined && !(await mode.gate);
    if (result.migrated || voided) {
      migrated = true;
      await writer.flush();
      return;
    }
    const collected = req.artifacts.length ? await collectArtifacts(deps, vps, req, job.id, log) : { list: [], truncated: false };
    await writer.flush();
    const status = finalStatus(result);
    const error = result.error
      ? { code: result.error.code, message: result.error.message }
      : result.oomKilled
        ? { code: 'oom_killed', message: `out of memory: the job exceeded its ${job.limits.memoryMb} MiB limit` }
        : result.timedOut
          ? { code: 'timeout', message: `the job exceeded its ${job.limits.timeoutSec} s time limit` }
          : null;
    await deps.jobs
      .transition(
        job.id,
        status,
        {
          exitCode: result.exitCode,
          signal: result.signal,
          oomKilled: result.oomKilled,
          error,
          startedAt: result.startedAt,
          finishedAt: result.finishedAt,
          usage: result.usage,
          outputBytes: result.outputBytes,
          outputTruncated: result.outputTruncated,
          artifacts: collected.list,
          artifactsTruncated: collected.truncated,
        },
        { host: deps.hostId },
      )
      .catch((e) => {
        // Canceled through the API while finishing: the record already says so.
        if (!isRunboxError(e, 'conflict')) throw e;
      });
    void recordHistogram(deps.redis, deps.jobs.keys, 'job_queue_seconds', (Date.parse(result.startedAt) - Date.parse(job.createdAt)) / 1000).catch(() => undefined);
    void recordHistogram(deps.redis, deps.jobs.keys, 'job_run_seconds', result.usage.wallMs / 1000).catch(() => undefined);
    await deps.jobs.expire(job.id, deps.resultTtlSec);
    log.info({ status, exitCode: result.exitCode, wallMs: result.usage.wallMs }, 'job finished');
  } finally {
    clearInterval(autoCheckpoint);
    dispose(vps);
    // A finished job's checkpoints are of no further use (a migrated one's still are).
    if (!migrated) void deps.checkpoints.removeAll(job.id).catch((e) => log.warn({ err: e }, 'removing checkpoints failed'));
  }
}


/** Supervises a job that arrived here already running (migrated in) until it ends. */
export async function adoptJob(deps: RunJobDeps, running: RunningJobs, jobId: string, vps: RuncVps, note: string, gate?: Promise<boolean>): Promise<void> {
  const stored = await deps.jobs.get(jobId);
  const req = await deps.jobs.getRequest(jobId);
  if (!stored || !req) {
    await deps.engine.destroy(vps.id);
    throw new RunboxError('not_found', `adopted job ${jobId} has no record`);
  }
  const log = deps.log.child({ jobId, tenant: stored.tenant });
  const entry: RunningJob = { jobId, tenant: stored.tenant, abort: new AbortController(), outputBytes: 0 };
  running.byId.set(jobId, entry);
  await deps.slots.acquire(stored.tenant, jobId, Number.MAX_SAFE_INTEGER); // it holds a slot wherever it runs
  try {
    await superviseJob(deps, stored.job, req, vps, entry, log, { kind: 'adopt', startedAt: stored.job.startedAt ?? new Date().toISOString(), note, gate }, (v) => {
      void deps.engine.destroy(v.id).catch((e) => log.error({ err: e, vpsId: v.id }, 'destroying the VPS failed'));
    });
  } finally {
    running.byId.delete(jobId);
    await deps.slots.release(stored.tenant, jobId);
  }
}

async function acquireVps(deps: RunJobDeps, req: JobRequest, job: Job): Promise<{ vps: RuncVps; pool?: VpsPool }> {
  const pool = deps.pools.find((p) => p.matches(req.template, req.network, job.limits.diskMb));
  if (pool) {
    const { vps } = await pool.acquire();
    return { vps, pool };
  }
  const template = await templateForJob(deps, req.template, job);
  const id = newId();
  const vps = await deps.engine.create(id, {
    template,
    hostname: req.hostname ?? `vps-${id.slice(0, 8)}`,
    network: req.network,
    memoryMb: job.limits.memoryMb,
    cpus: job.limits.cpus,
    pids: job.limits.pids,
    diskMb: job.limits.diskMb,
  });
  return { vps };
}

// ---- on-demand template builds (templates) ------------------------------------------------------
/**
 * The job's template, built first when it has a recipe but is not built on this host: the job
 * stays `starting` with the history note "building template NAME" meanwhile. Builds are shared:
 * jobs asking for the same template wait for the one build of this host (and for a build another
 * process of this host runs, through the builder's lock). No recipe and not built: template_missing.
 */
async function templateForJob(deps: RunJobDeps, name: string, job: Job) {
  return ensureTemplate(name, {
    recipesDir: deps.recipesDir ?? DEFAULT_RECIPES_DIR,
    templatesDir: deps.engine.layout.templatesDir,
    stateDirs: [deps.engine.layout.stateDir],
    log: deps.log.child({ jobId: job.id }),
    onBuild: async () => {
      await deps.jobs
        .transition(job.id, 'starting', {}, { from: ['starting'], host: deps.hostId, note: `building template ${name}` })
        .catch((e: unknown) => deps.log.warn({ err: e, jobId: job.id }, 'could not record the template build note'));
    },
  });
}
// ---- end of on-demand template builds --------------------------------------------------------------

/** Job-specific setup of a (possibly pooled) VPS: limits, hostname, files. */
async function prepare(vps: RuncVps, req: JobRequest, job: Job): Promise<void> {
  await vps.cgroup.setLimits({ memoryBytes: job.limits.memoryMb * MiB, cpus: job.limits.cpus, pids: job.limits.pids });
  if (req.hostname && vps.info().spec.hostname !== req.hostname) await vps.setHostname(req.hostname);
  for (const [path, f] of Object.entries(req.files)) {
    await vps.writeFile(path, Buffer.from(f.content, f.encoding), f.mode);
  }
}

async function collectArtifacts(deps: RunJobDeps, vps: RuncVps, req: JobRequest, jobId: string, log: Logger) {
  try {
    const r = await vps.collect(req.artifacts, { maxBytes: deps.maxArtifactBytes, maxFiles: 1000 });
    await deps.artifacts.put(jobId, r.files.map((f) => ({ path: f.path, content: f.content })));
    return { list: r.files.map((f) => ({ path: f.path, size: f.content.length, mode: f.mode })), truncated: r.truncated };
  } catch (e) {
    log.warn({ err: e }, 'collecting artifacts failed');
    return { list: [], truncated: true };
  }
}

const USER_ERRORS = new Set(['invalid_argument', 'template_missing', 'limit_exceeded']);

function isInfraError(e: unknown): boolean {
  return !(isRunboxError(e) && USER_ERRORS.has(e.code));
}

function errorOf(e: unknown): { code: string; message: string } {
  return { code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) };
}
