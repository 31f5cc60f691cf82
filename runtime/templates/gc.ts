import fs from 'node:fs/promises';
import path from 'node:path';
import { newId } from '../../core/ids.js';
import { isLockHeld, isLockStale } from './lock.js';
import { removeTree } from './sandbox.js';
import { VERSION } from './store.js';

/**
 * Garbage collection of template versions. A version is removed when it is not `current`, no VPS
 * uses it, no build holds its lock, and it was superseded more than `graceSec` ago (the mtime of
 * the `current` symlink says when: a pool or a `runbox run` may have resolved the old version a
 * moment before the switch and not have mounted it yet).
 *
 * "In use" is the union of what the caller passes (VPS records of the state dirs it knows, see
 * templatesInUse) and every overlay mounted on this machine whose lower dir is a version under
 * `templatesDir`, so VPSs of other runbox instances sharing the templates dir count too.
 * Leftovers of killed builds (.build-* dirs whose lock has no live owner) and half-removed
 * versions (.trash-*) go as well.
 */
export interface TemplateGcReport {
  /** "name:hash" of removed versions. */
  removed: string[];
  /** Paths of removed leftovers (killed builds, stale locks). */
  leftovers: string[];
}

export async function gcTemplates(
  templatesDir: string,
  inUse: Set<string>,
  opts: { graceSec?: number; names?: string[] } = {},
): Promise<TemplateGcReport> {
  const report: TemplateGcReport = { removed: [], leftovers: [] };
  const used = new Set([...inUse, ...(await mountedTemplates(templatesDir))]);
  const graceMs = (opts.graceSec ?? 600) * 1000;
  const names = opts.names ?? (await fs.readdir(templatesDir).catch(() => [] as string[]));
  for (const name of names) {
    const dir = path.join(templatesDir, name);
    const entries = await fs.readdir(dir).catch(() => [] as string[]);
    const currentLink = await fs.lstat(path.join(dir, 'current')).catch(() => undefined);
    const current = currentLink ? path.basename(await fs.readlink(path.join(dir, 'current'))) : undefined;
    const lockHeld = async (hash: string) => isLockHeld(path.join(dir, `.lock-${hash}`));

    for (const e of entries) {
      const build = /^\.build-([a-f0-9]+)-/.exec(e);
      const lock = /^\.lock-([a-f0-9]+)$/.exec(e);
      if ((build && !(await lockHeld(build[1]!))) || e.startsWith('.trash-')) {
        await removeTree(path.join(dir, e));
        report.leftovers.push(path.join(dir, e));
      } else if (lock && (await isLockStale(path.join(dir, e)))) {
        await fs.rm(path.join(dir, e), { force: true });
        report.leftovers.push(path.join(dir, e));
      }
    }

    // Without a `current` link nothing says which version is wanted: keep them all.
    if (!current || !currentLink || Date.now() - currentLink.mtimeMs < graceMs) continue;
    for (const hash of entries.filter((e) => VERSION.test(e))) {
      if (hash === current || used.has(`${name}:${hash}`) || (await lockHeld(hash))) continue;
      // Renamed away first, so the version disappears at once; a removal cut short leaves .trash-*.
      const trash = path.join(dir, `.trash-${hash}-${newId().slice(0, 8)}`);
      if (!(await fs.rename(path.join(dir, hash), trash).then(() => true, () => false))) continue;
      await removeTree(trash);
      report.removed.push(`${name}:${hash}`);
    }
  }
  return report;
}

/** "name:hash" of template versions VPS records under these state dirs refer to (<state>/vps/<id>/vps.json). */
export async function templatesInUse(stateDirs: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  for (const sd of stateDirs) {
    const vpsRoot = path.join(sd, 'vps');
    for (const id of await fs.readdir(vpsRoot).catch(() => [] as string[])) {
      try {
        const rec = JSON.parse(await fs.readFile(path.join(vpsRoot, id, 'vps.json'), 'utf8')) as { spec?: { template?: { name?: string; hash?: string } } };
        const t = rec.spec?.template;
        if (t?.name && t.hash) out.add(`${t.name}:${t.hash}`);
      } catch {
        /* a VPS dir without a readable record: being created or destroyed */
      }
    }
  }
  return out;
}

/**
 * "name:hash" of versions mounted on this machine: the lower dir of an overlay, or the source of
 * another mount of the version's rootfs (a VPS in a user namespace has its template through an
 * idmapped mount, which its overlay names instead). The latter is found by file system and root:
 * mountinfo gives each mount's device and the path within that device it shows.
 */
export async function mountedTemplates(templatesDir: string): Promise<Set<string>> {
  const out = new Set<string>();
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const decode = (p: string) => p.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const tdir = path.resolve(templatesDir);
  const prefix = `${tdir}/`;
  const add = (rel: string) => {
    const [name, hash, rootfs] = rel.split('/');
    if (name && hash && rootfs === 'rootfs') out.add(`${name}:${hash}`);
  };
  const lines = info.split('\n').map((l) => l.split(' ')).filter((f) => f.length > 5);
  for (const f of lines) {
    const m = /[\s,]lowerdir=([^,\s]+)/.exec(` ${f.slice(6).join(' ')}`);
    if (!m) continue;
    for (const lower of m[1]!.split(':')) {
      const p = decode(lower);
      if (p.startsWith(prefix)) add(p.slice(prefix.length));
    }
  }
  // The mount the templates dir is on (the last one mounted at the longest matching point)...
  let host: string[] | undefined;
  for (const f of lines) {
    const mp = decode(f[4]!);
    if (tdir !== mp && !tdir.startsWith(mp === '/' ? '/' : `${mp}/`)) continue;
    if (!host || mp.length >= decode(host[4]!).length) host = f;
  }
  if (host) {
    // ...and every mount of the same device showing a path under it.
    const under = path.join(decode(host[3]!), path.relative(decode(host[4]!), tdir));
    const rootPrefix = under === '/' ? '/' : `${under}/`;
    for (const f of lines) {
      const root = decode(f[3]!);
      if (f[2] === host[2] && f !== host && root.startsWith(rootPrefix)) add(root.slice(rootPrefix.length));
    }
  }
  return out;
}
