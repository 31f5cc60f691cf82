import fs from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import { RunboxError } from '../../core/errors.js';
import { ManifestSchema, type Manifest } from '../../core/template.js';
import { TemplateNameSchema } from '../../core/vps-request.js';

/** Where the recipes of this checkout live (templates/<name>/manifest.json + build files). */
export const DEFAULT_RECIPES_DIR = path.join(REPO_ROOT, 'templates');

/** Names of the template recipes in the repository (templates/<name>/manifest.json). */
export async function recipeNames(dir = DEFAULT_RECIPES_DIR): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  const names = await Promise.all(
    entries.filter((e) => e.isDirectory()).map(async (e) => ((await fs.access(path.join(dir, e.name, 'manifest.json')).then(() => true, () => false)) ? e.name : null)),
  );
  return names.filter((n): n is string => n !== null).sort();
}

export interface Recipe {
  name: string;
  /** The recipe folder (everything in it is hashed). */
  dir: string;
  manifest: Manifest;
}

/**
 * Reads and validates templates/<name>/manifest.json. Errors name the file and the field:
 * `template_missing` when there is no such recipe, `invalid_argument` for a malformed one.
 */
export async function loadRecipe(recipesDir: string, name: string): Promise<Recipe> {
  if (!TemplateNameSchema.safeParse(name).success) {
    throw new RunboxError('invalid_argument', `invalid template name "${name}" (lowercase letters, digits, . _ -; at most 64)`);
  }
  const dir = path.join(recipesDir, name);
  const file = path.join(dir, 'manifest.json');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    const known = await recipeNames(recipesDir);
    throw new RunboxError('template_missing', `no recipe for template "${name}" in ${recipesDir} (recipes: ${known.join(', ') || 'none'})`, {
      meta: { template: name },
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new RunboxError('invalid_argument', `${file}: invalid JSON: ${(e as Error).message}`, { meta: { template: name } });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => {
      const where = i.path.join('.') || '(top level)';
      const keys = 'keys' in i && Array.isArray(i.keys) ? ` ${i.keys.join(', ')}` : '';
      return `${where}: ${i.message}${keys}`;
    });
    throw new RunboxError('invalid_argument', `${file}: invalid manifest: ${issues.join('; ')}`, { meta: { template: name, issues } });
  }
  const m = parsed.data;
  const bad = (why: string) => new RunboxError('invalid_argument', `${file}: ${why}`, { meta: { template: name } });
  if (m.name !== name) throw bad(`"name" is "${m.name}" but the recipe folder is "${name}"`);
  if (m.builder === 'apt' && !m.base) throw bad('builder "apt" needs a "base" template to install packages into');
  if (m.builder !== 'apt' && m.base) throw bad(`"base" is only for builder "apt" (this one is "${m.builder}")`);
  if (m.builder === 'apt' && m.packages.length === 0) throw bad('builder "apt" needs at least one package in "packages"');
  if (m.builder === 'debootstrap' && !m.suite) throw bad('builder "debootstrap" needs a Debian "suite" (e.g. "bookworm")');
  if (m.builder === 'script') {
    const ok = await fs.access(path.join(dir, 'build.sh')).then(() => true, () => false);
    if (!ok) throw bad('builder "script" needs a build.sh in the recipe folder');
  }
  if (m.builder !== 'script' && Object.keys(m.hostInputs).length) throw bad('"hostInputs" is only for builder "script"');
  return { name, dir, manifest: m };
}
