import type { Redis } from 'ioredis';
import { z } from 'zod';
import { Keys } from './keys.js';

export const PoolStateSchema = z.object({
  template: z.string(),
  network: z.string(),
  diskMb: z.number(),
  idle: z.number(),
  creating: z.number(),
  inUse: z.number(),
  minIdle: z.number(),
  maxSize: z.number(),
  created: z.number(),
  createMsAvg: z.number(),
});
export type PoolState = z.infer<typeof PoolStateSchema>;

export const HostSchema = z.object({
  id: z.string(),
  address: z.string().nullable(),
  startedAt: z.string(),
  heartbeatAt: z.string(),
  draining: z.boolean(),
  running: z.number(),
  capacity: z.number(),
  pools: z.array(PoolStateSchema),
  /** Templates built on this host: the `current` version of each, its size and build date. */
  templates: z.array(z.object({ name: z.string(), hash: z.string(), sizeBytes: z.number().optional(), builtAt: z.string().optional() })),
  version: z.string(),
  /** TCP port of the host's migration receiver (on `address`). */
  migrationPort: z.number().int().optional(),
  /**
   * SHA-256 fingerprint (`AB:CD:…`) of the certificate the host's migration receiver presents and
   * its moves authenticate with: peers accept exactly the certificates live hosts publish here
   * (worker/migration/credentials.ts).
   */
  migrationFingerprint: z.string().regex(/^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/).optional(),
  /** The worker process behind this heartbeat (`<id>~<random>`): holder name of its job leases (core/store/leases.ts). */
  instance: z.string().optional(),
  /** Ids of the jobs this host runs right now (what reconciliation compares records with). */
  jobs: z.array(z.string()).optional(),
  /** Whether CRIU here can checkpoint processes of non-root users (root has CAP_SYS_RESOURCE). */
  checkpointNonRoot: z.boolean().optional(),
  /** The OCI runtime of its VPSs (absent: runc): a VPS moves only between hosts of the same one. */
  runtime: z.enum(['runc', 'crun']).optional(),
  /** Whether its VPSs have user namespaces (absent: no): a VPS moves only between hosts that agree. */
  userns: z.boolean().optional(),
});
export type Host = z.infer<typeof HostSchema>;

/** Hosts announce themselves with a heartbeat key that expires when they stop. */
export class HostRegistry {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
  }

  async heartbeat(h: Host, ttlSec: number): Promise<void> {
    await this.redis.multi().set(this.keys.host(h.id), JSON.stringify(h), 'EX', ttlSec).sadd(this.keys.hosts(), h.id).exec();
  }

  async remove(id: string): Promise<void> {
    await this.redis.multi().del(this.keys.host(id)).srem(this.keys.hosts(), id).exec();
  }

  /** Live hosts (expired heartbeats are dropped from the set on the way). */
  async list(): Promise<Host[]> {
    const ids = await this.redis.smembers(this.keys.hosts());
    if (ids.length === 0) return [];
    const raws = await this.redis.mget(...ids.map((i) => this.keys.host(i)));
    const out: Host[] = [];
    const dead: string[] = [];
    raws.forEach((r, i) => (r ? out.push(HostSchema.parse(JSON.parse(r))) : dead.push(ids[i]!)));
    if (dead.length) await this.redis.srem(this.keys.hosts(), ...dead);
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  async get(id: string): Promise<Host | null> {
    const r = await this.redis.get(this.keys.host(id));
    return r ? HostSchema.parse(JSON.parse(r)) : null;
  }
}

/**
 * The host to move a job to: alive, not draining, not `exclude`, accepting (authenticated) migrations, running
 * VPSs with the same OCI runtime as `runtime` (absent: runc) and user namespaces alike, with the most free capacity (capacity - running);
 * ties go to the first id.
 */
export function pickTarget(hosts: Host[], exclude: string, runtime: Host['runtime'] = 'runc', userns = false): Host | undefined {
  return hosts
    .filter((h) => h.id !== exclude && !h.draining && h.migrationPort && h.migrationFingerprint && h.address && h.capacity - h.running > 0)
    .filter((h) => (h.runtime ?? 'runc') === runtime && (h.userns ?? false) === userns)
    .sort((a, b) => b.capacity - b.running - (a.capacity - a.running) || a.id.localeCompare(b.id))[0];
}
