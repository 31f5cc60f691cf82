import type { Redis } from 'ioredis';
import type { ServiceConfig } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { JobQueue } from '../core/queue.js';
import type { ArtifactStorage } from '../core/store/artifacts.js';
import type { JobEvents } from '../core/store/events.js';
import type { HostRegistry } from '../core/store/hosts.js';
import type { JobStore } from '../core/store/jobs.js';
import type { Keys } from '../core/store/keys.js';
import type { LogStore } from '../core/store/logs.js';
import type { TokenAuth } from './auth.js';

export type ApiConfig = Pick<ServiceConfig, 'defaultLimits' | 'maxLimits' | 'maxBodyBytes' | 'rateLimitPerSec' | 'resultTtlSec' | 'redisPrefix'> &
  /** Per-tenant caps; absent: the defaults of core/config.ts (TENANT_CAP_DEFAULTS). */
  Partial<Pick<ServiceConfig, 'tenantMaxQueued' | 'tenantMaxQueuedBytes' | 'tenantMaxFollowers' | 'checkpointMinIntervalSec'>>;
// Admin rights come with a token's role (api/auth.ts), never with a tenant name or a config list.

/** Everything the API needs, built by a composition root (cli) or a test. */
export interface ApiDeps {
  config: ApiConfig;
  jobs: JobStore;
  logs: LogStore;
  artifacts: ArtifactStorage;
  hosts: HostRegistry;
  events: JobEvents;
  queue: JobQueue;
  tokens: TokenAuth;
  /** For rate limits, readiness and metrics (not the subscriber connection of `events`). */
  redis: Redis;
  log: Logger;
  /** Template names that exist (built or buildable); a job naming another is refused. */
  knownTemplates(): Promise<string[]>;
  /** Aborted when the server shuts down: SSE streams end, held `?wait` responses return. */
  shutdown?: AbortSignal;
  /** SSE tuning (tests shorten these). */
  sse?: { pollMs?: number; heartbeatMs?: number };
}

/** Hono context variables set by the middleware. */
export interface ApiEnv {
  Variables: {
    requestId: string;
    log: Logger;
    tenant: string;
    /** The token has the admin role (api/auth.ts). */
    admin: boolean;
    jobId?: string;
  };
}

/** What routes receive: the deps plus derived helpers. */
export interface RouteDeps extends ApiDeps {
  keys: Keys;
  shutdown: AbortSignal;
}
