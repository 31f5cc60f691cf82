import { isRunboxError } from '../../core/errors.js';
import type { Job, JobRequest } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { cachedTemplateInfo } from '../../runtime/templates/store.js';
import type { RunResult } from '../../runtime/vps.js';
import { OutputWriter } from '../logs.js';
import type { RunningJob } from '../running.js';
import type { JobDeps } from './deps.js';

export type SuperviseMode =
  | { kind: 'run' }
  /**
   * A job that arrived already running (moved here, or restored from a checkpoint). `gate`
   * (post-copy arrivals): settles true once every memory page has arrived; false means the VPS ran
   * with memory that never came, so whatever it did is void.
   */
  | { kind: 'adopt'; startedAt: string; note?: string; gate?: Promise<boolean> };

export type Artifacts = { list: Job['artifacts']; truncated: boolean };

/** How a job's time in one VPS ended. */
export type Outcome =
  /** Its process ended (or was killed for its limits, a cancel, its timeout): a result to record. */
  | { kind: 'ended'; result: RunResult; artifacts: Artifacts }
  /** It went on elsewhere (moved away), or its run here is void (post-copy memory never came). */
  | { kind: 'left'; why: 'migrated' | 'voided' }
  /** This host lost it: its VPS died without an exit status, or the host could not talk to it. */
  | { kind: 'lost'; code: 'vps_lost' | 'restore_failed'; message: string };

export interface SuperviseContext {
  job: Job;
  req: JobRequest;
  entry: RunningJob;
  log: Logger;
}

/**
 * From "the job's process runs in `vps`" to its outcome: live output, automatic checkpoints,
 * timeout and cancellation, artifacts. Records nothing final and disposes nothing: the job's
 * session (session.ts) does, whatever the outcome. Never throws for what the VPS does: a broken
 * agent channel is an outcome (`lost`), not an exception.
 */
