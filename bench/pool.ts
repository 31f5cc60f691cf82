import { MiB } from '../core/units.js';
import { VpsPool, type PoolOptions } from '../runtime/pool.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import { checkInterrupted, median, note, now, report, sleep, stats, type BenchContext, type Benchmark } from './lib.js';
import { serviceLogger } from './services.js';

const NAME = 'pool';
const SETTLE_MS = 50;

/** What a default job asks for (RUNBOX_DEFAULT_*): written into a pooled VPS's cgroup on acquire. */
const JOB_LIMITS = { memoryBytes: 256 * MiB, cpus: 1, pids: 256 };

/** A pool as the worker builds it (worker/main.ts): default disk size, the host's maximum limits. */
async function poolOptions(ctx: BenchContext, o: Partial<PoolOptions>): Promise<PoolOptions> {
  return {
    template: await ctx.base(),
    network: 'none',
    diskMb: 256,
    memoryMb: 8192,
    cpus: 16,
    pids: 32768,
    minIdle: 0,
    maxSize: 16,
    ...o,
  };
}

interface Taken {
  /** acquire() → limits written → run() sent → agent's `started` frame, ms. */
  toStarted: number;
  /** Parts of it: acquire() alone, then the cgroup limit writes. */
  acquire: number;
  limits: number;
  warm: boolean;
  vps: RuncVps;
  /** Settles when `true` has exited. */
  finished: Promise<void>;
}

/**
 * The worker's path from "job taken" to "job process running" (worker/processors/run-job.ts:
 * acquireVps → prepare → vps.run), timed up to the agent's `started` frame: the agent sends it
 * right after fork+exec of the job's command.
 */
async function takeAndStart(pool: VpsPool, refillAtOnce = false): Promise<Taken> {
  const t0 = now();
  const { vps, warm } = await pool.acquire();
  // What acquire() did before it learnt to defer the refill while VPSs are still idle.
  if (refillAtOnce) pool.refill();
  const t1 = now();
  await vps.cgroup.setLimits(JOB_LIMITS);
  const t2 = now();
  let startedAt = NaN;
  let onStarted!: () => void;
  const started = new Promise<void>((r) => (onStarted = r));
  const off = vps.channel.on((f) => {
    if (f.type === 'started') {
      startedAt = now();
      onStarted();
    }
  });
  const finished = vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 * 1024 }).then((r) => {
    if (r.exitCode !== 0 || r.error) throw new Error(`VPS ${vps.id}: true exited ${r.exitCode}${r.error ? `: ${r.error.message}` : ''}`);
  });
  await Promise.race([started, finished]);
  off();
  if (Number.isNaN(startedAt)) throw new Error(`VPS ${vps.id}: no started frame`);
  return { toStarted: startedAt - t0, acquire: t1 - t0, limits: t2 - t1, warm, vps, finished };
}

