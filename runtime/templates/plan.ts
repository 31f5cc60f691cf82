import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { RunboxError } from '../../core/errors.js';
import { hostAptConf, hostCodename, primaryMirror, readHostSources, renderSources, templateSources } from './apt-sources.js';
import { fileSha256, templateHash, treeSha256 } from './hash.js';
import { loadRecipe, type Recipe } from './recipes.js';
import { DEBIAN_KEYRING } from './steps.js';

/**
 * What building a template means, worked out without building anything: the recipe, its parent's
 * plan, the builder's inputs and from all of them the version hash. Cheap (reads the recipe
 * folder, hashes a host file or two, reads the host's apt sources): the no-op path of a build
 * that is already done costs only this.
 */
export interface BuildPlan {
  recipe: Recipe;
  hash: string;
  /** Everything hashed besides the recipe folder (recorded in template.json). */
  inputs: Record<string, string>;
  parent?: BuildPlan;
  debootstrap?: { suite: string; mirror: string; keyring?: string; sources: string; aptConf: string };
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 16);
const exists = (p: string) => fs.access(p).then(() => true, () => false);

export async function planBuild(recipesDir: string, name: string, chain: string[] = []): Promise<BuildPlan> {
  if (chain.includes(name)) {
    throw new RunboxError('invalid_argument', `template "${name}" is its own ancestor: ${[...chain, name].join(' → ')}`);
  }
  const recipe = await loadRecipe(recipesDir, name);
  const m = recipe.manifest;
  const inputs: Record<string, string> = { builder: m.builder, arch: process.arch };
  const plan: Omit<BuildPlan, 'hash'> = { recipe, inputs };
  if (m.builder === 'script') {
    for (const [env, file] of Object.entries(m.hostInputs)) {
      const h = await fileSha256(file).catch((e: NodeJS.ErrnoException) => {
        throw new RunboxError('unavailable', `template "${name}" needs the host file ${file} (${env}): ${e.code ?? e.message}`);
      });
      inputs[`host:${env}`] = `${file} sha256:${h}`;
    }
  } else if (m.builder === 'debootstrap') {
    const suite = m.suite!;
    const sources = templateSources(await readHostSources(), suite, await hostCodename());
    const primary = primaryMirror(sources, suite);
    const keyring = primary.signedBy && (await exists(primary.signedBy)) ? primary.signedBy : (await exists(DEBIAN_KEYRING)) ? DEBIAN_KEYRING : undefined;
    const text = renderSources(sources, DEBIAN_KEYRING);
    const aptConf = await hostAptConf();
    plan.debootstrap = { suite, mirror: primary.uri, keyring, sources: text, aptConf };
    Object.assign(inputs, { mirror: primary.uri, suite, sources: sha(text), aptConf: sha(aptConf) });
  } else {
    plan.parent = await planBuild(recipesDir, m.base!, [...chain, name]);
    inputs.parent = `${plan.parent.recipe.name}:${plan.parent.hash}`;
  }
  return { ...plan, hash: templateHash(await treeSha256(recipe.dir), inputs) };
}