export async function supervise(deps: JobDeps, ctx: SuperviseContext, vps: RuncVps, mode: SuperviseMode): Promise<Outcome> {
  const { job, req, entry, log } = ctx;
  entry.vps = vps;
  const writer = new OutputWriter(deps.logs, job.id, log);
  const startedAt = mode.kind === 'adopt' ? mode.startedAt : new Date().toISOString();
  // Automatic checkpoints: the job's own interval, else the host policy for long jobs.
  const everySec = req.checkpoint?.everySec ?? deps.checkpointAfterSec;
  let autoCheckpoint: { stop(): void } | undefined;
  let ended = false;
  if (everySec > 0) {
    const start = () => {
      if (!ended) autoCheckpoint = scheduleCheckpoints(deps, job, entry, everySec, req.checkpoint?.everySec ? 'checkpoint.everySec' : 'host policy: long-running job', log);
    };
    // Post-copy: not before every memory page has arrived (a dump would fault them all in at once).
    if (mode.kind === 'adopt' && mode.gate) void mode.gate.then((ok) => ok && start());
    else start();
  }
  try {
    const common = {
      timeoutSec: Math.max(0.001, job.limits.timeoutSec - (Date.now() - Date.parse(startedAt)) / 1000),
      outputBytes: job.limits.outputBytes,
      signal: entry.abort.signal,
      onOutput: (stream: 'stdout' | 'stderr', data: Buffer, offset: number) => {
        entry.outputBytes = offset + data.length;
        writer.push(stream, data, offset);
      },
    };
    let result: RunResult;
    try {
      if (mode.kind === 'run') {
        // The template's defaults (from its manifest or image config) fill what the job leaves open.
        const defaults = await templateDefaults(deps, vps);
        result = await vps.run({
          ...common,
          argv: req.command ?? ['/bin/sh', '-c', req.script!],
          env: { ...defaults?.env, ...req.env },
          workdir: req.workdir ?? defaults?.workdir,
          user: req.user ?? defaults?.user,
          stdin: req.stdin === undefined ? undefined : Buffer.from(req.stdin),
        });
      } else {
        result = await vps.adopt(
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
      }
    } catch (e) {
      // The host could not talk to the VPS (e.g. its agent's pipe broke): what runs there, if
      // anything, is out of reach. Lost, whatever it was doing.
      log.error({ err: e, adopted: mode.kind === 'adopt', vps: vps.diagnose() }, 'supervising the VPS failed');
      await writer.flush();
      return { kind: 'lost', code: mode.kind === 'adopt' ? 'restore_failed' : 'vps_lost', message: `the host lost contact with the job's VPS: ${(e as Error).message}` };
    }
    ended = true;
    autoCheckpoint?.stop();
    // Post-copy memory that never arrived: whatever the VPS did is void; the job is recovered instead.
    if (mode.kind === 'adopt' && mode.gate !== undefined && !(await mode.gate)) {
      await writer.flush();
      return { kind: 'left', why: 'voided' };
    }
    if (result.migrated) {
      await writer.flush();
      return { kind: 'left', why: 'migrated' };
    }
    // An agent that died without an exit status, not for the job's own limits: the host's loss.
    if (result.error?.code === 'vps_lost' && !result.timedOut && !result.canceled && !result.oomKilled) {
      await writer.flush();
      return { kind: 'lost', code: 'vps_lost', message: result.error.message };
    }
    const artifacts = req.artifacts.length ? await collectArtifacts(deps, vps, req, job.id, log) : { list: [], truncated: false };
    await writer.flush();
    return { kind: 'ended', result, artifacts };
  } finally {
    ended = true;
    autoCheckpoint?.stop();
  }
}

/**
 * Checkpoints every `everySec`, counted from the job's newest checkpoint (or its start), not from
 * its arrival here: a job that moves more often than that must still get its checkpoints (after a
 * move the first one is due at once when it is overdue).
 */
function scheduleCheckpoints(deps: JobDeps, job: Job, entry: RunningJob, everySec: number, reason: string, log: Logger): { stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const last = job.checkpoints.at(-1)?.createdAt ?? job.startedAt;
  const first = last ? Math.max(0, Date.parse(last) + everySec * 1000 - Date.now()) : everySec * 1000;
  const tick = () => {
    void deps.checkpointer
      .checkpoint(entry, reason, { automatic: true })
      .then(
        () => true,
        (e: unknown) => {
          if (isRunboxError(e, 'checkpoint_unsupported')) {
            // Not for this job on this host (a non-root user, core/checkpointable.ts): stop asking.
            log.info({ err: e }, 'automatic checkpoints are off for this job');
            return false;
          }
          if (isRunboxError(e, 'conflict')) log.debug({ err: e }, 'automatic checkpoint skipped');
          else log.warn({ err: e }, 'automatic checkpoint failed');
          return true;
        },
      )
      .then((again) => {
        if (again && !stopped) timer = setTimeout(tick, everySec * 1000);
      });
  };
  timer = setTimeout(tick, first);
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** The defaults of the VPS's template (user, env, workdir), from its manifest or image config. */
export async function templateDefaults(deps: Pick<JobDeps, 'engine'>, vps: RuncVps) {
  const tpl = vps.info().spec.template;
  return (await cachedTemplateInfo(deps.engine.layout.templatesDir, tpl.name, tpl.hash))?.defaults;
}

async function collectArtifacts(deps: JobDeps, vps: RuncVps, req: JobRequest, jobId: string, log: Logger): Promise<Artifacts> {
  try {
    const r = await vps.collect(req.artifacts, { maxBytes: deps.maxArtifactBytes, maxFiles: 1000 });
    // What does not fit the tenant's artifact budget (core/store/artifacts.ts) is left out, and says so.
    const put = await deps.artifacts.put(jobId, r.files.map((f) => ({ path: f.path, content: f.content })));
    const left = new Set(put.skipped.map((s) => s.path));
    if (left.size) log.info({ skipped: left.size, tenantBytes: put.tenantBytes }, "artifacts over the tenant's budget were left out");
    return {
      list: r.files.filter((f) => !left.has(f.path)).map((f) => ({ path: f.path, size: f.content.length, mode: f.mode })),
      truncated: r.truncated || left.size > 0,
    };
  } catch (e) {
    log.warn({ err: e }, 'collecting artifacts failed');
    return { list: [], truncated: true };
  }
}
