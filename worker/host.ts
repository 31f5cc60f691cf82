import os from 'node:os';
import type { Host } from '../core/store/hosts.js';
import type { HostRegistry } from '../core/store/hosts.js';
import type { VpsPool } from '../runtime/pool.js';
import { listTemplates, readTemplateInfo, resolveTemplate } from '../runtime/templates/store.js';

export const HEARTBEAT_MS = 2000;
export const HEARTBEAT_TTL_SEC = 10;

/** Announces this host in Redis every HEARTBEAT_MS; the key expires if the worker dies. */
export class Heartbeat {
  private timer?: NodeJS.Timeout;
  readonly startedAt = new Date().toISOString();
  draining = false;

  constructor(
    private readonly registry: HostRegistry,
    private readonly info: { id: string; address: string | null; capacity: number; templatesDir: string; version: string; migrationPort?: number },
    private readonly pools: VpsPool[],
    private readonly running: () => number,
  ) {}

  async beat(): Promise<void> {
    const names = await listTemplates(this.info.templatesDir);
    const templates = await Promise.all(
      names.map(async (n) => {
        const { hash } = await resolveTemplate(this.info.templatesDir, n);
        const info = await this.templateInfo(n, hash);
        return { name: n, hash, sizeBytes: info?.sizeBytes, builtAt: info?.builtAt };
      }),
    );
    const host: Host = {
      id: this.info.id,
      address: this.info.address,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      draining: this.draining,
      running: this.running(),
      capacity: this.info.capacity,
      pools: this.pools.map((p) => p.state()),
      templates,
      version: this.info.version,
      migrationPort: this.info.migrationPort,
    };
    await this.registry.heartbeat(host, HEARTBEAT_TTL_SEC);
  }

  /** template.json of built versions (immutable once built, so read once per version). */
  private readonly infos = new Map<string, { sizeBytes: number; builtAt: string }>();
  private async templateInfo(name: string, hash: string): Promise<{ sizeBytes: number; builtAt: string } | undefined> {
    const key = `${name}:${hash}`;
    if (!this.infos.has(key)) {
      const info = await readTemplateInfo(this.info.templatesDir, name, hash);
      if (!info) return undefined;
      this.infos.set(key, { sizeBytes: info.sizeBytes, builtAt: info.builtAt });
    }
    return this.infos.get(key);
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
