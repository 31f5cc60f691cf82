import { startApi } from '../../api/server.js';
import { apiDeps } from '../../cli/services.js';
import type { ServiceConfig } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import type { WorkerHandle } from '../../worker/main.js';
import { removeState, startTestWorker, testServiceConfig } from './cluster.js';
import { startRedis, type TestRedis } from './redis.js';

/** Tenants a and b (role user) and `admin`: tenant "ops" with the admin role. */
export const STACK_TOKENS = { a: 'stack-token-a', b: 'stack-token-b', admin: 'stack-token-admin' } as const;

/** The whole system in this process: Redis, one worker host, the API on a real port; two tenants. */
export interface Stack {
  redis: TestRedis;
  cfg: ServiceConfig;
  worker: WorkerHandle;
  url: string;
  /** fetch against the API as tenant `as` (default a; `admin`: tenant ops with the admin role). */
  call(path: string, init?: RequestInit & { as?: keyof typeof STACK_TOKENS }): Promise<Response>;
  stop(): Promise<void>;
}

export async function startStack(overrides: Partial<ServiceConfig> = {}): Promise<Stack> {
  const redis = await startRedis();
  const cfg = await testServiceConfig(redis, { apiTokens: `a=${STACK_TOKENS.a},b=${STACK_TOKENS.b},ops:admin=${STACK_TOKENS.admin}`, ...overrides });
  const worker = await startTestWorker(cfg, redis.url);
  const abort = new AbortController();
  const built = await apiDeps(cfg, redis.url, createLogger('silent'), abort.signal);
  const api = await startApi(built.deps, { host: '127.0.0.1', port: 0 });
  return {
    redis,
    cfg,
    worker,
    url: api.url,
    call: (path, init = {}) => {
      const { as = 'a', ...rest } = init;
      return fetch(api.url + path, {
        ...rest,
        headers: { authorization: `Bearer ${STACK_TOKENS[as]}`, 'content-type': 'application/json', ...(rest.headers ?? {}) },
      });
    },
    stop: async () => {
      abort.abort();
      await api.close();
      await built.close();
      await worker.close();
      await removeState(cfg, worker.engine);
      await redis.stop();
    },
  };
}
