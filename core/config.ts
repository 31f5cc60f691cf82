import { z } from 'zod';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { envFlag } from './env-flag.js';
import type { Limits } from './limits.js';
import { objectStoreChoice, ObjectStoreEnvSchema, type ObjectStoreChoice } from './objects/location.js';

/** Repository root (this file lives in core/ or dist/core/). */
export const REPO_ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.dirname(here)) === 'dist' ? path.resolve(here, '../..') : path.resolve(here, '..');
})();

/** RUNBOX_REDIS_MAXMEMORY: bytes with an optional binary unit, or 1–100 % of the host's RAM. */
const REDIS_MAXMEMORY_RE = /^(\d{1,15})(?:([kmg])i?b?)?$|^(100|[1-9]\d?)%$/i;

/** The embedded Redis's maxmemory in bytes (0: none) from RUNBOX_REDIS_MAXMEMORY and the host's RAM. */
export function redisMaxmemoryBytes(raw: string, totalMemBytes: number): number {
  const m = REDIS_MAXMEMORY_RE.exec(raw.trim());
  if (!m) throw new Error(`invalid RUNBOX_REDIS_MAXMEMORY "${raw}"`);
  if (m[3]) return Math.floor((totalMemBytes * Number(m[3])) / 100);
  const unit = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  return Number(m[1]) * unit;
}

/**
 * Defaults of the per-tenant caps (0 = no cap). A queued job may carry a 32 MiB request, so 1000
 * jobs would be 32 GiB of Redis: the byte cap is what bounds memory, the count bounds queue scans.
 * The checkpoint floor is the floor of `checkpoint.everySec` (core/job.ts).
 */
export const TENANT_CAP_DEFAULTS = {
  tenantMaxQueued: 1000,
  tenantMaxQueuedBytes: 256 * 1024 * 1024,
  tenantMaxArtifactBytes: 1024 * 1024 * 1024,
  tenantMaxFollowers: 32,
  checkpointMinIntervalSec: 5,
} as const;

export type TenantCaps = { -readonly [K in keyof typeof TENANT_CAP_DEFAULTS]: number };

/** The caps a component was given, the defaults for the rest (tests build partial configs). */
export function tenantCaps(given: Partial<TenantCaps>): TenantCaps {
  const out = { ...TENANT_CAP_DEFAULTS } as TenantCaps;
  for (const k of Object.keys(out) as Array<keyof TenantCaps>) if (given[k] !== undefined) out[k] = given[k]!;
  return out;
}

