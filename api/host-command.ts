import { RunboxError, type ErrorCode } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { RouteDeps } from './deps.js';

/**
 * Sends a command to one worker host (pub/sub `cmd:<hostId>`) and waits for its answer on a reply
 * list (BLPOP on a connection of its own, since it blocks). The host's error code is kept when it
 * is one a client can act on.
 */
export async function hostCommand(deps: RouteDeps, hostId: string, cmd: Record<string, unknown>, timeoutSec: number): Promise<unknown> {
  const reply = newId(8);
  const waiter = deps.redis.duplicate();
  try {
    const receivers = await deps.redis.publish(deps.keys.hostCommands(hostId), JSON.stringify({ ...cmd, reply }));
    if (receivers === 0) throw new RunboxError('unavailable', `host ${hostId} is not listening for commands`);
    const res = await waiter.blpop(deps.keys.reply(reply), timeoutSec);
    if (!res) throw new RunboxError('unavailable', `host ${hostId} did not answer within ${timeoutSec} s`);
    const answer = JSON.parse(res[1]) as { ok: true; result: unknown } | { ok: false; code: string; message: string };
    if (!answer.ok) {
      const passOn: ErrorCode[] = ['conflict', 'host_unsupported', 'checkpoint_incompatible', 'invalid_argument', 'not_found'];
      throw new RunboxError(passOn.includes(answer.code as ErrorCode) ? (answer.code as ErrorCode) : 'unavailable', answer.message);
    }
    return answer.result;
  } finally {
    waiter.disconnect();
  }
}
