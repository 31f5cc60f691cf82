import { createRequire } from 'node:module';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import { RunboxError } from '../../core/errors.js';

/** Loads build/<name>.node (compiled by scripts/setup.sh from runtime/native/<name>.c). */
export function loadAddon<T>(name: string): T {
  const file = path.join(REPO_ROOT, `build/${name}.node`);
  try {
    return createRequire(import.meta.url)(file) as T;
  } catch (e) {
    throw new RunboxError('unavailable', `cannot load ${file}; run "npm run setup" first`, { cause: e });
  }
}
