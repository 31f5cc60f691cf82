import { newId } from '../core/ids.js';
import {
  checkInterrupted,
  note,
  now,
  report,
  run,
  RUNBOX_BIN,
  stats,
  TEMPLATES_DIR,
  type BenchContext,
  type Benchmark,
} from './lib.js';

const NAME = 'cold-run';
/** Address range the CLI's engine is configured with (ours uses the context's). */
const CLI_NET_CIDR = '10.250.1.0/24';

interface Sample {
  create: number;
  /** Part of create: until `runc run --detach` returned (overlay, spec, runc). */
  createStart: number;
  /** Part of create: from there until the agent said ready. */
  createReady: number;
  run: number;
  destroy: number;
  total: number;
}

/** engine.create → vps.run(['true']) → engine.destroy, in this process. */
async function ours(ctx: BenchContext): Promise<Sample> {
  const id = newId();
  const spec = await ctx.spec(id);
  const t0 = now();
  const vps = await ctx.engine.create(id, spec);
  const t1 = now();
  let t2 = t1;
  let exit: number | null = null;
  let error: string | undefined;
  try {
    const r = await vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 * 1024 });
    t2 = now();
    exit = r.exitCode;
    error = r.error?.message;
  } finally {
    await ctx.engine.destroy(id);
  }
  const t3 = now();
  if (exit !== 0 || error) throw new Error(`VPS ${id}: true exited ${exit}${error ? `: ${error}` : ''}`);
  const started = ctx.createTimes.get(id)?.runcStarted ?? NaN;
  ctx.createTimes.delete(id);
  return { create: t1 - t0, createStart: started - t0, createReady: t1 - started, run: t2 - t1, destroy: t3 - t2, total: t3 - t0 };
}

/**
 * `runc run` (foreground) of the template's rootfs, read-only, running `true`. runc 1.1 deletes a
 * foreground container itself when its process exits; `runc delete` is run (and timed) only when
 * state is left, so the baseline is "run a container and leave nothing behind", not one no-op
 * process more.
 */
async function bare(ctx: BenchContext, bundle: string): Promise<number> {
  const id = `bare-${newId()}`;
  const t0 = now();
  const r = await run(ctx.bareArgs('run', '--bundle', bundle, id), { stdio: ['ignore', 'ignore', 'pipe'] });
  if (await ctx.bareExists(id)) {
    const d = await run(ctx.bareArgs('delete', id));
    if (d.code !== 0) throw new Error(`runc delete ${id}: ${d.stderr.trim()}`);
  }
  const t1 = now();
  if (r.code !== 0) throw new Error(`runc run ${id} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
  return t1 - t0;
}

/** `bin/runbox run -- true`, end to end (Node start-up included), against the context's state dir. */
async function cli(ctx: BenchContext): Promise<number> {
  const env = {
    ...process.env,
    RUNBOX_STATE_DIR: ctx.stateDir,
    RUNBOX_TEMPLATES_DIR: TEMPLATES_DIR,
    RUNBOX_NET_CIDR: CLI_NET_CIDR,
  };
  const t0 = now();
  const r = await run([RUNBOX_BIN, 'run', '--', 'true'], { env });
  const t1 = now();
  if (r.code !== 0) throw new Error(`runbox run -- true exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  return t1 - t0;
}

export const coldRun: Benchmark = {
  name: NAME,
  description: 'create → run `true` → destroy of one VPS (p50/p90/p99/mean per phase) vs bare `runc run` of the same rootfs, plus the CLI end to end',
  options: {
    runs: { default: 50, min: 1, help: 'measured iterations of each kind (use ≥ 50 for recorded numbers)' },
    warmup: { default: 2, min: 0, help: 'unmeasured iterations first (golden disk images, page cache)' },
  },
  async run(ctx, opts) {
    const runs = opts.runs!;
    const warmup = opts.warmup!;
    if (runs < 50) note(`--runs ${runs} < 50: fine for a try, not for recorded numbers`);
    const bundle = await ctx.bareBundle('cold', ['true']);

    const samples: Sample[] = [];
    const bareMs: number[] = [];
    const cliMs: number[] = [];
    for (let i = -warmup; i < runs; i++) {
      checkInterrupted();
      // Alternate which of ours/bare goes first so drifting machine noise hits both alike.
      let s: Sample;
      let b: number;
      if (i % 2 === 0) {
        b = await bare(ctx, bundle);
        s = await ours(ctx);
      } else {
        s = await ours(ctx);
        b = await bare(ctx, bundle);
      }
      checkInterrupted();
      const c = await cli(ctx);
      if (i < 0) {
        note(`warm-up ${i + warmup + 1}/${warmup}: ours ${s.total.toFixed(1)} ms, bare ${b.toFixed(1)} ms, cli ${c.toFixed(0)} ms`);
        continue;
      }
      samples.push(s);
      bareMs.push(b);
      cliMs.push(c);
      if ((i + 1) % 10 === 0 || i + 1 === runs) {
        note(`${i + 1}/${runs}: ours ${s.total.toFixed(1)} ms (create ${s.create.toFixed(1)}, run ${s.run.toFixed(1)}, destroy ${s.destroy.toFixed(1)}), bare ${b.toFixed(1)} ms, cli ${c.toFixed(0)} ms`);
      }
    }

    const b = stats(bareMs);
    const t = stats(samples.map((x) => x.total));
    for (const k of ['p50', 'p90', 'p99', 'mean'] as const) {
      report(NAME, { metric: `total_${k}`, value: t[k], unit: 'ms', baseline: b[k] });
    }
    for (const phase of ['create', 'run', 'destroy', 'createStart', 'createReady'] as const) {
      const st = stats(samples.map((x) => x[phase]));
      const label = phase === 'createStart' ? 'create.runc_started' : phase === 'createReady' ? 'create.agent_ready' : phase;
      for (const k of ['p50', 'p90', 'p99', 'mean'] as const) report(NAME, { metric: `${label}_${k}`, value: st[k], unit: 'ms' });
    }
    const c = stats(cliMs);
    report(NAME, { metric: 'cli_total_p50', value: c.p50, unit: 'ms' });
    report(NAME, { metric: 'cli_total_p99', value: c.p99, unit: 'ms' });
    note(`bare runc run: p50 ${b.p50.toFixed(1)} ms, p99 ${b.p99.toFixed(1)} ms over ${b.n}; ours p50 ${t.p50.toFixed(1)} ms (target ≤ 150 ms)`);
  },
};
