import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRunboxError } from '../../core/errors.js';
import { buildTemplate, ensureTemplateVersion } from '../../runtime/templates/builder.js';
import { gcTemplates, templatesInUse } from '../../runtime/templates/gc.js';
import { mountsUnder } from '../../runtime/templates/sandbox.js';
import { listVersions, resolveTemplate, verifyTemplate } from '../../runtime/templates/store.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { cliBuild, copyRecipe, entries, log, pidsOf, tempDir, waitUntil, writeRecipe } from './helpers.js';

/**
 * Versions, no-op rebuilds, GC, concurrent and failing builds, on copies of the busybox `base`
 * recipe (seconds per build) in scratch recipe and template dirs of this file's own.
 */
let t: TestEngine;
let recipes: string;
let templates: string;
beforeAll(async () => {
  t = await testEngine('builder');
  recipes = await tempDir('recipes');
  templates = await tempDir('built');
});
afterAll(async () => {
  await t?.cleanup();
  for (const d of [recipes, templates]) if (d && (await mountsUnder(d)).length === 0) await fs.rm(d, { recursive: true, force: true });
});

const opts = () => ({ recipesDir: recipes, templatesDir: templates, log, stateDirs: [t.stateDir] });
const appendToBuild = async (name: string, line: string) => fs.appendFile(path.join(recipes, name, 'build.sh'), `\n${line}\n`);
async function rejection(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  if (!isRunboxError(e)) throw new Error(`expected a RunboxError, got ${String(e)}`);
  return { code: e.code, message: e.message };
}

describe('versions', () => {
  it('an unchanged recipe is a quick no-op with the same hash', async () => {
    await copyRecipe(recipes, 'base', 'noop');
    const first = await buildTemplate('noop', opts());
    expect(first).toMatchObject({ name: 'noop', fresh: true, source: 'recipe' });
    expect(first.hash).toMatch(/^[a-f0-9]{16}$/);
    const t0 = Date.now();
    const second = await buildTemplate('noop', opts());
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(second).toMatchObject({ hash: first.hash, fresh: false, builtAt: first.builtAt });
    expect(await entries(templates, 'noop')).toEqual([first.hash, 'current'].sort());
    expect((await resolveTemplate(templates, 'noop')).hash).toBe(first.hash);
  });

  it('a changed recipe builds a new version; a VPS of the old one keeps running; gc removes the old one once unused', async () => {
    await copyRecipe(recipes, 'base', 'evolve');
    const v1 = await buildTemplate('evolve', opts());
    const old = await t.create({ template: await resolveTemplate(templates, 'evolve') });
    try {
      await appendToBuild('evolve', 'echo two >etc/recipe-version');
      const v2 = await buildTemplate('evolve', opts());
      expect(v2.hash).not.toBe(v1.hash);
      expect(v2.fresh).toBe(true);
      expect((await resolveTemplate(templates, 'evolve')).hash).toBe(v2.hash);

      // The old VPS still runs on v1; a new one gets v2.
      let out1 = '';
      const r1 = await old.run({
        argv: ['sh', '-c', 'cat /etc/recipe-version 2>/dev/null || echo one'],
        timeoutSec: 10,
        outputBytes: 4096,
        onOutput: (_s, d) => (out1 += d.toString()),
      });
      expect([r1.exitCode, out1]).toEqual([0, 'one\n']);
      const r2 = await t.sh('cat /etc/recipe-version', { spec: { template: await resolveTemplate(templates, 'evolve') } });
      expect(r2.stdout).toBe('two\n');

      // In use (its VPS record, its overlay mount): kept.
      expect(await templatesInUse([t.stateDir])).toContain(`evolve:${v1.hash}`);
      const kept = await gcTemplates(templates, await templatesInUse([t.stateDir]), { graceSec: 0 });
      expect(kept.removed).toEqual([]);
      const byMountOnly = await gcTemplates(templates, new Set(), { graceSec: 0 });
      expect(byMountOnly.removed).toEqual([]);
      // Within the grace period after the switch: kept too.
      expect((await gcTemplates(templates, new Set())).removed).toEqual([]);
    } finally {
      await t.engine.destroy(old.id);
    }
    const gone = await gcTemplates(templates, await templatesInUse([t.stateDir]), { graceSec: 0 });
    expect(gone.removed).toEqual([`evolve:${v1.hash}`]);
    const left = await listVersions(templates, 'evolve');
    expect(left[0]!.versions.map((v) => [v.info.hash, v.current])).toEqual([[(await resolveTemplate(templates, 'evolve')).hash, true]]);
  });

  it('verifyTemplate accepts the built version and refuses a missing or different one', async () => {
    await copyRecipe(recipes, 'base', 'verify');
    const info = await buildTemplate('verify', opts());
    const ref = await resolveTemplate(templates, 'verify');
    await expect(verifyTemplate(ref)).resolves.toEqual(ref);
    await expect(verifyTemplate({ name: 'verify', hash: info.hash }, templates)).resolves.toEqual(ref);
    expect(await rejection(verifyTemplate({ name: 'verify', hash: '0123456789abcdef' }, templates))).toMatchObject({ code: 'template_missing' });
    // A version dir whose template.json names other content (e.g. copied by hand from another build).
    const fake = path.join(templates, 'verify', 'fedcba9876543210');
    await fs.cp(path.join(templates, 'verify', info.hash), fake, { recursive: true });
    expect(await rejection(verifyTemplate({ name: 'verify', hash: 'fedcba9876543210' }, templates))).toMatchObject({ code: 'checkpoint_incompatible' });
    await fs.rm(fake, { recursive: true });
  });
});

