import { Redis, type RedisOptions } from 'ioredis';

/**
 * Connects to Redis from a URL: redis://host:port[/db] or unix:///path/to/redis.sock (what
 * `runbox up` uses for its embedded Redis: no TCP port, so nothing inside a VPS can reach it).
 * maxRetriesPerRequest: null is what BullMQ requires of its connections.
 */
export function connectRedis(url: string, extra: RedisOptions = {}): Redis {
  const opts: RedisOptions = { maxRetriesPerRequest: null, ...extra };
  const r = url.startsWith('unix://') ? new Redis({ ...opts, path: url.slice('unix://'.length) }) : new Redis(url, opts);
  // Connection errors reach callers as failed commands and ioredis reconnects by itself; without a
  // listener it would also print every one of them to stderr.
  r.on('error', () => undefined);
  return r;
}

/** A connection for SUBSCRIBE: no ready check (INFO is not allowed in subscriber mode). */
export function connectSubscriber(url: string): Redis {
  return connectRedis(url, { enableReadyCheck: false });
}
