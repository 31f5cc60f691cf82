import { newId } from '../../core/ids.js';
import { RunboxError } from '../../core/errors.js';
import type { Job } from '../../core/job.js';
import type { Logger } from '../../core/log.js';
import { instanceHost } from '../../core/store/leases.js';
import type { RestorableCheckpoint } from '../../runtime/checkpoint/store.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { ensureTemplateVersion } from '../../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../../runtime/templates/recipes.js';
import { RESTORE_NOTE, type JobDeps } from './deps.js';

/**
 * Brings a job back on this host from its newest restorable checkpoint: the record goes to
 * `migrating` (the history note counts against MAX_RESTORES), the checkpoint's own template version
 * is built first when needed, then a VPS is made from the checkpoint (its filesystem, its address,
 * its processes). The caller holds the job's lease. Returns undefined when there is no checkpoint.
 */
export async function restoreFromCheckpoint(deps: JobDeps, job: Job, why: string, log: Logger): Promise<{ vps: RuncVps; checkpointId: string } | undefined> {
  const cp = await deps.checkpoints.restorable(job.id, { memoryMb: job.limits.memoryMb, diskMb: job.limits.diskMb });
  if (!cp) return undefined;
  try {
    return await restoreFrom(deps, job, cp, why, log);
  } finally {
    await cp.release().catch((e: unknown) => log.warn({ err: e }, 'could not remove the downloaded checkpoint'));
  }
}

async function restoreFrom(deps: JobDeps, job: Job, cp: RestorableCheckpoint, why: string, log: Logger): Promise<{ vps: RuncVps; checkpointId: string }> {
  // runc's and crun's CRIU images name the VPS's external mounts differently (RUNBOX_RUNTIME).
  const runtime = deps.engine.ociRuntime.kind;
  if ((cp.meta.runtime ?? 'runc') !== runtime) {
    throw new RunboxError('checkpoint_incompatible', `checkpoint ${cp.meta.id} was taken under ${cp.meta.runtime ?? 'runc'}; host ${deps.hostId} runs its VPSs with ${runtime}`);
  }
  await deps.jobs.transition(job.id, 'migrating', { host: deps.hostId }, {
    from: ['running', 'checkpointing', 'migrating'],
    host: deps.hostId,
    note: `${RESTORE_NOTE} ${why}; restoring checkpoint ${cp.meta.id} on ${deps.hostId}`,
  });
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
    { imagesDir: cp.imagesDir, disk: { path: cp.diskImage, move: cp.disposable }, address: cp.meta.network.address },
  );
  return { vps, checkpointId: cp.meta.id };
}

/**
 * Whether `holder` (a worker instance) is alive: its host heartbeats, and with this very process
 * (a host restarted under the same id is a new instance; the old one's jobs are orphans).
 */
export async function holderAlive(deps: Pick<JobDeps, 'hosts'>, holder: string): Promise<boolean> {
  const host = await deps.hosts.get(instanceHost(holder));
  return !!host && host.instance === holder;
}
