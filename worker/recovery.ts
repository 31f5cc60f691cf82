import { errorMessage, isRunboxError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Job } from '../core/job.js';
import type { Logger } from '../core/log.js';
import { JobQueue } from '../core/queue.js';
import { QUEUE_JOB_NAME } from '../core/job.js';
import type { Keys } from '../core/store/keys.js';
import { ensureTemplateVersion } from '../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../runtime/templates/recipes.js';
import type { RunningJob, RunningJobs } from './running.js';
import { superviseJob, type RunJobDeps } from './processors/run-job.js';

/**
 * A job found live (running, checkpointing, migrating) on a host that is gone: resume it here from
 * its newest restorable checkpoint, or record it `host_lost` when it has none. Both the BullMQ
 * stalled-job mechanism and the reaper below deliver such jobs to a processor; the status change to
 * `migrating` with this host is the atomic claim, so only one host ever restores a job.
 *
 * Returns false when the job turns out to be alive elsewhere (a duplicate delivery).
 */
export async function recoverJob(deps: RunJobDeps, running: RunningJobs, job: Job, tenant: string, log: Logger, why = `host ${job.host} lost`): Promise<boolean> {
  if (job.host === deps.hostId && running.byId.has(job.id)) return false;
  if (job.host && job.host !== deps.hostId && (await deps.hosts.get(job.host))) return false;
  const cp = await deps.checkpoints.restorable(job.id);
  if (!cp) return hostLost(deps, job, tenant, log, 'it had no checkpoint');
  try {
    await deps.jobs.transition(job.id, 'migrating', { host: deps.hostId }, {
      from: ['running', 'checkpointing', 'migrating'],
      host: deps.hostId,
      note: `${why}: restoring checkpoint ${cp.meta.id} on ${deps.hostId}`,
    });
  } catch (e) {
    if (isRunboxError(e, 'conflict')) return false; // someone else claimed it
    throw e;
  }
  const entry: RunningJob = { jobId: job.id, tenant, abort: new AbortController(), outputBytes: 0 };
  running.byId.set(job.id, entry);
  try {
    // The checkpoint's own template version: built first from the recipe when that makes exactly it.
    const template = await ensureTemplateVersion(cp.meta.template.name, cp.meta.template.hash, {
      build: true,
      recipesDir: deps.recipesDir ?? DEFAULT_RECIPES_DIR,
      templatesDir: deps.engine.layout.templatesDir,
      stateDirs: [deps.engine.layout.stateDir],
      log,
      onBuild: async () => {
        await deps.jobs
          .transition(job.id, 'migrating', {}, { from: ['migrating'], host: deps.hostId, note: `building template ${cp.meta.template.name} version ${cp.meta.template.hash}` })
          .catch((e: unknown) => log.warn({ err: e }, 'could not record the template build note'));
      },
    });
    const req = await deps.jobs.getRequest(job.id);
    if (!req) throw new Error('the job has no stored request');
    const vps = await deps.engine.create(
      newId(),
      { template, hostname: cp.meta.hostname, network: req.network, memoryMb: job.limits.memoryMb, cpus: job.limits.cpus, pids: job.limits.pids, diskMb: job.limits.diskMb },
      { imagesDir: cp.imagesDir, fsTars: cp.fsTars, address: cp.meta.network.address },
    );
    log.warn({ previousHost: job.host, checkpoint: cp.meta.id }, 'job restored from its checkpoint after losing its host');
    await superviseJob(deps, { ...job, status: 'migrating' }, req, vps, entry, log, { kind: 'adopt', startedAt: job.startedAt ?? new Date().toISOString(), note: `restored from checkpoint ${cp.meta.id}` }, (v) => {
      void deps.engine.destroy(v.id).catch((err) => log.error({ err, vpsId: v.id }, 'destroying the VPS failed'));
    });
    return true;
  } catch (e) {
    log.error({ err: e }, 'restoring from the checkpoint failed');
    // The same end as a job without a checkpoint (slot released, record kept for its TTL).
    return hostLost(deps, job, tenant, log, `restoring checkpoint ${cp.meta.id} failed: ${errorMessage(e)}`);
  } finally {
    running.byId.delete(job.id);
  }
}

async function hostLost(deps: RunJobDeps, job: Job, tenant: string, log: Logger, why: string): Promise<boolean> {
  log.warn({ previousHost: job.host }, `job was running on a host that is gone and ${why}: recording host_lost`);
  await deps.jobs
    .transition(
      job.id,
      'failed',
      { error: { code: 'host_lost', message: `the host running this job (${job.host}) stopped before it finished, and ${why}` }, finishedAt: new Date().toISOString() },
      { host: job.host, note: 'host_lost' },
    )
    .catch((e) => log.warn({ err: e }, 'host_lost transition failed'));
  await deps.slots.release(tenant, job.id);
  await deps.jobs.expire(job.id, deps.resultTtlSec);
  return true;
}

/**
 * Finds live jobs whose host stopped heartbeating and puts them back in the queue for recovery.
 * BullMQ's stalled-job detection covers jobs a worker took from the queue; this also covers jobs
 * that arrived on their host by migration (which no queue entry follows). One reaper at a time.
 */
export class Reaper {
  private timer?: NodeJS.Timeout;
  constructor(
    private readonly deps: RunJobDeps,
    private readonly keys: Keys,
    private readonly queue: JobQueue,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep().catch((e) => this.deps.log.warn({ err: e }, 'reaper sweep failed')), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async sweep(): Promise<number> {
    const lock = await this.deps.redis.set(`${this.keys.prefix}reaper`, this.deps.hostId, 'PX', this.intervalMs, 'NX');
    if (lock !== 'OK') return 0;
    let requeued = 0;
    for (const id of await this.deps.jobs.liveJobIds()) {
      const stored = await this.deps.jobs.get(id);
      if (!stored?.job.host || (await this.deps.hosts.get(stored.job.host))) continue;
      await this.queue.queue.add(QUEUE_JOB_NAME, { jobId: id, tenant: stored.tenant }, { jobId: `${id}-recover-${stored.job.history.length}`, attempts: 1, removeOnComplete: true, removeOnFail: true });
      requeued++;
    }
    return requeued;
  }
}
