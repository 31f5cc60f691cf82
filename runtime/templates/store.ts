import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';

/**
 * Built templates on this host: <dir>/<name>/<hash>/rootfs (+ template.json) and a `current`
 * symlink naming the hash in use. The hash is the recipe's content hash, so two hosts with the same
 * hash have the same root filesystem (what a checkpoint restore on another host relies on).
 */
export interface TemplateRef {
  name: string;
  hash: string;
  rootfs: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

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
