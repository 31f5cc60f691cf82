import { QUEUE_JOB_NAME, isTerminal, type Job } from '../../core/job.js';
import type { Host } from '../../core/store/hosts.js';
import { instanceHost, type Lease } from '../../core/store/leases.js';
import type { JobQueue } from '../../core/queue.js';
import type { JobDeps } from './deps.js';

export interface ReaperOptions {
  intervalMs: number;
  /** A live job this long past its timeout is ended by the cluster (its host should have done it). */
  deadlineGraceMs: number;
  /** A live job without a lease, or held by a live host that does not report it, this long: orphan. */
  orphanGraceMs: number;
}

export const REAPER_DEFAULTS: ReaperOptions = { intervalMs: 3000, deadlineGraceMs: 10_000, orphanGraceMs: 10_000 };

/**
 * The cluster's view of live jobs, one sweep at a time across all hosts (a Redis lock):
 *   - a job past its `timeoutSec` (from its start, across moves) plus a grace is ended `timed_out`
 *     here, whatever its host does: the reaper takes its lease (its holder then kills its copy, see
 *     Reconciler) and tells every host to cancel it;
 *   - a job whose lease holder is gone (no heartbeat of that very worker process), or that has no
 *     lease, or whose live holder reported it missing in two heartbeats taken well after it took
 *     the lease, is an orphan: it is queued for recovery from exactly that holder
 *     (worker/job/recover.ts), so only one host ever brings it back.
 */
export class Reaper {
  private timer?: NodeJS.Timeout;
  /** Orphan suspects on live hosts: job id → heartbeat times that did not list it. */
  private readonly missing = new Map<string, Set<string>>();

  constructor(
    private readonly deps: JobDeps,
    private readonly queue: JobQueue,
    private readonly o: ReaperOptions = REAPER_DEFAULTS,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep().catch((e) => this.deps.log.warn({ err: e }, 'reaper sweep failed')), this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One pass; returns what it did (for tests and logs). */
  async sweep(): Promise<{ requeued: string[]; timedOut: string[] }> {
    const done = { requeued: [] as string[], timedOut: [] as string[] };
    const lock = await this.deps.redis.set(`${this.deps.jobs.keys.prefix}reaper`, this.deps.instance, 'PX', this.o.intervalMs, 'NX');
    if (lock !== 'OK') return done;
    const hosts = new Map((await this.deps.hosts.list()).map((h) => [h.id, h]));
    const now = Date.now();
    const seen = new Set<string>();
    for (const id of await this.deps.jobs.liveJobIds()) {
      seen.add(id);
      const stored = await this.deps.jobs.get(id);
      if (!stored || isTerminal(stored.job.status)) continue;
      const { job, tenant } = stored;
      const lease = await this.deps.leases.get(id);
      const orphanOf = this.orphanOf(job, lease, hosts, now);
      // Past its deadline: its holder gets a grace to end it itself; a job without a live holder
      // is not brought back only to be killed.
      if (pastDeadline(job, now, orphanOf === undefined ? this.o.deadlineGraceMs : 0)) {
        if (await this.endTimedOut(job, tenant, lease)) done.timedOut.push(id);
        continue;
      }
      if (orphanOf === undefined) continue;
      this.missing.delete(id);
      this.deps.log.warn({ jobId: id, holder: orphanOf || null, status: job.status }, 'live job without a live holder: queued for recovery');
      await this.queue.queue.add(
        QUEUE_JOB_NAME,
        { jobId: id, tenant, orphanOf },
        { jobId: `${id}-recover-${job.history.length}-${orphanOf.replace(/[^A-Za-z0-9]/g, '')}`, attempts: 1, removeOnComplete: true, removeOnFail: true },
      );
      done.requeued.push(id);
    }
    for (const id of this.missing.keys()) if (!seen.has(id)) this.missing.delete(id);
    return done;
  }

  /** The holder whose job this is an orphan of ('' for none), or undefined when it is held. */
  private orphanOf(job: Job, lease: Lease | null, hosts: Map<string, Host>, now: number): string | undefined {
    const lastChange = Date.parse(job.history.at(-1)?.at ?? job.createdAt);
    if (!lease) return now - lastChange > this.o.orphanGraceMs ? '' : undefined;
    const host = hosts.get(instanceHost(lease.holder));
    if (!host || host.instance !== lease.holder) return lease.holder; // that worker process is gone
    // Alive: does it run the job? Only heartbeats taken well after it took the lease count.
    const beat = Date.parse(host.heartbeatAt);
    if (!host.jobs || host.jobs.includes(job.id) || beat < lease.since + this.o.orphanGraceMs / 2) {
      this.missing.delete(job.id);
      return undefined;
    }
    const misses = this.missing.get(job.id) ?? new Set<string>();
    misses.add(host.heartbeatAt);
    this.missing.set(job.id, misses);
    return misses.size >= 2 ? lease.holder : undefined;
  }

  /**
   * Ends a job the cluster found past its deadline: the lease first (fences its holder), then the
   * record, then a cancel to whichever host still runs it; slot and checkpoints are released.
   */
  private async endTimedOut(job: Job, tenant: string, lease: Lease | null): Promise<boolean> {
    const { jobs, leases, slots, checkpoints, log } = this.deps;
    if (!(await leases.claim(job.id, lease?.holder ?? '', this.deps.instance)).ok) return false;
    try {
      await jobs.transition(
        job.id,
        'timed_out',
        {
          error: { code: 'timeout', message: `the job exceeded its ${job.limits.timeoutSec} s time limit (ended by the cluster: its host ${job.host ?? '?'} did not end it)` },
          finishedAt: new Date().toISOString(),
        },
        { from: ['starting', 'running', 'checkpointing', 'migrating'], host: this.deps.hostId, note: 'deadline enforced by the cluster' },
      );
    } catch (e) {
      log.debug({ err: e, jobId: job.id }, 'the job ended before the cluster could time it out');
    }
    log.warn({ jobId: job.id, host: job.host }, 'job past its deadline ended by the cluster');
    await this.deps.redis.publish(jobs.keys.cancelChannel(), job.id);
    await jobs.expire(job.id, this.deps.resultTtlSec);
    await slots.release(tenant, job.id);
    await leases.release(job.id, this.deps.instance);
    await checkpoints.removeAll(job.id).catch(() => undefined);
    return true;
  }
}

/** Past `startedAt + timeoutSec + grace` (jobs that never started have no deadline yet). */
export function pastDeadline(job: Pick<Job, 'startedAt' | 'limits' | 'status'>, now: number, graceMs: number): boolean {
  if (!job.startedAt || job.status === 'starting') return false;
  return now > Date.parse(job.startedAt) + job.limits.timeoutSec * 1000 + graceMs;
}