/** a.b.c.d or a.b.c.d/n (the firewall clears host bits). */
function isIpv4Cidr(s: string): boolean {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\/(\d{1,2}))?$/.exec(s);
  return !!m && m.slice(1, 5).every((o) => Number(o) <= 255) && Number(m[5] ?? 32) <= 32;
}

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
  /** The OCI runtime: auto (crun where it works, else runc), runc or crun (runtime/oci/runtime-choice.ts). */
  RUNBOX_RUNTIME: z.enum(['auto', 'runc', 'crun'], { message: 'auto, runc or crun' }).default('auto'),
  RUNBOX_CRUN: z.string().min(1).default('/opt/runbox/criu/bin/crun'),
  /**
   * User namespaces for VPSs (runtime/userns/): auto (each VPS in its own, where the host can make
   * idmapped mounts), on (a host that cannot fails), off (root inside is host root).
   */
  RUNBOX_USERNS: z.enum(['auto', 'on', 'off'], { message: 'auto, on or off' }).default('auto'),
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
  // 16 MiB: artifacts live in Redis (RAM) for RUNBOX_RESULT_TTL_SEC; bigger files belong in object storage.
  RUNBOX_MAX_ARTIFACT_BYTES: int(16 * 1024 * 1024),
  // Per-tenant caps on shared resources (0 = no cap): see README "Configuration" and docs/API.md.
  RUNBOX_TENANT_MAX_QUEUED: z.coerce.number().int().min(0).default(TENANT_CAP_DEFAULTS.tenantMaxQueued),
  RUNBOX_TENANT_MAX_QUEUED_BYTES: z.coerce.number().int().min(0).default(TENANT_CAP_DEFAULTS.tenantMaxQueuedBytes),
  RUNBOX_TENANT_MAX_ARTIFACT_BYTES: z.coerce.number().int().min(0).default(TENANT_CAP_DEFAULTS.tenantMaxArtifactBytes),
  RUNBOX_TENANT_MAX_FOLLOWERS: z.coerce.number().int().min(0).default(TENANT_CAP_DEFAULTS.tenantMaxFollowers),
  RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC: z.coerce.number().min(0).default(TENANT_CAP_DEFAULTS.checkpointMinIntervalSec),
  RUNBOX_REDIS_MAXMEMORY: z
    .string()
    .regex(REDIS_MAXMEMORY_RE, 'bytes (e.g. 4294967296, 512m, 4g), a percentage of the host\'s RAM (e.g. 25%), or 0 for no limit')
    .default('25%'),
  RUNBOX_SHUTDOWN_GRACE_SEC: num(30),
  RUNBOX_JOB_LOCK_MS: z.coerce.number().int().min(1000).default(15_000),
  RUNBOX_CHECKPOINT_DIR: z.string().min(1).optional(),
  ...ObjectStoreEnvSchema.shape,
  RUNBOX_CHECKPOINT_AFTER_SEC: z.coerce.number().int().min(0).default(0),
  RUNBOX_CHECKPOINT_KEEP: z.coerce.number().int().min(1).default(2),
  RUNBOX_MIGRATION_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  RUNBOX_MIGRATION_MODE: z.enum(['auto', 'post-copy', 'stop-and-copy']).default('auto'),
  /** Where the migration receiver listens and what the heartbeat advertises (default: the host's first non-internal IPv4 address). */
  RUNBOX_MIGRATION_ADDRESS: z.ipv4().optional(),
  /** Bring-your-own PKI for the migration channel (PEM files); unset: each host makes its own certificate. */
  RUNBOX_MIGRATION_CA: z.string().min(1).optional(),
  RUNBOX_MIGRATION_CERT: z.string().min(1).optional(),
  RUNBOX_MIGRATION_KEY: z.string().min(1).optional(),
  /** Tests only: a job label `runbox.fault` makes a step of its migration fail (worker/migration/faults.ts). */
  RUNBOX_FAULT_INJECTION: envFlag.transform((v) => v ?? false),
  // Removed: admin rights by tenant name (tenant "default" was admin). Any value stops the start.
  RUNBOX_ADMIN_TENANTS: z
    .undefined({
      error: 'removed: admin is now a role of a token, not of a tenant name. Unset RUNBOX_ADMIN_TENANTS and give the operator\'s token the role: tenant:admin=token in RUNBOX_API_TOKENS or the token file (README "Tokens and roles")',
    })
    .optional(),
  // The bearer token a Prometheus scraper sends to GET /metrics (unset: admin tokens only).
  RUNBOX_METRICS_TOKEN: z.string().regex(/^[\x21-\x7e]{16,512}$/, '16 to 512 printable characters without spaces').optional(),
  // VPS network boundary (docs/SECURITY.md "Network").
  RUNBOX_EGRESS_ALLOW: z
    .string()
    .refine((v) => v.split(',').every((c) => c.trim() === '' || isIpv4Cidr(c.trim())), 'a comma-separated list of IPv4 CIDRs or addresses, e.g. 10.20.0.0/16,192.168.1.5')
    .default(''),
  RUNBOX_VPS_TUN: z.preprocess((v) => (v === undefined || v === '' ? '0' : v), z.enum(['0', '1'], { message: '0 or 1' })).transform((v) => v === '1'),
});
export type Env = z.infer<typeof EnvSchema>;

