import { newId } from '../core/ids.js';
import { buildTemplate } from '../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../runtime/templates/recipes.js';
import { resolveTemplate, type TemplateRef } from '../runtime/templates/store.js';
import { VpsPool } from '../runtime/pool.js';
import { checkInterrupted, note, now, report, sleep, stats, TEMPLATES_DIR, type BenchContext, type Benchmark } from './lib.js';
import { serviceLogger } from './services.js';

const NAME = 'template-create';
const SETTLE_MS = 50;

/**
 * What a big template costs at VPS creation. The overlay's lower dir is the template's rootfs as
 * it is, so creation should not depend on the template's size: `debian` (~130 MB, ~7.5k files) is
 * compared with `base` (2 MB busybox) for a cold engine.create (layer + overlay + netns + runc +
 * agent ready), and a warm pool's acquire on `debian` is measured against that cold create.
 */
async function coldCreate(ctx: BenchContext, template: TemplateRef): Promise<number> {
  const id = newId();
  const spec = { ...(await ctx.spec(id)), template };
  const t0 = now();
  await ctx.engine.create(id, spec);
  const ms = now() - t0;
  await ctx.engine.destroy(id);
  return ms;
}

export const templateCreate: Benchmark = {
  name: NAME,
  description: 'cold VPS create on the debian template vs base (p50/p90), and warm-pool acquire on debian',
  options: {
    runs: { default: 50, min: 1, help: 'measured creates per template, and pool acquires' },
    warmup: { default: 3, min: 0, help: 'unmeasured creates first' },
    'min-idle': { default: 4, min: 1, help: 'idle VPSs of the debian pool' },
  },
  async run(ctx, opts) {
    const runs = opts.runs!;
    const log = serviceLogger();
    // Built when missing (a no-op when they are: a hash of each recipe).
    for (const name of ['base', 'debian']) {
      const t0 = now();
      const info = await buildTemplate(name, { recipesDir: DEFAULT_RECIPES_DIR, templatesDir: TEMPLATES_DIR, log });
      note(`template ${name} ${info.hash}: ${info.fresh ? `built in ${((now() - t0) / 1000).toFixed(1)} s` : 'already built'}, ${(info.sizeBytes / 1e6).toFixed(1)} MB`);
    }
    const base = await resolveTemplate(TEMPLATES_DIR, 'base');
    const debian = await resolveTemplate(TEMPLATES_DIR, 'debian');

    // (a) cold creates, alternating templates per iteration so machine drift hits both alike.
    const ms: Record<'base' | 'debian', number[]> = { base: [], debian: [] };
    for (let i = -opts.warmup!; i < runs; i++) {
      checkInterrupted();
      for (const [name, ref] of (i % 2 === 0 ? [['debian', debian], ['base', base]] : [['base', base], ['debian', debian]]) as Array<['base' | 'debian', TemplateRef]>) {
        await sleep(SETTLE_MS);
        const t = await coldCreate(ctx, ref);
        if (i >= 0) ms[name].push(t);
      }
    }
    const d = stats(ms.debian);
    const b = stats(ms.base);
    for (const k of ['p50', 'p90', 'mean'] as const) report(NAME, { metric: `cold_create_debian_${k}`, value: d[k], unit: 'ms', baseline: b[k] });
    note(`cold create: debian p50 ${d.p50.toFixed(1)} ms, base p50 ${b.p50.toFixed(1)} ms (n=${d.n})`);

    // (b) warm pool of debian VPSs: acquire() with an idle VPS waiting, vs the cold create above.
    const pool = new VpsPool(
      { template: debian, network: 'none', diskMb: 64, memoryMb: 8192, cpus: 16, pids: 32768, minIdle: opts['min-idle']!, maxSize: opts['min-idle']! + 2, refillConcurrency: 1 },
      ctx.engine,
      log,
    );
    const acquire: number[] = [];
    try {
      for (let i = 0; i < runs; i++) {
        checkInterrupted();
        await pool.warm();
        await sleep(SETTLE_MS);
        const t0 = now();
        const { vps, warm } = await pool.acquire();
        const t = now() - t0;
        await pool.release(vps);
        if (!warm) throw new Error('the debian pool handed out a cold VPS although it was full');
        acquire.push(t);
      }
    } finally {
      await pool.close();
    }
    const a = stats(acquire);
    report(NAME, { metric: 'pool_acquire_debian_p50', value: a.p50, unit: 'ms', baseline: d.p50 });
    report(NAME, { metric: 'pool_acquire_debian_p99', value: a.p99, unit: 'ms' });
    note(`pool acquire on debian: p50 ${a.p50.toFixed(3)} ms, p99 ${a.p99.toFixed(3)} ms (baseline: cold create on debian)`);
  },
};
