import fs from 'node:fs/promises';
import path from 'node:path';
import { errorMessage, isRunboxError, RunboxError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import type { Logger } from '../../core/log.js';
import type { TemplateInfo } from '../../core/template.js';
import { gcTemplates, templatesInUse } from './gc.js';
import { BuildLock } from './lock.js';
import { planBuild, type BuildPlan } from './plan.js';
import { formatProgress, type BuildProgress, type ProgressFn } from './progress.js';
import { loadRecipe } from './recipes.js';
import { copyTree, removeTree, treeBytes } from './sandbox.js';
import { aptInstall, cleanupDebian, configureApt, customize, debootstrap, scriptBuild, smokeInChroot, type StepContext } from './steps.js';
import { readTemplateInfo, resolveTemplate, VERSION, type TemplateRef } from './store.js';

export interface BuildOptions {
  /** Recipe folders (templates/ of the checkout). */
  recipesDir: string;
  /** Built templates (<templatesDir>/<name>/<hash>/...). */
  templatesDir: string;
  log: Logger;
  onProgress?: ProgressFn;
  /** State dirs whose VPS records count as "in use" for the gc after a build (overlay mounts always do). */
  stateDirs?: string[];
}

export type BuildResult = TemplateInfo & {
  /** false: this version was already built (here, by another process, or by a concurrent call). */
  fresh: boolean;
};

/** Builds of this process, by (templatesDir, name, hash): concurrent callers share one build. */
const inflight = new Map<string, Promise<BuildResult>>();

/**
 * Builds template `name` from its recipe (its parent first, recursively) unless that version is
 * built already, and points `current` at it. Content-addressed (see plan.ts): an unchanged recipe
 * is a no-op costing a hash of the recipe folder. Concurrent builds of one version, in this process
 * or in others, produce one build (the others wait for it). A failed or killed build leaves nothing
 * in the templates dir but, after a kill, a .build-* dir the next build or gc removes.
 */
export async function buildTemplate(name: string, opts: BuildOptions): Promise<BuildResult> {
  return ensure(await planBuild(opts.recipesDir, name), opts);
}

async function ensure(plan: BuildPlan, opts: BuildOptions): Promise<BuildResult> {
  if (plan.parent) await ensure(plan.parent, opts);
  const key = `${opts.templatesDir}\0${plan.recipe.name}\0${plan.hash}`;
  let p = inflight.get(key);
  if (!p) {
    p = buildOnce(plan, opts).finally(() => inflight.delete(key));
    inflight.set(key, p);
    return p;
  }
  return { ...(await p), fresh: false };
}

async function buildOnce(plan: BuildPlan, opts: BuildOptions): Promise<BuildResult> {
  const name = plan.recipe.name;
  const hash = plan.hash;
  const nameDir = path.join(opts.templatesDir, name);
  const log = opts.log.child({ template: name, hash });
  let lastStep = '';
  let lastLine = '';
  const progress = (p: Omit<BuildProgress, 'template' | 'hash'>) => {
    const full: BuildProgress = { template: name, hash, ...p };
    const line = formatProgress(full);
    if (line === lastLine) return; // a sample that says nothing new
    if (p.step !== lastStep) log.info({ step: p.step }, line);
    else log.debug(full, line);
    lastStep = p.step;
    lastLine = line;
    opts.onProgress?.(full);
  };

  const done = await readTemplateInfo(opts.templatesDir, name, hash);
  if (done) {
    await setCurrent(nameDir, hash);
    progress({ step: 'done', message: 'already built', rootfsBytes: done.sizeBytes });
    return { ...done, fresh: false };
  }

  await fs.mkdir(nameDir, { recursive: true });
  const lock = await BuildLock.acquire(path.join(nameDir, `.lock-${hash}`), {
    onWait: (holder) => progress({ step: 'waiting', message: `another build of this version is running (pid ${holder.pid})` }),
  });
  let buildDir: string | undefined;
  try {
    // The build we waited for may have finished it.
    const built = await readTemplateInfo(opts.templatesDir, name, hash);
    if (built) {
      await setCurrent(nameDir, hash);
      progress({ step: 'done', message: 'built by another process', rootfsBytes: built.sizeBytes });
      return { ...built, fresh: false };
    }
    // Holding the lock, any .build dir of this version belongs to a build that died.
    for (const e of await fs.readdir(nameDir)) {
      if (e.startsWith(`.build-${hash}-`)) await removeTree(path.join(nameDir, e));
    }
    // A version dir without template.json is half-made (not something this code leaves, but be sure).
    await removeTree(path.join(nameDir, hash));

    buildDir = path.join(nameDir, `.build-${hash}-${newId().slice(0, 8)}`);
    await fs.mkdir(buildDir, { mode: 0o755 });
    const started = Date.now();
    const root = path.join(buildDir, 'rootfs');
    await runBuilder(plan, opts, { template: name, hash, root, log, progress });

    progress({ step: 'publish' });
    const m = plan.recipe.manifest;
    const info: TemplateInfo = {
      name,
      hash,
      builtAt: new Date().toISOString(),
      sizeBytes: await treeBytes(root),
      source: 'recipe',
      base: plan.parent ? { name: plan.parent.recipe.name, hash: plan.parent.hash } : undefined,
      description: m.description,
      build: { builder: m.builder, inputs: plan.inputs, durationMs: Date.now() - started },
      defaults: { user: m.defaultUser, env: m.env, workdir: m.workdir, limits: m.defaultLimits },
    };
    await fs.writeFile(path.join(buildDir, 'template.json'), `${JSON.stringify(info, null, 2)}\n`, { mode: 0o644 });
    // The version appears complete or not at all; a rename onto an existing version fails.
    const published = await fs.rename(buildDir, path.join(nameDir, hash)).then(
      () => true,
      (e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
        return false;
      },
    );
    if (!published) {
      // Someone published this version without the lock (a lock broken by mistake): theirs stands.
      const theirs = await readTemplateInfo(opts.templatesDir, name, hash);
      if (!theirs) throw new RunboxError('internal', `${path.join(nameDir, hash)} exists but holds no complete template`);
      await removeTree(buildDir);
      buildDir = undefined;
      await setCurrent(nameDir, hash);
      return { ...theirs, fresh: false };
    }
    buildDir = undefined;
    await setCurrent(nameDir, hash);
    progress({ step: 'done', message: `built in ${((Date.now() - started) / 1000).toFixed(1)} s`, rootfsBytes: info.sizeBytes });

    await gcTemplates(opts.templatesDir, await templatesInUse(opts.stateDirs ?? []), { names: [name] }).then(
      (r) => r.removed.length && log.info({ removed: r.removed }, 'removed old template versions'),
      (e: unknown) => log.warn({ err: e }, 'template gc after the build failed'),
    );
    return { ...info, fresh: true };
  } catch (e) {
    if (buildDir) {
      await removeTree(buildDir).catch((cleanupErr: unknown) => {
        log.error({ err: cleanupErr }, 'removing the failed build also failed');
        throw new RunboxError('internal', `building template "${name}" failed (${errorMessage(e)}) and so did removing ${buildDir}`, {
          cause: new AggregateError([e, cleanupErr]),
        });
      });
    }
    log.warn({ err: e }, 'template build failed');
    throw isRunboxError(e) ? e : new RunboxError('unavailable', `building template "${name}" failed: ${errorMessage(e)}`, { cause: e });
  } finally {
    await lock.release();
    // A template that never built leaves no empty folder either (fails while anything is in it).
    await fs.rmdir(nameDir).catch(() => undefined);
  }
}

async function runBuilder(plan: BuildPlan, opts: BuildOptions, ctx: StepContext): Promise<void> {
  const m = plan.recipe.manifest;
  if (m.builder === 'script') {
    await scriptBuild(ctx, plan.recipe.dir, m.hostInputs);
    await smokeInChroot(ctx, m.smoke);
    return;
  }
  if (m.builder === 'debootstrap') {
    const d = plan.debootstrap!;
    await debootstrap(ctx, { suite: d.suite, mirror: d.mirror, keyring: d.keyring, packages: m.packages });
    await configureApt(ctx, { sources: d.sources, aptConf: d.aptConf });
  } else {
    const parent = plan.parent!;
    ctx.progress({ step: 'copy parent', message: `${parent.recipe.name} ${parent.hash}` });
    await copyTree(path.join(opts.templatesDir, parent.recipe.name, parent.hash, 'rootfs'), ctx.root);
    await aptInstall(ctx, m.packages);
  }
  await customize(ctx, plan.recipe.dir);
  await smokeInChroot(ctx, m.smoke);
  await cleanupDebian(ctx);
}

/** Points <name>/current at `hash` atomically (a new symlink renamed over the old one). */
async function setCurrent(nameDir: string, hash: string): Promise<void> {
  const link = path.join(nameDir, 'current');
  if ((await fs.readlink(link).catch(() => undefined)) === hash) return;
  const tmp = path.join(nameDir, `.current-${newId().slice(0, 8)}`);
  await fs.symlink(hash, tmp);
  await fs.rename(tmp, link);
}

/**
 * For the worker: the template, built first if it has a recipe but is not built on this host.
 * `onBuild` is called before a build starts (the job records "building template NAME").
 * Without a recipe and not built: template_missing, as before.
 */
export async function ensureTemplate(name: string, opts: BuildOptions & { onBuild?: () => Promise<void> }): Promise<TemplateRef> {
  try {
    return await resolveTemplate(opts.templatesDir, name);
  } catch (e) {
    if (!isRunboxError(e, 'template_missing')) throw e;
    const hasRecipe = await loadRecipe(opts.recipesDir, name).then(() => true, (err: unknown) => {
      if (isRunboxError(err, 'template_missing')) return false;
      throw err;
    });
    if (!hasRecipe) throw e;
  }
  await opts.onBuild?.();
  await buildTemplate(name, opts);
  return resolveTemplate(opts.templatesDir, name);
}

/**
 * Exactly version `hash` of template `name`, for restoring a checkpoint taken on it: already built
 * here (the current version, or an older one still kept), or, with `build`, built now from this
 * host's recipe when that recipe makes exactly this version (versions are content hashes, see
 * plan.ts). Anything else is `checkpoint_incompatible`: restored onto other template content, the
 * VPS's processes would find files that are not the ones they had open.
 */
export async function ensureTemplateVersion(
  name: string,
  hash: string,
  opts: BuildOptions & { build: boolean; onBuild?: () => Promise<void> },
): Promise<TemplateRef> {
  const current = await resolveTemplate(opts.templatesDir, name).catch((e: unknown) => {
    if (isRunboxError(e, 'template_missing')) return undefined;
    throw e;
  });
  if (current?.hash === hash) return current;
  const rootfs = path.join(opts.templatesDir, name, hash, 'rootfs');
  if (VERSION.test(hash) && (await fs.stat(rootfs).catch(() => undefined))?.isDirectory()) return { name, hash, rootfs };
  const here = current ? `version ${current.hash} here` : 'not built here';
  if (!opts.build) throw new RunboxError('checkpoint_incompatible', `template ${name} is ${here}; the checkpoint needs version ${hash}`);
  const plan = await planBuild(opts.recipesDir, name).catch((e: unknown) => {
    if (isRunboxError(e, 'template_missing')) return undefined;
    throw e;
  });
  if (plan?.hash !== hash) {
    const recipe = plan ? `this host's recipe makes version ${plan.hash}` : 'this host has no recipe for it';
    throw new RunboxError('checkpoint_incompatible', `template ${name} is ${here} and ${recipe}; the checkpoint needs version ${hash}`);
  }
  await opts.onBuild?.();
  await ensure(plan, opts);
  return { name, hash, rootfs };
}
