import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import { mountsUnder } from '../../runtime/templates/sandbox.js';
import { startWorker, type WorkerHandle } from '../../worker/main.js';
import { removeState, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { copyRecipe, entries, tempDir } from './helpers.js';

/**
 * A worker asked for a template that has a recipe but is not built on its host builds it first:
 * the job waits in `starting` with the note "building template NAME", concurrent jobs share the one
 * build, then they run. No recipe and not built: the job fails with template_missing.
 */
let redis: TestRedis;
let cfg: ServiceConfig;
let worker: WorkerHandle;
let s: Submitter;
let recipes: string;
let templates: string;

beforeAll(async () => {
  redis = await startRedis();
  recipes = await tempDir('od-recipes');
  templates = await tempDir('od-built');
  await copyRecipe(recipes, 'base', 'lazy');
  // Slow enough to watch the job wait for it.
  const build = path.join(recipes, 'lazy', 'build.sh');
  await fs.writeFile(build, (await fs.readFile(build, 'utf8')).replace('set -euo pipefail', 'set -euo pipefail\nsleep 2'));
  cfg = await testServiceConfig(redis, { recipesDir: recipes, templatesDir: templates, pools: [] });
  worker = await startWorker({ config: cfg, redisUrl: redis.url, log: createLogger(process.env.RUNBOX_TEST_LOG ?? 'silent'), templatesDir: templates });
  s = new Submitter(cfg, redis.url);
});
afterAll(async () => {
  await s?.close();
  await worker?.close();
  await removeState(cfg, worker?.engine);
  await redis?.stop();
  for (const d of [recipes, templates]) if (d && (await mountsUnder(d)).length === 0) await fs.rm(d, { recursive: true, force: true });
});

describe('on-demand template builds', () => {
  it('builds a missing template once while its jobs wait in starting, then runs them', async () => {
    const ids = await Promise.all([1, 2, 3].map((i) => s.submit({ template: 'lazy', command: ['sh', '-c', `echo job ${i}`] })));
    // While the build runs, the jobs say why they wait, and how far the build is (every job waiting for it).
    let seen = false;
    const progress = new Set<string>();
    const deadline = Date.now() + 20_000;
    while (!(seen && progress.size === ids.length) && Date.now() < deadline) {
      const js = await Promise.all(ids.map(async (id) => (await s.jobs.get(id))!.job));
      seen ||= js[0]!.status === 'starting' && js[0]!.history.some((h) => h.note === 'building template lazy');
      for (const j of js) if (j.status === 'starting' && /^building template lazy/.test(j.progress ?? '')) progress.add(j.id);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(seen).toBe(true);
    expect([...progress].sort()).toEqual([...ids].sort());
    const jobs = await Promise.all(ids.map((id) => s.wait(id, 60_000)));
    expect(jobs.map((j) => j.progress)).toEqual([null, null, null]);
    for (const [i, j] of jobs.entries()) {
      expect(j.status).toBe('succeeded');
      expect(await s.output(j.id)).toBe(`job ${i + 1}\n`);
      expect(j.history.filter((h) => h.note === 'building template lazy')).toHaveLength(1);
    }
    // One build: one version, no leftovers.
    const built = await entries(templates, 'lazy');
    expect(built.filter((e) => /^[a-f0-9]{16}$/.test(e))).toHaveLength(1);
    expect(built.filter((e) => e.startsWith('.'))).toEqual([]);
  }, 90_000);

  it('a template with no recipe that is not built: failed with template_missing', async () => {
    const id = await s.submit({ template: 'nowhere', command: ['true'] });
    const job = await s.wait(id);
    expect(job).toMatchObject({ status: 'failed', error: { code: 'template_missing' } });
    expect(job.error?.message).toContain('"nowhere"');
  });
});