describe('concurrency', () => {
  it('two builds in this process and one in another produce one correct build', async () => {
    await copyRecipe(recipes, 'base', 'race');
    // Slow enough that all three overlap.
    await fs.writeFile(path.join(recipes, 'race', 'build.sh'), (await fs.readFile(path.join(recipes, 'race', 'build.sh'), 'utf8')).replace('set -euo pipefail', 'set -euo pipefail\nsleep 2'));
    const child = cliBuild('race', { RUNBOX_RECIPES_DIR: recipes, RUNBOX_TEMPLATES_DIR: templates, RUNBOX_STATE_DIR: t.stateDir });
    await new Promise((r) => setTimeout(r, 300));
    const [a, b] = await Promise.all([buildTemplate('race', opts()), buildTemplate('race', opts())]);
    const c = await child.done;
    expect(c.code, c.stderr).toBe(0);
    const built = c.events.find((e) => e.event === 'built') as { fresh: boolean; template: { hash: string } };
    expect(new Set([a.hash, b.hash, built.template.hash]).size).toBe(1);
    expect([a.fresh, b.fresh, built.fresh].filter(Boolean)).toHaveLength(1);
    expect(await entries(templates, 'race')).toEqual([a.hash, 'current'].sort());
    const r = await t.sh('ls /bin/busybox && echo fine', { spec: { template: await resolveTemplate(templates, 'race') } });
    expect(r.stdout).toBe('/bin/busybox\nfine\n');
  });
});

describe('failures leave nothing behind', () => {
  it('build.sh exiting 1: a clear error, no trace in the templates dir', async () => {
    await copyRecipe(recipes, 'base', 'broken');
    await appendToBuild('broken', 'echo "the recipe is broken on purpose" >&2; exit 1');
    const e = await rejection(buildTemplate('broken', opts()));
    expect(e.code).toBe('unavailable');
    expect(e.message).toContain('building template "broken" failed in step "build.sh" (exit 1)');
    expect(e.message).toContain('the recipe is broken on purpose');
    expect(await fs.access(path.join(templates, 'broken')).then(() => 'exists', () => 'gone')).toBe('gone');
    expect(await mountsUnder(templates)).toEqual([]);
  });

  it('a killed build: its processes die with it, and gc removes what it left', async () => {
    const sleeper = ['sleep', '987654'];
    await writeRecipe(
      recipes,
      'killed',
      { name: 'killed', description: 'never finishes', builder: 'script', smoke: ['true'] },
      { 'build.sh': `#!/bin/sh\nmkdir -p "$1/etc"\nexec ${sleeper.join(' ')}\n` },
    );
    const child = cliBuild('killed', { RUNBOX_RECIPES_DIR: recipes, RUNBOX_TEMPLATES_DIR: templates, RUNBOX_STATE_DIR: t.stateDir });
    await waitUntil(async () => (await pidsOf(sleeper)).length > 0, 'the build to start sleeping');
    child.kill();
    await child.done;
    // setpriv --pdeathsig + unshare --kill-child: the build's processes go with the builder.
    await waitUntil(async () => (await pidsOf(sleeper)).length === 0, 'the build process to be killed');
    const left = await entries(templates, 'killed');
    expect(left.some((e) => e.startsWith('.build-'))).toBe(true);
    expect(left.some((e) => e.startsWith('.lock-'))).toBe(true);
    const report = await gcTemplates(templates, new Set());
    expect(report.leftovers.length).toBe(2);
    expect(await entries(templates, 'killed')).toEqual([]);
  });

  it('a dependency cycle and a missing parent are refused before building', async () => {
    await writeRecipe(recipes, 'cyc-a', { name: 'cyc-a', description: 'a', base: 'cyc-b', builder: 'apt', packages: ['x'], smoke: ['true'] });
    await writeRecipe(recipes, 'cyc-b', { name: 'cyc-b', description: 'b', base: 'cyc-a', builder: 'apt', packages: ['x'], smoke: ['true'] });
    expect(await rejection(buildTemplate('cyc-a', opts()))).toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('cyc-a → cyc-b → cyc-a') });
    await writeRecipe(recipes, 'orphan', { name: 'orphan', description: 'o', base: 'nosuchparent', builder: 'apt', packages: ['x'], smoke: ['true'] });
    expect(await rejection(buildTemplate('orphan', opts()))).toMatchObject({ code: 'template_missing', message: expect.stringContaining('nosuchparent') });
  });
});

