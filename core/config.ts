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
});
export type Env = z.infer<typeof EnvSchema>;

export interface RuntimeConfig {
  stateDir: string;
  runcPath: string;
  criuPath: string;
  agentPath: string;
  netCidr: string;
  logLevel: Env['RUNBOX_LOG_LEVEL'];
  defaultLimits: Limits;
  maxLimits: Limits;
}

/** Compiles validated env into the typed config components receive. */
export function runtimeConfigFromEnv(raw: NodeJS.ProcessEnv): RuntimeConfig {
  const parsed = EnvSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid configuration:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  return {
    stateDir: path.resolve(e.RUNBOX_STATE_DIR),
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
