import type { Redis } from 'ioredis';
import type { Keys } from '../../core/store/keys.js';

/**
 * Never two live copies: both sides of a move claim it with SET NX on one Redis key before a copy
 * may run (the target before `runc restore`, a source whose transfer failed before restoring
 * locally). Whoever loses does not run its copy.
 */
const claimKey = (keys: Keys, migrationId: string) => `${keys.prefix}migration:${migrationId}`;

export async function claim(redis: Redis, keys: Keys, migrationId: string, who: 'source' | 'target'): Promise<boolean> {
  return (await redis.set(claimKey(keys, migrationId), who, 'EX', 3600, 'NX')) === 'OK';
}

/** A target that failed after claiming hands the claim back, so the source may bring the job back to life. */
export async function handBack(redis: Redis, keys: Keys, migrationId: string): Promise<void> {
  const key = claimKey(keys, migrationId);
  if ((await redis.get(key)) === 'target') await redis.del(key);
}

/**
 * A request's nonce, used once across the cluster (and across restarts of this worker): false
 * when it was seen before, i.e. the request is a replay.
 */
export async function claimNonce(redis: Redis, keys: Keys, nonce: string, ttlMs: number): Promise<boolean> {
  return (await redis.set(`${keys.prefix}migration-nonce:${nonce}`, '1', 'PX', Math.ceil(ttlMs), 'NX')) === 'OK';
}
