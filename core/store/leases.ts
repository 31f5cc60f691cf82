import type { Redis } from 'ioredis';
import { Keys } from './keys.js';

/**
 * Job leases: which worker process ("instance", `<hostId>~<random>`, new on every start) may run a
 * live job. Every way a job comes to run on a host takes the lease with a compare-and-set: a start
 * from the queue, the target of a move (expecting the source's lease), a source taking its job back
 * after a failed move (expecting its own), a recovery from a checkpoint (expecting the dead
 * holder's). Whoever loses the race does not run its copy, so a job never has two live copies,
 * even when a move's target and a recovering host act at the same moment.
 *
 * A lease outlives its holder: the reaper compares holders with the live instances in the host
 * heartbeats, and a host compares the leases it holds with the jobs it actually runs.
 *
 * Scripts touch the holder's index set by a key built inside Lua: fine on a single Redis (with or
 * without replicas/Sentinel), not on Redis Cluster (not supported by runbox).
 */
const CLAIM = `
local cur = redis.call('HGET', KEYS[1], 'holder') or ''
if ARGV[1] ~= '*' and cur ~= ARGV[1] then return {0, cur} end
if cur ~= '' and cur ~= ARGV[2] then redis.call('SREM', ARGV[4] .. cur, ARGV[5]) end
redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'since', ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[2], ARGV[5])
return {1, cur}
`;

const RELEASE = `
local cur = redis.call('HGET', KEYS[1], 'holder') or ''
if ARGV[1] ~= '*' and cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if cur ~= '' then redis.call('SREM', ARGV[2] .. cur, ARGV[3]) end
return 1
`;

export interface Lease {
  holder: string;
  /** When it was taken (ms since the epoch, the claimer's clock). */
  since: number;
}

/** `<hostId>~<random>`: the host id is readable; the suffix changes with every worker process. */
export const instanceHost = (instance: string): string => instance.slice(0, Math.max(0, instance.lastIndexOf('~')));

export class LeaseStore {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
    redis.defineCommand('rbLeaseClaim', { numberOfKeys: 1, lua: CLAIM });
    redis.defineCommand('rbLeaseRelease', { numberOfKeys: 1, lua: RELEASE });
  }

  /**
   * Takes the lease on `jobId` for `holder` if its current holder is `expected` ('' = nobody,
   * '*' = whoever). Returns whether it was taken and who held it before.
   */
  async claim(jobId: string, expected: string, holder: string): Promise<{ ok: boolean; previous: string }> {
    const [ok, previous] = (await (this.redis as unknown as Scripts).rbLeaseClaim(
      this.keys.lease(jobId), expected, holder, Date.now(), this.keys.leasesOf(''), jobId,
    )) as [number, string];
    return { ok: ok === 1, previous };
  }

  /** Drops the lease if `holder` holds it ('*': whoever does). Returns whether it did. */
  async release(jobId: string, holder: string): Promise<boolean> {
    return (await (this.redis as unknown as Scripts).rbLeaseRelease(this.keys.lease(jobId), holder, this.keys.leasesOf(''), jobId)) === 1;
  }

  async get(jobId: string): Promise<Lease | null> {
    const h = await this.redis.hgetall(this.keys.lease(jobId));
    return h.holder ? { holder: h.holder, since: Number(h.since) || 0 } : null;
  }

  /** Job ids whose lease `instance` holds. */
  heldBy(instance: string): Promise<string[]> {
    return this.redis.smembers(this.keys.leasesOf(instance));
  }
}

interface Scripts {
  rbLeaseClaim(...args: Array<string | number>): Promise<unknown>;
  rbLeaseRelease(...args: Array<string | number>): Promise<unknown>;
}
