import { z } from 'zod';
import { RunboxError } from './errors.js';

/** Per-job resource limits, as accepted from users (all optional; defaults fill the gaps). */
export const LimitsSchema = z
  .object({
    memoryMb: z.number().int().min(8).describe('memory limit in MiB (OOM kill above it)'),
    cpus: z.number().min(0.01).max(1024).describe('CPU bandwidth in cores (e.g. 0.5)'),
    pids: z.number().int().min(8).describe('maximum number of processes and threads'),
    diskMb: z.number().int().min(16).describe('size of the writable disk layer in MiB (ENOSPC above it)'),
    timeoutSec: z.number().positive().describe('wall-clock limit in seconds; the whole VPS is killed'),
    outputBytes: z.number().int().min(0).describe('cap on captured stdout+stderr bytes'),
  })
  .partial()
  .strict();
export type LimitsInput = z.infer<typeof LimitsSchema>;
export type Limits = Required<LimitsInput>;

export const LIMIT_KEYS = ['memoryMb', 'cpus', 'pids', 'diskMb', 'timeoutSec', 'outputBytes'] as const;

/**
 * Fills defaults and checks maximums. Above a host maximum is `limit_exceeded`, naming the field,
 * so a client can tell "your request is too big here" from "your request is malformed".
 */
export function resolveLimits(requested: LimitsInput | undefined, defaults: Limits, max: Limits): Limits {
  const out = { ...defaults, ...stripUndefined(requested ?? {}) } as Limits;
  for (const key of LIMIT_KEYS) {
    if (out[key] > max[key]) {
      throw new RunboxError('limit_exceeded', `limits.${key} = ${out[key]} is above this host's maximum of ${max[key]}`, {
        meta: { field: `limits.${key}`, max: max[key] },
      });
    }
  }
  return out;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
