import { z } from 'zod';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Limits } from './limits.js';

/** Repository root (this file lives in core/ or dist/core/). */
export const REPO_ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.dirname(here)) === 'dist' ? path.resolve(here, '../..') : path.resolve(here, '..');
})();

const int = (def: number) => z.coerce.number().int().positive().default(def);
const num = (def: number) => z.coerce.number().positive().default(def);

/** Every environment variable runbox reads, with its default. Parsed once, in a composition root. */
export const EnvSchema = z.object({
  RUNBOX_STATE_DIR: z.string().min(1).default('/var/lib/runbox'),
  RUNBOX_TEMPLATES_DIR: z.string().min(1).optional(),
  RUNBOX_RECIPES_DIR: z.string().min(1).default(path.join(REPO_ROOT, 'templates')),
  RUNBOX_PREBUILD_TEMPLATES: z
    .string()
    .regex(/^([a-z0-9][a-z0-9._-]{0,63}(,[a-z0-9][a-z0-9._-]{0,63})*)?$/, 'a comma-separated list of template names, e.g. base,debian')
    .default('base'),
  RUNBOX_RUNC: z.string().min(1).default('runc'),
  RUNBOX_CRIU: z.string().min(1).default('/opt/runbox/criu/bin/criu'),
  RUNBOX_AGENT: z.string().min(1).default(path.join(REPO_ROOT, 'build/runbox-agent')),
  RUNBOX_NET_CIDR: z
    .string()
    .regex(/^\d+\.\d+\.\d+\.\d+\/(1[6-9]|2[0-4])$/, 'an IPv4 CIDR from /16 to /24, e.g. 10.88.0.0/16')
    .default('10.88.0.0/16'),
  RUNBOX_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  RUNBOX_DEFAULT_MEMORY_MB: int(256),
  RUNBOX_DEFAULT_CPUS: num(1),
  RUNBOX_DEFAULT_PIDS: int(256),
  RUNBOX_DEFAULT_DISK_MB: int(256),
  RUNBOX_DEFAULT_TIMEOUT_SEC: num(300),
  RUNBOX_DEFAULT_OUTPUT_BYTES: int(16 * 1024 * 1024),
  RUNBOX_MAX_MEMORY_MB: int(8192),
  RUNBOX_MAX_CPUS: num(16),
  RUNBOX_MAX_PIDS: int(32768),
  RUNBOX_MAX_DISK_MB: int(65536),
  RUNBOX_MAX_TIMEOUT_SEC: num(24 * 3600),
  RUNBOX_MAX_OUTPUT_BYTES: int(1024 * 1024 * 1024),
  // Services (API, worker): see README "Configuration".
  RUNBOX_REDIS_URL: z.string().url().optional(),
  RUNBOX_REDIS_PREFIX: z.string().regex(/^[A-Za-z0-9:_-]{1,32}$/).default('rb:'),
  RUNBOX_API_HOST: z.string().min(1).default('127.0.0.1'),
  RUNBOX_API_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  RUNBOX_API_TOKENS: z.string().optional(),
  RUNBOX_TOKEN_FILE: z.string().optional(),
  RUNBOX_HOST_ID: z.string().regex(/^[A-Za-z0-9._-]{1,63}$/).optional(),
  RUNBOX_POOLS: z.string().regex(/^([a-z0-9._-]+:(none|private|egress))?(,[a-z0-9._-]+:(none|private|egress))*$/, 'a list like base:none,base:private').default('base:none'),
  RUNBOX_POOL_MIN_IDLE: z.coerce.number().int().min(0).default(2),
  RUNBOX_POOL_MAX: z.coerce.number().int().min(1).default(16),
  RUNBOX_WORKER_CONCURRENCY: int(8),
  RUNBOX_TENANT_CONCURRENCY: int(8),
  RUNBOX_RESULT_TTL_SEC: int(7 * 24 * 3600),
  RUNBOX_MAX_BODY_BYTES: int(32 * 1024 * 1024),
  RUNBOX_RATE_LIMIT_PER_SEC: int(100),
  RUNBOX_MAX_ARTIFACT_BYTES: int(64 * 1024 * 1024),
  RUNBOX_SHUTDOWN_GRACE_SEC: num(30),
  RUNBOX_JOB_LOCK_MS: z.coerce.number().int().min(1000).default(15_000),
  RUNBOX_CHECKPOINT_DIR: z.string().min(1).optional(),
  RUNBOX_CHECKPOINT_AFTER_SEC: z.coerce.number().int().min(0).default(0),
  RUNBOX_CHECKPOINT_KEEP: z.coerce.number().int().min(1).default(2),
  RUNBOX_MIGRATION_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  RUNBOX_MIGRATION_MODE: z.enum(['auto', 'post-copy', 'stop-and-copy']).default('auto'),
  RUNBOX_ADMIN_TENANTS: z.string().regex(/^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$/).default('default'),
});
export type Env = z.infer<typeof EnvSchema>;

export interface RuntimeConfig {
  stateDir: string;
  /** Built templates (default <stateDir>/templates). */
  templatesDir: string;
  runcPath: string;
  criuPath: string;
  agentPath: string;
  netCidr: string;
  logLevel: Env['RUNBOX_LOG_LEVEL'];
  defaultLimits: Limits;
  maxLimits: Limits;
}

