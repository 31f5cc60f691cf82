import type { Redis } from 'ioredis';
import { errorMessage, isRunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { Keys } from '../core/store/keys.js';
import type { JobCheckpointer } from './checkpoints.js';
import type { RunningJobs } from './running.js';

/**
 * Commands addressed to this host (pub/sub channel `cmd:<hostId>`), answered on a reply list the
 * sender waits on with BLPOP. The API uses it for what only the host running a job can do.
 */
export interface HostCommand {
  op: 'checkpoint';
  jobId: string;
  reply: string;
}

export type HostReply = { ok: true; result: unknown } | { ok: false; code: string; message: string };

const REPLY_TTL_SEC = 120;

export class HostCommands {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly running: RunningJobs,
    private readonly checkpointer: JobCheckpointer,
    private readonly log: Logger,
  ) {}

  async handle(raw: string): Promise<void> {
    let cmd: HostCommand;
    try {
      cmd = JSON.parse(raw) as HostCommand;
      if (cmd.op !== 'checkpoint' || typeof cmd.jobId !== 'string' || typeof cmd.reply !== 'string') throw new Error('bad command');
    } catch {
      this.log.warn({ raw: raw.slice(0, 200) }, 'ignoring a malformed host command');
      return;
    }
    let reply: HostReply;
    try {
      const job = this.running.byId.get(cmd.jobId);
      if (!job) reply = { ok: false, code: 'conflict', message: `job ${cmd.jobId} is not running on this host` };
      else reply = { ok: true, result: await this.checkpointer.checkpoint(job, 'requested through the API') };
    } catch (e) {
      reply = { ok: false, code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) };
    }
    await this.redis.multi().lpush(this.keys.reply(cmd.reply), JSON.stringify(reply)).expire(this.keys.reply(cmd.reply), REPLY_TTL_SEC).exec();
  }
}
