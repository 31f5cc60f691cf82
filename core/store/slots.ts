import type { Redis } from 'ioredis';
import { Keys } from './keys.js';

const ACQUIRE = `
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
`;

/**
 * Per-tenant concurrency: a set of the tenant's running job ids. Taking a slot is one atomic
 * script, so two workers cannot both take the last one. A slot held by a job whose worker died is
 * freed when that job is recovered (stalled-job handling).
 */
export class TenantSlots {
  private readonly keys: Keys;
  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
    redis.defineCommand('rbSlot', { numberOfKeys: 1, lua: ACQUIRE });
  }

  async acquire(tenant: string, jobId: string, limit: number): Promise<boolean> {
    const r = await (this.redis as unknown as { rbSlot(k: string, id: string, limit: number): Promise<number> }).rbSlot(
      this.keys.tenantActive(tenant), jobId, limit,
    );
    return r === 1;
  }

  async release(tenant: string, jobId: string): Promise<void> {
    await this.redis.srem(this.keys.tenantActive(tenant), jobId);
  }
}