export const pool: Benchmark = {
  name: NAME,
  description: 'warm pool: acquire → limits → run → `started` latency (p50/p99) vs a cold create; refill rate (VPS/s) with refill concurrency 1, 2, 3',
  options: {
    runs: { default: 200, min: 1, help: 'measured jobs of each kind (≥ 100 for recorded numbers)' },
    warmup: { default: 5, min: 0, help: 'unmeasured jobs first' },
    'min-idle': { default: 8, min: 1, help: 'idle VPSs of the warm pool' },
    'refill-to': { default: 20, min: 1, help: 'minIdle the refill-rate part fills an empty pool to' },
    'refill-rounds': { default: 3, min: 1, help: 'rounds of the refill measurement per concurrency (median reported)' },
    'paced-rate': { default: 10, min: 0, help: 'jobs/s of the paced part (refill and destroy running meanwhile); 0 skips it' },
  },
  async run(ctx, opts) {
    const runs = opts.runs!;
    const warmup = opts.warmup!;
    const minIdle = opts['min-idle']!;
    if (runs < 100) note(`--runs ${runs} < 100: fine for a try, not for recorded numbers`);
    const log = serviceLogger();

    // (a) warm vs cold, alternating per iteration so that drifting machine noise hits all kinds
    // alike. Between iterations everything settles: the warm pool is full again, released VPSs
    // are gone. "warm, refill at once" is the same warm path with the replacement's create started
    // right at acquire (VpsPool's behaviour before it deferred that), to show what deferring buys.
    const warmPool = new VpsPool(await poolOptions(ctx, { minIdle, maxSize: minIdle + 2 }), ctx.engine, log);
    const coldPool = new VpsPool(await poolOptions(ctx, { minIdle: 0, maxSize: 4 }), ctx.engine, log);
    type Kind = 'warm' | 'warmRefillAtOnce' | 'cold';
    const kinds: Kind[] = ['warm', 'warmRefillAtOnce', 'cold'];
    const ms: Record<Kind, number[]> = { warm: [], warmRefillAtOnce: [], cold: [] };
    const warmAcquireMs: number[] = [];
    const warmLimitsMs: number[] = [];
    try {
      note(`warming a pool of ${minIdle}`);
      await warmPool.warm();
      for (let i = -warmup; i < runs; i++) {
        checkInterrupted();
        for (const kind of kinds.map((_, k) => kinds[(k + i + warmup) % kinds.length]!)) {
          const p = kind === 'cold' ? coldPool : warmPool;
          await warmPool.warm();
          // Let the kernel finish what the last destroy/create left to its workers (loop device
          // and cgroup release): "warm" here means a full pool on a quiet host.
          await sleep(SETTLE_MS);
          const t = await takeAndStart(p, kind === 'warmRefillAtOnce');
          await t.finished;
          await p.release(t.vps);
          if (p === warmPool && !t.warm) throw new Error('the warm pool handed out a cold VPS although it was full');
          if (i < 0) continue;
          ms[kind].push(t.toStarted);
          if (kind === 'warm') {
            warmAcquireMs.push(t.acquire);
            warmLimitsMs.push(t.limits);
          }
        }
        if (i >= 0 && ((i + 1) % 50 === 0 || i + 1 === runs)) {
          note(`${i + 1}/${runs}: warm p50 ${median(ms.warm).toFixed(2)} ms, warm with refill at once ${median(ms.warmRefillAtOnce).toFixed(2)} ms, cold p50 ${median(ms.cold).toFixed(1)} ms`);
        }
      }
    } finally {
      await warmPool.close();
      await coldPool.close();
    }
    const w = stats(ms.warm);
    const wo = stats(ms.warmRefillAtOnce);
    const c = stats(ms.cold);
    for (const k of ['p50', 'p90', 'p99', 'mean'] as const) {
      report(NAME, { metric: `acquire_to_started_${k}`, value: w[k], unit: 'ms', baseline: c[k] });
    }
    for (const k of ['p50', 'p99'] as const) {
      report(NAME, { metric: `acquire_to_started_refill_at_once_${k}`, value: wo[k], unit: 'ms', baseline: c[k] });
    }
    const a = stats(warmAcquireMs);
    report(NAME, { metric: 'acquire_only_p50', value: a.p50, unit: 'ms' });
    report(NAME, { metric: 'acquire_only_p99', value: a.p99, unit: 'ms' });
    report(NAME, { metric: 'limits_write_p50', value: median(warmLimitsMs), unit: 'ms' });
    note(
      `warm: n=${w.n} p50 ${w.p50.toFixed(2)} p99 ${w.p99.toFixed(2)} max ${w.max.toFixed(2)} ms (target p50 ≤ 5 ms); ` +
        `warm with refill at once: p50 ${wo.p50.toFixed(2)} p99 ${wo.p99.toFixed(2)} ms; cold: p50 ${c.p50.toFixed(1)} p99 ${c.p99.toFixed(1)} ms`,
    );

    // (a') the same path at a steady job rate, without waiting: the pool's refill and the previous
    // jobs' destroys run meanwhile, as in a busy worker.
    const rate = opts['paced-rate']!;
    if (rate > 0) {
      const paced = new VpsPool(await poolOptions(ctx, { minIdle, maxSize: minIdle + 4 }), ctx.engine, log);
      const ms: number[] = [];
      let cold = 0;
      const releases: Promise<void>[] = [];
      try {
        await paced.warm();
        const gap = 1000 / rate;
        const t0 = now();
        for (let i = 0; i < runs; i++) {
          checkInterrupted();
          const due = t0 + i * gap;
          if (now() < due) await sleep(due - now());
          const t = await takeAndStart(paced);
          ms.push(t.toStarted);
          if (!t.warm) cold++;
          releases.push(t.finished.then(() => paced.release(t.vps)));
        }
        await Promise.all(releases);
      } finally {
        await Promise.allSettled(releases);
        await paced.close();
      }
      const s = stats(ms);
      for (const k of ['p50', 'p99'] as const) report(NAME, { metric: `paced_${rate}_per_s_acquire_to_started_${k}`, value: s[k], unit: 'ms', baseline: c[k] });
      report(NAME, { metric: `paced_${rate}_per_s_cold_acquires`, value: cold, unit: 'jobs' });
      note(`paced at ${rate}/s: p50 ${s.p50.toFixed(2)} p99 ${s.p99.toFixed(2)} max ${s.max.toFixed(1)} ms, ${cold}/${runs} cold`);
    }

    // (b) refill rate: an empty pool filled to minIdle = M in the background.
    const m = opts['refill-to']!;
    const concs = [1, 2, 3];
    const rates: Record<number, number[]> = { 1: [], 2: [], 3: [] };
    for (let r = 0; r < opts['refill-rounds']!; r++) {
      for (const conc of concs.map((_, k) => concs[(k + r) % concs.length]!)) {
        checkInterrupted();
        const p = new VpsPool(await poolOptions(ctx, { minIdle: m, maxSize: m, refillConcurrency: conc }), ctx.engine, log);
        try {
          const t0 = now();
          await p.warm();
          const sec = (now() - t0) / 1000;
          if (p.state().idle !== m) throw new Error(`pool holds ${p.state().idle} idle VPSs, expected ${m}`);
          rates[conc]!.push(m / sec);
          note(`refill to ${m} with concurrency ${conc}: ${sec.toFixed(2)} s = ${(m / sec).toFixed(1)} VPS/s (create avg ${p.state().createMsAvg} ms)`);
        } finally {
          await p.close();
        }
        await sleep(500);
      }
    }
    report(NAME, { metric: 'refill_rate_concurrency_1', value: median(rates[1]!), unit: 'VPS/s' });
    report(NAME, { metric: 'refill_rate_concurrency_2', value: median(rates[2]!), unit: 'VPS/s', baseline: median(rates[1]!) });
    report(NAME, { metric: 'refill_rate_concurrency_3', value: median(rates[3]!), unit: 'VPS/s', baseline: median(rates[1]!) });
  },
};
