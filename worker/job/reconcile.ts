import { isTerminal } from '../../core/job.js';
import type { RunningJobs } from '../running.js';
import type { JobDeps } from './deps.js';
import { recoverJob } from './recover.js';

/**
 * A host compares what Redis says it holds with what it runs, every heartbeat:
 *   - a lease it holds for a job it does not run (nor receives) is an orphan of its own (a path
 *     that let go of a job without settling it): after a grace it recovers the job itself, from
 *     its newest checkpoint, or records it failed;
 *   - a job it runs whose lease another holder took (the cluster ended it past its deadline, or
 *     recovered it while this host was unreachable) is fenced: its VPS is killed at once and
 *     nothing of it is recorded here (the job's session sees the lease gone).
 * Both need two consecutive ticks to agree, so a transition in flight is never mistaken for one.
 */
export class Reconciler {
  private strikes = new Map<string, number>();

  constructor(
    private readonly deps: JobDeps,
    private readonly running: RunningJobs,
    private readonly graceMs = 10_000,
  ) {}

  async tick(): Promise<{ recovered: string[]; fenced: string[] }> {
    const { deps, running } = this;
    const out = { recovered: [] as string[], fenced: [] as string[] };
    const next = new Map<string, number>();
    const strike = (key: string) => {
      const n = (this.strikes.get(key) ?? 0) + 1;
      next.set(key, n);
      return n >= 2;
    };
    for (const id of await deps.leases.heldBy(deps.instance)) {
      if (running.byId.has(id) || running.incoming.has(id)) continue;
      const lease = await deps.leases.get(id);
      if (!lease || lease.holder !== deps.instance || Date.now() - lease.since < this.graceMs) continue;
      if (!strike(`orphan:${id}`)) continue;
      const stored = await deps.jobs.get(id);
      if (!stored || isTerminal(stored.job.status)) {
        await deps.leases.release(id, deps.instance); // a leftover of a job that ended
        continue;
      }
      deps.log.error({ jobId: id, status: stored.job.status }, 'this host holds the lease of a job it does not run: recovering it');
      out.recovered.push(id);
      void recoverJob(deps, running, stored.job, stored.tenant, deps.log.child({ jobId: id, tenant: stored.tenant }), {
        why: `host ${deps.hostId} lost track of it`,
        orphanOf: deps.instance,
      }).catch((e: unknown) => deps.log.error({ err: e, jobId: id }, 'recovering an orphaned job failed'));
    }
    for (const [id, entry] of running.byId) {
      if (entry.leaving || !entry.vps) continue;
      const lease = await deps.leases.get(id);
      if (lease?.holder === deps.instance) continue;
      if (!strike(`fence:${id}`)) continue;
      deps.log.error({ jobId: id, holder: lease?.holder ?? null }, 'another holder took this job: killing its copy here');
      out.fenced.push(id);
      entry.fenced = true;
      entry.abort.abort();
      await entry.vps.killAll().catch((e: unknown) => deps.log.warn({ err: e, jobId: id }, 'killing a fenced VPS failed'));
    }
    this.strikes = next;
    return out;
  }
}