describe('bad input', () => {
  it('unknown template: template_missing naming the recipes there are', async () => {
    const e = await rejection(buildTemplate('no-such-template', opts()));
    expect(e.code).toBe('template_missing');
    expect(e.message).toMatch(/no recipe for template "no-such-template".*recipes: .*noop/);
    expect((await rejection(buildTemplate('Bad Name', opts()))).code).toBe('invalid_argument');
  });

  it('malformed manifests: invalid JSON, unknown field, bad package name, wrong name, missing build.sh', async () => {
    const base = { description: 'x', builder: 'script', smoke: ['true'] };
    const cases: Array<[string, unknown, RegExp]> = [
      ['m-json', '{"name": "m-json",', /manifest\.json: invalid JSON/],
      ['m-field', { name: 'm-field', ...base, colour: 'blue' }, /invalid manifest: .*colour/],
      ['m-pkg', { name: 'm-pkg', description: 'x', builder: 'debootstrap', suite: 'bookworm', packages: ['Bad_Pkg'], smoke: ['true'] }, /packages\.0: a Debian package name/],
      ['m-name', { name: 'other', ...base }, /"name" is "other" but the recipe folder is "m-name"/],
      ['m-nobuild', { name: 'm-nobuild', ...base }, /builder "script" needs a build\.sh/],
      ['m-smoke', { name: 'm-smoke', description: 'x' }, /smoke/],
    ];
    for (const [name, manifest, why] of cases) {
      await writeRecipe(recipes, name, manifest);
      const e = await rejection(buildTemplate(name, opts()));
      expect(e.code, name).toBe('invalid_argument');
      expect(e.message, name).toMatch(why);
      expect(await fs.access(path.join(templates, name)).then(() => 'exists', () => 'gone'), name).toBe('gone');
    }
  });
});

describe('the exact version a checkpoint needs (restore on another host)', () => {
  it('uses a version built here (current or kept), builds it when the recipe makes exactly it, and refuses anything else', async () => {
    await copyRecipe(recipes, 'base', 'pinned');
    const v1 = await buildTemplate('pinned', opts());
    expect(await ensureTemplateVersion('pinned', v1.hash, { ...opts(), build: false })).toEqual({ name: 'pinned', hash: v1.hash, rootfs: path.join(templates, 'pinned', v1.hash, 'rootfs') });
    await appendToBuild('pinned', 'echo two >etc/recipe-version');
    const v2 = await buildTemplate('pinned', opts());
    // v1 is no longer current but still kept here: a checkpoint taken on it restores on it.
    expect((await ensureTemplateVersion('pinned', v1.hash, { ...opts(), build: false })).hash).toBe(v1.hash);

    // Another host, with nothing built yet.
    const other = await tempDir('other-host');
    try {
      const there = { ...opts(), templatesDir: other };
      const missing = await rejection(ensureTemplateVersion('pinned', v2.hash, { ...there, build: false }));
      expect(missing).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringMatching(/not built here/) });
      let builds = 0;
      const built = await ensureTemplateVersion('pinned', v2.hash, { ...there, build: true, onBuild: async () => void builds++ });
      expect([built.hash, builds]).toEqual([v2.hash, 1]);
      expect((await resolveTemplate(other, 'pinned')).hash).toBe(v2.hash);
      // This host's recipe makes v2, not v1: v1 cannot be had here.
      const wrong = await rejection(ensureTemplateVersion('pinned', v1.hash, { ...there, build: true }));
      expect(wrong).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining(`recipe makes version ${v2.hash}`) });
      const noRecipe = await rejection(ensureTemplateVersion('nowhere', v1.hash, { ...there, build: true }));
      expect(noRecipe).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringMatching(/no recipe/) });
      const bogus = await rejection(ensureTemplateVersion('pinned', '../../etc', { ...there, build: false }));
      expect(bogus.code).toBe('checkpoint_incompatible');
    } finally {
      await fs.rm(other, { recursive: true, force: true });
    }
  });
});
