import type { MiddlewareHandler } from 'hono';
import type { Redis } from 'ioredis';
import type { Keys } from '../../core/store/keys.js';
import type { ApiEnv } from '../deps.js';
import { ApiError, isRedisFull } from '../problem.js';

/**
 * Per-tenant fixed one-second windows counted in Redis, so every API process shares the budget.
 * A fixed window may let up to twice the rate through across a window edge; that is accepted for
 * one INCR per request. While Redis is full the limit is not counted (see below).
 */
export function rateLimit(redis: Redis, keys: Keys, perSec: number): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const tenant = c.get('tenant');
    const key = keys.rate(tenant, Math.floor(Date.now() / 1000));
    let count = 0;
    try {
      const res = await redis.multi().incr(key).expire(key, 2).exec();
      count = Number(res?.[0]?.[1] ?? 0);
    } catch (e) {
      // A full Redis (maxmemory) must not lock tenants out of reading results and canceling jobs,
      // which is how it gets emptied: such requests pass uncounted, writes fail on their own (503).
      if (!isRedisFull(e)) throw e;
    }
    if (count > perSec) {
      throw new ApiError('rate_limited', `more than ${perSec} requests per second for tenant "${tenant}"`, {
        meta: { limitPerSec: perSec },
        headers: { 'Retry-After': '1' },
      });
    }
    await next();
  };
}