/** Validates the environment once; the error lists every bad variable. */
export function parseEnv(raw: NodeJS.ProcessEnv): Env {
  const parsed = EnvSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid configuration:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/** Compiles validated env into the typed config components receive. */
export function runtimeConfigFromEnv(raw: NodeJS.ProcessEnv): RuntimeConfig {
  const e = parseEnv(raw);
  return {
    stateDir: path.resolve(e.RUNBOX_STATE_DIR),
    templatesDir: path.resolve(e.RUNBOX_TEMPLATES_DIR ?? path.join(e.RUNBOX_STATE_DIR, 'templates')),
    runcPath: e.RUNBOX_RUNC,
    criuPath: e.RUNBOX_CRIU,
    agentPath: path.resolve(e.RUNBOX_AGENT),
    netCidr: e.RUNBOX_NET_CIDR,
    logLevel: e.RUNBOX_LOG_LEVEL,
    defaultLimits: {
      memoryMb: e.RUNBOX_DEFAULT_MEMORY_MB,
      cpus: e.RUNBOX_DEFAULT_CPUS,
      pids: e.RUNBOX_DEFAULT_PIDS,
      diskMb: e.RUNBOX_DEFAULT_DISK_MB,
      timeoutSec: e.RUNBOX_DEFAULT_TIMEOUT_SEC,
      outputBytes: e.RUNBOX_DEFAULT_OUTPUT_BYTES,
    },
    maxLimits: {
      memoryMb: e.RUNBOX_MAX_MEMORY_MB,
      cpus: e.RUNBOX_MAX_CPUS,
      pids: e.RUNBOX_MAX_PIDS,
      diskMb: e.RUNBOX_MAX_DISK_MB,
      timeoutSec: e.RUNBOX_MAX_TIMEOUT_SEC,
      outputBytes: e.RUNBOX_MAX_OUTPUT_BYTES,
    },
  };
}

export interface PoolConfig {
  template: string;
  network: 'none' | 'private' | 'egress';
}

export interface ServiceConfig extends RuntimeConfig {
  redisUrl?: string;
  redisPrefix: string;
  apiHost: string;
  apiPort: number;
  apiTokens?: string;
  tokenFile: string;
  hostId: string;
  pools: PoolConfig[];
  /** Template recipes (default templates/ of this checkout), for on-demand and pre-builds. */
  recipesDir: string;
  /** Templates `runbox up` builds before the worker starts. */
  prebuildTemplates: string[];
  poolMinIdle: number;
  poolMax: number;
  workerConcurrency: number;
  tenantConcurrency: number;
  resultTtlSec: number;
  maxBodyBytes: number;
  rateLimitPerSec: number;
  maxArtifactBytes: number;
  shutdownGraceSec: number;
  /** BullMQ job lock: a worker that stops renewing it for this long is presumed dead. */
  jobLockMs: number;
  /** Checkpoint store root (a shared mount in production). */
  checkpointDir: string;
  checkpointAfterSec: number;
  checkpointKeep: number;
  /** TCP port on which a worker receives migrating jobs (0: any free port, advertised in its heartbeat). */
  migrationPort: number;
  /** auto: post-copy where both hosts can (criu lazy-pages), else stop-and-copy. */
  migrationMode: 'auto' | 'post-copy' | 'stop-and-copy';
  /** Tenants that may drain and resume hosts. */
  adminTenants: string[];
}

export function serviceConfigFromEnv(raw: NodeJS.ProcessEnv, hostname: string): ServiceConfig {
  const e = parseEnv(raw);
  const rt = runtimeConfigFromEnv(raw);
  return {
    ...rt,
    redisUrl: e.RUNBOX_REDIS_URL,
    redisPrefix: e.RUNBOX_REDIS_PREFIX,
    apiHost: e.RUNBOX_API_HOST,
    apiPort: e.RUNBOX_API_PORT,
    apiTokens: e.RUNBOX_API_TOKENS,
    tokenFile: e.RUNBOX_TOKEN_FILE ?? path.join(rt.stateDir, 'api-tokens'),
    hostId: e.RUNBOX_HOST_ID ?? hostname,
    pools: e.RUNBOX_POOLS.split(',').filter(Boolean).map((p) => {
      const [template, network] = p.split(':') as [string, PoolConfig['network']];
      return { template, network };
    }),
    recipesDir: path.resolve(e.RUNBOX_RECIPES_DIR),
    prebuildTemplates: e.RUNBOX_PREBUILD_TEMPLATES.split(',').filter(Boolean),
    poolMinIdle: e.RUNBOX_POOL_MIN_IDLE,
    poolMax: e.RUNBOX_POOL_MAX,
    workerConcurrency: e.RUNBOX_WORKER_CONCURRENCY,
    tenantConcurrency: e.RUNBOX_TENANT_CONCURRENCY,
    resultTtlSec: e.RUNBOX_RESULT_TTL_SEC,
    maxBodyBytes: e.RUNBOX_MAX_BODY_BYTES,
    rateLimitPerSec: e.RUNBOX_RATE_LIMIT_PER_SEC,
    maxArtifactBytes: e.RUNBOX_MAX_ARTIFACT_BYTES,
    shutdownGraceSec: e.RUNBOX_SHUTDOWN_GRACE_SEC,
    jobLockMs: e.RUNBOX_JOB_LOCK_MS,
    checkpointDir: path.resolve(e.RUNBOX_CHECKPOINT_DIR ?? path.join(rt.stateDir, 'checkpoints')),
    checkpointAfterSec: e.RUNBOX_CHECKPOINT_AFTER_SEC,
    checkpointKeep: e.RUNBOX_CHECKPOINT_KEEP,
    migrationPort: e.RUNBOX_MIGRATION_PORT,
    migrationMode: e.RUNBOX_MIGRATION_MODE,
    adminTenants: e.RUNBOX_ADMIN_TENANTS.split(','),
  };
}
