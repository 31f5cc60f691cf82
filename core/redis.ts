import { Redis, type RedisOptions } from 'ioredis';

/**
 * Connects to Redis from a URL: redis://host:port[/db] or unix:///path/to/redis.sock (what
 * `runbox up` uses for its embedded Redis: no TCP port, so nothing inside a VPS can reach it).
 * maxRetriesPerRequest: null is what BullMQ requires of its connections.
 */
export function connectRedis(url: string, extra: RedisOptions = {}): Redis {
  const opts: RedisOptions = { maxRetriesPerRequest: null, ...extra };
  if (url.startsWith('unix://')) return new Redis({ ...opts, path: url.slice('unix://'.length) });
  return new Redis(url, opts);
}
