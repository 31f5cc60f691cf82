import { Hono } from 'hono';
import type { Host } from '../../core/store/hosts.js';
import type { ApiEnv, RouteDeps } from '../deps.js';

export interface TemplateInfo {
  name: string;
  /** Hosts that have it built. */
  hosts: string[];
  /** Content hash of the build (null: no host has built it yet; the first job builds it). */
  hash: string | null;
}

/** Known recipes joined with what each live host has built. */
export function aggregateTemplates(known: string[], hosts: Host[]): TemplateInfo[] {
  const by = new Map<string, TemplateInfo>();
  for (const name of known) by.set(name, { name, hosts: [], hash: null });
  for (const h of hosts) {
    for (const t of h.templates) {
      const info = by.get(t.name) ?? { name: t.name, hosts: [], hash: null };
      info.hosts.push(h.id);
      info.hash ??= t.hash;
      by.set(t.name, info);
    }
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
