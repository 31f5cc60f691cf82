import os from 'node:os';
import type { Host } from '../core/store/hosts.js';
import type { HostRegistry } from '../core/store/hosts.js';
import type { VpsPool } from '../runtime/pool.js';
import type { RunningJobs } from './running.js';
import { cachedTemplateInfo, listTemplates, resolveTemplate } from '../runtime/templates/store.js';

export const HEARTBEAT_MS = 2000;
export const HEARTBEAT_TTL_SEC = 10;

/** Announces this host in Redis every HEARTBEAT_MS; the key expires if the worker dies. */
export class Heartbeat {
  private timer?: NodeJS.Timeout;
  readonly startedAt = new Date().toISOString();
  draining = false;

  constructor(
    private readonly registry: HostRegistry,
    private readonly info: { id: string; instance: string; checkpointNonRoot: boolean; address: string | null; capacity: number; templatesDir: string; version: string; migrationPort?: number; migrationFingerprint?: string; runtime?: 'runc' | 'crun'; userns?: boolean },
    private readonly pools: VpsPool[],
    private readonly running: RunningJobs,
  ) {}

  async beat(): Promise<void> {
    const names = await listTemplates(this.info.templatesDir);
    const templates = await Promise.all(
      names.map(async (n) => {
        const { hash } = await resolveTemplate(this.info.templatesDir, n);
        const info = await cachedTemplateInfo(this.info.templatesDir, n, hash);
        return { name: n, hash, sizeBytes: info?.sizeBytes, builtAt: info?.builtAt };
      }),
    );
    const host: Host = {
      id: this.info.id,
      address: this.info.address,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      draining: this.draining,
      running: this.running.byId.size,
      capacity: this.info.capacity,
      pools: this.pools.map((p) => p.state()),
      templates,
      version: this.info.version,
      migrationPort: this.info.migrationPort,
      migrationFingerprint: this.info.migrationFingerprint,
      instance: this.info.instance,
      checkpointNonRoot: this.info.checkpointNonRoot,
      runtime: this.info.runtime,
      userns: this.info.userns,
      jobs: this.running.held(),
    };
    await this.registry.heartbeat(host, HEARTBEAT_TTL_SEC);
  }

  start(onError: (e: unknown) => void): void {
    const tick = () => void this.beat().catch(onError);
    tick();
    this.timer = setInterval(tick, HEARTBEAT_MS);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.registry.remove(this.info.id);
  }
}

/** The first non-internal IPv4 address, reported so operators (and migration) can reach the host. */
export function primaryAddress(): string | null {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return null;
}
