import { newId } from '../../core/ids.js';
import type { Job, JobRequest } from '../../core/job.js';
import { MiB } from '../../core/units.js';
import type { VpsPool } from '../../runtime/pool.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { ensureTemplate } from '../../runtime/templates/builder.js';
import { formatProgress } from '../../runtime/templates/progress.js';
import { DEFAULT_RECIPES_DIR } from '../../runtime/templates/recipes.js';
import type { JobDeps } from './deps.js';

/**
 * From a job that may start to a VPS ready to run it: a pooled VPS when a pool matches, else a
 * fresh one (its template built first when needed), then the job's limits, hostname and files.
 * Undoes nothing itself: on failure the caller disposes what it got.
 */
export async function acquireVps(deps: JobDeps, req: JobRequest, job: Job): Promise<{ vps: RuncVps; pool?: VpsPool }> {
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

/**
 * The job's template, built first when it has a recipe but is not built on this host: the job
 * stays `starting` with the history note "building template NAME" meanwhile. Builds are shared:
 * jobs asking for the same template wait for the one build of this host (and for a build another
 * process of this host runs, through the builder's lock). No recipe and not built: template_missing.
 */
async function templateForJob(deps: JobDeps, name: string, job: Job) {
  // The build's progress, on every job waiting for it (GET /v1/jobs/:id, and `event: status` of a
  // followed log), at most one Redis write a second per job. Jobs asking for a template another
  // job's call is building share that build (builder.ts), so its progress is fanned out to them.
  const key = `${deps.engine.layout.templatesDir}\0${name}`;
  let shownAt = 0;
  let written: Promise<unknown> = Promise.resolve();
  const show = (line: string, final: boolean) => {
    if (Date.now() - shownAt < 1000 && !final) return;
    shownAt = Date.now();
    written = written.then(() => deps.jobs.update(job.id, { progress: `building template ${name}: ${line}` })).catch(() => undefined);
  };
  let waiting = buildWatchers.get(key);
  if (!waiting) buildWatchers.set(key, (waiting = new Set()));
  waiting.add(show);
  try {
    return await ensureTemplate(name, {
      recipesDir: deps.recipesDir ?? DEFAULT_RECIPES_DIR,
      templatesDir: deps.engine.layout.templatesDir,
      stateDirs: [deps.engine.layout.stateDir],
      log: deps.log.child({ jobId: job.id }),
      onProgress: (p) => {
        const line = formatProgress(p).replace(/^\[[^\]]*\] /, ''); // without its "[name hash]" prefix
        for (const w of buildWatchers.get(key) ?? []) w(line, p.step === 'done');
      },
      onBuild: async () => {
        await deps.jobs
          .transition(job.id, 'starting', {}, { from: ['starting'], host: deps.hostId, note: `building template ${name}` })
          .catch((e: unknown) => deps.log.warn({ err: e, jobId: job.id }, 'could not record the template build note'));
      },
    });
  } finally {
    waiting.delete(show);
    if (waiting.size === 0) buildWatchers.delete(key);
    await written; // before the job's next step clears it
  }
}

/** Per template being built on this host: the progress callbacks of the jobs waiting for it. */
const buildWatchers = new Map<string, Set<(line: string, final: boolean) => void>>();

/** Job-specific setup of a (possibly pooled) VPS: limits, hostname, files. */
export async function prepareVps(vps: RuncVps, req: JobRequest, job: Job): Promise<void> {
  await vps.cgroup.setLimits({ memoryBytes: job.limits.memoryMb * MiB, cpus: job.limits.cpus, pids: job.limits.pids });
  if (req.hostname && vps.info().spec.hostname !== req.hostname) await vps.setHostname(req.hostname);
  for (const [path, f] of Object.entries(req.files)) {
    await vps.writeFile(path, Buffer.from(f.content, f.encoding), f.mode);
  }
}
