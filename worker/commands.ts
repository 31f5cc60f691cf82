import type { Redis } from 'ioredis';
import { errorMessage, isRunboxError, RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { pickTarget, type HostRegistry } from '../core/store/hosts.js';
import type { Keys } from '../core/store/keys.js';
import type { JobCheckpointer } from './checkpoints.js';
import { migrateOut, type MigrationDeps, type MigrationPreference } from './migration/index.js';
import type { RunningJobs } from './running.js';

/**
 * Commands addressed to this host (pub/sub channel `cmd:<hostId>`), answered on a reply list the
 * sender waits on with BLPOP. The API uses it for what only the host running a job can do.
 */
export type HostCommand =
  | { op: 'checkpoint'; jobId: string; reply: string }
  | { op: 'migrate'; jobId: string; target?: string; mode?: MigrationPreference; reply: string }
  | { op: 'drain'; reply?: string }
  | { op: 'resume'; reply?: string };

export type HostReply = { ok: true; result: unknown } | { ok: false; code: string; message: string };

const REPLY_TTL_SEC = 300;

export interface DrainControl {
  setDraining(on: boolean): Promise<void>;
}

export class HostCommands {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly running: RunningJobs,
    private readonly checkpointer: JobCheckpointer,
    private readonly hosts: HostRegistry,
    private readonly migration: MigrationDeps,
    private readonly drain: DrainControl,
    private readonly log: Logger,
  ) {}

  async handle(raw: string): Promise<void> {
    let cmd: HostCommand;
    try {
      cmd = JSON.parse(raw) as HostCommand;
      if (!['checkpoint', 'migrate', 'drain', 'resume'].includes(cmd.op)) throw new Error('bad command');
    } catch {
      this.log.warn({ raw: raw.slice(0, 200) }, 'ignoring a malformed host command');
      return;
    }
    let reply: HostReply;
    try {
      reply = { ok: true, result: await this.run(cmd) };
    } catch (e) {
      reply = { ok: false, code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) };
    }
    if (cmd.reply) {
      await this.redis.multi().lpush(this.keys.reply(cmd.reply), JSON.stringify(reply)).expire(this.keys.reply(cmd.reply), REPLY_TTL_SEC).exec();
    }
  }

  private async run(cmd: HostCommand): Promise<unknown> {
    if (cmd.op === 'drain') return this.drainAll();
    if (cmd.op === 'resume') return this.drain.setDraining(false);
    if (cmd.op === 'migrate') return this.migrateJob(cmd.jobId, cmd.target, cmd.mode);
    const job = this.running.byId.get(cmd.jobId);
    if (!job) throw new RunboxError('conflict', `job ${cmd.jobId} is not running on this host`);
    return this.checkpointer.checkpoint(job, 'requested through the API');
  }

  async migrateJob(jobId: string, targetId?: string, mode: MigrationPreference = 'auto'): Promise<unknown> {
    const job = this.running.byId.get(jobId);
    if (!job) throw new RunboxError('conflict', `job ${jobId} is not running on this host`);
    const hosts = await this.hosts.list();
    const target = targetId ? hosts.find((h) => h.id === targetId) : pickTarget(hosts, this.migration.hostId, this.migration.engine.ociRuntime.kind, await this.migration.engine.usernsEnabled());
    if (!target) throw new RunboxError('unavailable', targetId ? `host ${targetId} is not available` : 'no other host can take this job');
    if (target.id === this.migration.hostId) throw new RunboxError('invalid_argument', 'the job already runs on that host');
    if (target.draining) throw new RunboxError('unavailable', `host ${target.id} is draining`);
    return migrateOut(this.migration, job, target, mode);
  }

  /** Stops taking jobs and moves every running job away (those that cannot move keep running). */
  private async drainAll(): Promise<{ moved: string[]; stayed: Array<{ jobId: string; reason: string }> }> {
    await this.drain.setDraining(true);
    const moved: string[] = [];
    const stayed: Array<{ jobId: string; reason: string }> = [];
    // All at once: a drain should not take the sum of every job's move.
    await Promise.all(
      [...this.running.byId.keys()].map(async (jobId) => {
        try {
          await this.migrateJob(jobId);
          moved.push(jobId);
        } catch (e) {
          // A job that ended meanwhile is not "left behind".
          if (this.running.byId.has(jobId)) stayed.push({ jobId, reason: errorMessage(e) });
          this.log.warn({ jobId, err: e }, 'drain: job could not be moved');
        }
      }),
    );
    return { moved, stayed };
  }
}
