import { Hono } from 'hono';
import type { Host } from '../../core/store/hosts.js';
import type { ApiEnv, RouteDeps } from '../deps.js';

export interface TemplateVersionInfo {
  hash: string;
  /** Hosts that have this version as their current one. */
  hosts: string[];
  sizeBytes: number | null;
  builtAt: string | null;
}

export interface TemplateInfo {
  name: string;
  /** Hosts that have it built. */
  hosts: string[];
  /** Content hash of the build (null: no host has built it yet; the first job builds it). */
  hash: string | null;
  /** Size and build date of that version, as its host reported them. */
  sizeBytes: number | null;
  builtAt: string | null;
  /** Every version live hosts have, the most widely built first (hosts may differ while a new recipe rolls out). */
  versions: TemplateVersionInfo[];
}

/** Known recipes joined with what each live host has built. */
export function aggregateTemplates(known: string[], hosts: Host[]): TemplateInfo[] {
  const by = new Map<string, TemplateInfo>();
  const blank = (name: string): TemplateInfo => ({ name, hosts: [], hash: null, sizeBytes: null, builtAt: null, versions: [] });
  for (const name of known) by.set(name, blank(name));
  for (const h of hosts) {
    for (const t of h.templates) {
      const info = by.get(t.name) ?? blank(t.name);
      info.hosts.push(h.id);
      let v = info.versions.find((x) => x.hash === t.hash);
      if (!v) info.versions.push((v = { hash: t.hash, hosts: [], sizeBytes: t.sizeBytes ?? null, builtAt: t.builtAt ?? null }));
      v.hosts.push(h.id);
      by.set(t.name, info);
    }
  }
  for (const info of by.values()) {
    info.versions.sort((a, b) => b.hosts.length - a.hosts.length || (b.builtAt ?? '').localeCompare(a.builtAt ?? ''));
    const top = info.versions[0];
    if (top) Object.assign(info, { hash: top.hash, sizeBytes: top.sizeBytes, builtAt: top.builtAt });
  }
  return [...by.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** GET /v1/templates. */
export function templateRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  app.get('/', async (c) => {
    const [known, hosts] = await Promise.all([deps.knownTemplates(), deps.hosts.list()]);
    return c.json({ templates: aggregateTemplates(known, hosts) });
  });
  return app;
}
