import fs from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';

/** Names of the template recipes in the repository (templates/<name>/manifest.json). */
export async function recipeNames(dir = path.join(REPO_ROOT, 'templates')): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  const names = await Promise.all(
    entries.filter((e) => e.isDirectory()).map(async (e) => ((await fs.access(path.join(dir, e.name, 'manifest.json')).then(() => true, () => false)) ? e.name : null)),
  );
  return names.filter((n): n is string => n !== null).sort();
}
