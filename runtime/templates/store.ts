import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { TemplateInfoSchema, type TemplateInfo } from '../../core/template.js';

/**
 * Built templates on this host: <dir>/<name>/<hash>/rootfs (+ template.json) and a `current`
 * symlink naming the hash in use. The hash is the recipe's content hash, so two hosts with the same
 * hash have the same root filesystem (what a checkpoint restore on another host relies on).
 *
 *   <dir>/<name>/current -> <hash>          the version new VPSs get (swapped atomically)
 *   <dir>/<name>/<hash>/rootfs/             read-only lower dir of every VPS of that version
 *   <dir>/<name>/<hash>/template.json       TemplateInfo: name, hash, size, build date, defaults
 *   <dir>/<name>/.lock-<hash>               held while that version is being built
 *   <dir>/<name>/.build-<hash>-<random>/    a build in progress (exists only under the lock)
 */
export interface TemplateRef {
  name: string;
  hash: string;
  rootfs: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const VERSION = /^[a-f0-9]{16,64}$/;

export async function resolveTemplate(dir: string, name: string): Promise<TemplateRef> {
  if (!NAME.test(name)) {
    throw new RunboxError('invalid_argument', `invalid template name "${name}" (lowercase letters, digits, . _ -)`);
  }
  let hash: string;
  try {
    hash = path.basename(await fs.readlink(path.join(dir, name, 'current')));
  } catch {
    const known = await listTemplates(dir);
    throw new RunboxError(
      'template_missing',
      `template "${name}" is not built on this host (built: ${known.join(', ') || 'none'}); build it with "runbox templates build ${name}"`,
      { meta: { template: name } },
    );
  }
  return { name, hash, rootfs: path.join(dir, name, hash, 'rootfs') };
}

export async function listTemplates(dir: string): Promise<string[]> {
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  const built = await Promise.all(
    names.map(async (n) => ((await fs.readlink(path.join(dir, n, 'current')).catch(() => null)) ? n : null)),
  );
  return built.filter((n): n is string => n !== null).sort();
}

/** template.json of one version, or undefined when that version is not (completely) built. */
export async function readTemplateInfo(dir: string, name: string, hash: string): Promise<TemplateInfo | undefined> {
  try {
    return TemplateInfoSchema.parse(JSON.parse(await fs.readFile(path.join(dir, name, hash, 'template.json'), 'utf8')));
  } catch {
    return undefined;
  }
}

const infoCache = new Map<string, TemplateInfo>();

/**
 * readTemplateInfo, remembered per version: a version's template.json never changes once built.
 * For hot paths (every job, every heartbeat); build and GC decisions use readTemplateInfo, which
 * sees a version disappear.
 */
export async function cachedTemplateInfo(dir: string, name: string, hash: string): Promise<TemplateInfo | undefined> {
  const key = path.join(dir, name, hash);
  let info = infoCache.get(key);
  if (!info) {
    info = await readTemplateInfo(dir, name, hash);
    if (info) infoCache.set(key, info);
  }
  return info;
}

export interface TemplateVersion {
  info: TemplateInfo;
  current: boolean;
}

/** Every built version of every template (or of `only`), newest first within a name. */
export async function listVersions(dir: string, only?: string): Promise<Array<{ name: string; versions: TemplateVersion[] }>> {
  const names = only ? [only] : (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => NAME.test(n)).sort();
  const out: Array<{ name: string; versions: TemplateVersion[] }> = [];
  for (const name of names) {
    const current = await fs.readlink(path.join(dir, name, 'current')).then(path.basename, () => undefined);
    const hashes = (await fs.readdir(path.join(dir, name)).catch(() => [] as string[])).filter((h) => VERSION.test(h));
    const versions: TemplateVersion[] = [];
    for (const h of hashes) {
      const info = await readTemplateInfo(dir, name, h);
      if (info) versions.push({ info, current: h === current });
    }
    versions.sort((a, b) => b.info.builtAt.localeCompare(a.info.builtAt));
    if (versions.length) out.push({ name, versions });
  }
  return out;
}

/**
 * Migration safety: a checkpoint (or a VPS record) names a template version; before its rootfs is
 * used as the lower dir on this host, check that this host has exactly that version. Reads one
 * small file, hashes nothing. `template_missing`: not built here; `checkpoint_incompatible`:
 * template.json records another name or hash than the one asked for (different content).
 */
export async function verifyTemplate(ref: { name: string; hash: string; rootfs?: string }, templatesDir?: string): Promise<TemplateRef> {
  if (!NAME.test(ref.name) || !VERSION.test(ref.hash)) {
    throw new RunboxError('checkpoint_incompatible', `invalid template reference ${ref.name}:${ref.hash}`);
  }
  const rootfs = ref.rootfs ?? (templatesDir ? path.join(templatesDir, ref.name, ref.hash, 'rootfs') : undefined);
  if (!rootfs) throw new RunboxError('internal', 'verifyTemplate needs ref.rootfs or templatesDir');
  const versionDir = path.dirname(rootfs);
  let raw: string;
  try {
    raw = await fs.readFile(path.join(versionDir, 'template.json'), 'utf8');
  } catch {
    throw new RunboxError(
      'template_missing',
      `template ${ref.name} version ${ref.hash} is not built on this host; build the same recipe here ("runbox templates build ${ref.name}")`,
      { meta: { template: ref.name, hash: ref.hash } },
    );
  }
  const info = TemplateInfoSchema.safeParse(parseJson(raw));
  if (!info.success || info.data.hash !== ref.hash || info.data.name !== ref.name) {
    const found = info.success ? `${info.data.name}:${info.data.hash}` : 'an unreadable template.json';
    throw new RunboxError('checkpoint_incompatible', `template at ${versionDir} is ${found}, not the requested ${ref.name}:${ref.hash}: its content differs`, {
      meta: { template: ref.name, hash: ref.hash },
    });
  }
  if (!(await fs.stat(rootfs).then((s) => s.isDirectory(), () => false))) {
    throw new RunboxError('template_missing', `template ${ref.name}:${ref.hash} has no rootfs at ${rootfs}`, { meta: { template: ref.name, hash: ref.hash } });
  }
  return { name: ref.name, hash: ref.hash, rootfs };
}

function parseJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}