export interface RuntimeConfig {
  stateDir: string;
  /** Built templates (default <stateDir>/templates). */
  templatesDir: string;
  runcPath: string;
  crunPath: string;
  /** RUNBOX_RUNTIME: which OCI runtime starts VPSs (auto: crun where it works). */
  runtime: Env['RUNBOX_RUNTIME'];
  /** RUNBOX_USERNS: each VPS in a user namespace of its own (auto: where the host can). */
  userns: Env['RUNBOX_USERNS'];
  criuPath: string;
  agentPath: string;
  netCidr: string;
  /** Destinations egress VPSs may reach although private or reserved (RUNBOX_EGRESS_ALLOW). */
  egressAllow: string[];
  /** VPSs get /dev/net/tun and keep CAP_NET_ADMIN (RUNBOX_VPS_TUN=1). */
  vpsTun: boolean;
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
    crunPath: e.RUNBOX_CRUN,
    runtime: e.RUNBOX_RUNTIME,
    userns: e.RUNBOX_USERNS,
    criuPath: e.RUNBOX_CRIU,
    agentPath: path.resolve(e.RUNBOX_AGENT),
    netCidr: e.RUNBOX_NET_CIDR,
    egressAllow: e.RUNBOX_EGRESS_ALLOW.split(',').map((c) => c.trim()).filter(Boolean),
    vpsTun: e.RUNBOX_VPS_TUN,
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
  /** Per tenant, 0 = no cap: jobs in `queued`, and the bytes of their stored requests. */
  tenantMaxQueued: number;
  tenantMaxQueuedBytes: number;
  /** Per tenant: artifact bytes held in Redis (core/store/artifacts.ts; 0 = no cap). */
  tenantMaxArtifactBytes: number;
  /** Per tenant and API process: concurrent log followers (SSE or ?follow=1; 0 = no cap). */
  tenantMaxFollowers: number;
  /** Least time between two checkpoint requests (API) for one job (0: no floor). */
  checkpointMinIntervalSec: number;
  /** maxmemory of the Redis `runbox up` starts (bytes, 0: none), with noeviction. */
  redisMaxmemoryBytes: number;
  shutdownGraceSec: number;
  /** BullMQ job lock: a worker that stops renewing it for this long is presumed dead. */
  jobLockMs: number;
  /** Checkpoint store root (dir store), or local staging space (object store). */
  checkpointDir: string;
  /** Where checkpoints (and with an object store, artifacts) live: core/objects/location.ts. */
  objectStore: ObjectStoreChoice;
  checkpointAfterSec: number;
  checkpointKeep: number;
  /** TCP port on which a worker receives migrating jobs (0: any free port, advertised in its heartbeat). */
  migrationPort: number;
  /** auto: post-copy where both hosts can (criu lazy-pages), else stop-and-copy. */
  migrationMode: 'auto' | 'post-copy' | 'stop-and-copy';
  /** Address of the migration receiver, advertised in the heartbeat (unset: the host's first non-internal IPv4 address). */
  migrationAddress?: string;
  /** PEM files of the migration channel's PKI; without cert and key each host makes its own (worker/migration/credentials.ts). */
  migrationTls: { ca?: string; cert?: string; key?: string };
  /** Tests only: honour `runbox.fault` job labels (worker/migration/faults.ts). */
  faultInjection: boolean;
  /** The only token besides admin tokens that may read GET /metrics (it opens nothing else). */
  metricsToken?: string;
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
    tenantMaxQueued: e.RUNBOX_TENANT_MAX_QUEUED,
    tenantMaxQueuedBytes: e.RUNBOX_TENANT_MAX_QUEUED_BYTES,
    tenantMaxArtifactBytes: e.RUNBOX_TENANT_MAX_ARTIFACT_BYTES,
    tenantMaxFollowers: e.RUNBOX_TENANT_MAX_FOLLOWERS,
    checkpointMinIntervalSec: e.RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC,
    redisMaxmemoryBytes: redisMaxmemoryBytes(e.RUNBOX_REDIS_MAXMEMORY, os.totalmem()),
    shutdownGraceSec: e.RUNBOX_SHUTDOWN_GRACE_SEC,
    jobLockMs: e.RUNBOX_JOB_LOCK_MS,
    checkpointDir: path.resolve(e.RUNBOX_CHECKPOINT_DIR ?? path.join(rt.stateDir, 'checkpoints')),
    objectStore: objectStoreChoice(e),
    checkpointAfterSec: e.RUNBOX_CHECKPOINT_AFTER_SEC,
    checkpointKeep: e.RUNBOX_CHECKPOINT_KEEP,
    migrationPort: e.RUNBOX_MIGRATION_PORT,
    migrationMode: e.RUNBOX_MIGRATION_MODE,
    migrationAddress: e.RUNBOX_MIGRATION_ADDRESS,
    migrationTls: migrationTls(e),
    faultInjection: e.RUNBOX_FAULT_INJECTION,
    metricsToken: e.RUNBOX_METRICS_TOKEN,
  };
}

/** The migration channel's PEM files: a certificate needs its key, a CA needs both. */
function migrationTls(e: Env): ServiceConfig['migrationTls'] {
  const { RUNBOX_MIGRATION_CA: ca, RUNBOX_MIGRATION_CERT: cert, RUNBOX_MIGRATION_KEY: key } = e;
  if (!cert !== !key || (ca && !cert)) {
    throw new Error('invalid configuration:\n  RUNBOX_MIGRATION_CERT, RUNBOX_MIGRATION_KEY: set both (and both with RUNBOX_MIGRATION_CA), or neither');
  }
  return { ca: ca && path.resolve(ca), cert: cert && path.resolve(cert), key: key && path.resolve(key) };
}
