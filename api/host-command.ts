import { RunboxError, type ErrorCode } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { RouteDeps } from './deps.js';

/**
 * Sends a command to one worker host (pub/sub `cmd:<hostId>`) and waits for its answer on a reply
 * list (BLPOP on a connection of its own, since it blocks). The host's error code is kept when it
 * is one a client can act on.
 */
const ANSWER_SLICE_SEC = 2;

export async function hostCommand(deps: RouteDeps, hostId: string, cmd: Record<string, unknown>, timeoutSec: number): Promise<unknown> {
  const reply = newId(8);
  const waiter = deps.redis.duplicate();
  try {
    const instance = (await deps.hosts.get(hostId))?.instance;
    const receivers = await deps.redis.publish(deps.keys.hostCommands(hostId), JSON.stringify({ ...cmd, reply }));
    if (receivers === 0) throw new RunboxError('unavailable', `host ${hostId} is not listening for commands`);
    // In slices: a host that dies (or restarts) meanwhile will never answer; say so within seconds.
    const deadline = Date.now() + timeoutSec * 1000;
    let res: [string, string] | null = null;
    while (!res) {
      const left = Math.ceil((deadline - Date.now()) / 1000);
      if (left <= 0) throw new RunboxError('unavailable', `host ${hostId} did not answer within ${timeoutSec} s`);
      res = await waiter.blpop(deps.keys.reply(reply), Math.min(left, ANSWER_SLICE_SEC));
      if (!res && (await deps.hosts.get(hostId))?.instance !== instance) {
        throw new RunboxError('unavailable', `host ${hostId} stopped before it answered; its jobs are recovered by the cluster`);
      }
    }
    const answer = JSON.parse(res[1]) as { ok: true; result: unknown } | { ok: false; code: string; message: string };
    if (!answer.ok) {
      const passOn: ErrorCode[] = ['conflict', 'host_unsupported', 'checkpoint_incompatible', 'checkpoint_unsupported', 'invalid_argument', 'not_found'];
      throw new RunboxError(passOn.includes(answer.code as ErrorCode) ? (answer.code as ErrorCode) : 'unavailable', answer.message);
    }
    return answer.result;
  } finally {
    waiter.disconnect();
  }
}
