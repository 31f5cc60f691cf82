import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { newId } from '../core/ids.js';
import { exec, execOk } from '../runtime/exec.js';
import { DEFAULT_REFILL_CONCURRENCY } from '../runtime/pool.js';
import { goldenImage, overlayOptions } from '../runtime/storage/layer.js';
import { copySparse, mount, mountLoop, MS, netnsAdd, netnsDel, umount } from '../runtime/native/sys.js';
import { checkInterrupted, median, note, now, report, run, RUNC, sleep, type BenchContext, type Benchmark } from './lib.js';
import { benchServiceConfig, BenchSubmitter, cpuBusyMs, ownCpuMs, processCpuMs, startBenchRedis, startBenchWorker, type BenchRedis, type ServiceKnobs } from './services.js';

const NAME = 'throughput';

/** Worker configurations tried (`--config K` runs only the K-th, 1-based; 0 runs all). */
const CONFIGS: ServiceKnobs[] = [
  // 1: the defaults of `runbox up` (README "Configuration": concurrency 8, min idle 2, max 16) and VpsPool's default refill concurrency
  { workerConcurrency: 8, poolMinIdle: 2, poolMax: 16 },
  { workerConcurrency: 8, poolMinIdle: 2, poolMax: 16, refillConcurrency: 1 },
  { workerConcurrency: 8, poolMinIdle: 2, poolMax: 16, refillConcurrency: 3 },
  { workerConcurrency: 4, poolMinIdle: 4, poolMax: 16, refillConcurrency: 2 },
  { workerConcurrency: 8, poolMinIdle: 8, poolMax: 32, refillConcurrency: 3 },
  { workerConcurrency: 2, poolMinIdle: 2, poolMax: 16, refillConcurrency: 2 },
  { workerConcurrency: 16, poolMinIdle: 2, poolMax: 32, refillConcurrency: 2 },
];

const knobsLabel = (k: ServiceKnobs) => `c${k.workerConcurrency}_idle${k.poolMinIdle}_max${k.poolMax}_refill${k.refillConcurrency ?? `${DEFAULT_REFILL_CONCURRENCY}default`}`;

interface Rate {
  perSec: number;
  /** Machine-wide busy CPU per item over the same period, ms (neighbours' load included). */
  cpuMsPer: number;
  /** This process's and its reaped children's CPU per item, ms (see ownCpuMs). */
  ownCpuMsPer: number;
  /** Of that: this Node process alone. */
  nodeCpuMsPer: number;
  items: number;
}

/**
 * Runs `loops` parallel loops of `one(loopIndex)` for `seconds`; items per second over the whole
 * period. A failure stops every loop; all of them have finished when this returns or throws.
 */
async function loopsFor(loops: number, seconds: number, one: (loop: number) => Promise<void>): Promise<Rate> {
  let items = 0;
  let failed = false;
  const cpu0 = await cpuBusyMs();
  const own0 = await ownCpuMs();
  const node0 = (await processCpuMs('self')).self;
  const t0 = now();
  const end = t0 + seconds * 1000;
  const results = await Promise.allSettled(
    Array.from({ length: loops }, async (_, k) => {
      try {
        while (now() < end && !failed) {
          checkInterrupted();
          await one(k);
          items++;
        }
      } catch (e) {
        failed = true;
        throw e;
      }
    }),
  );
  for (const r of results) if (r.status === 'rejected') throw r.reason;
  const sec = (now() - t0) / 1000;
  const cpu = (await cpuBusyMs()) - cpu0;
  const own = (await ownCpuMs()) - own0;
  const node = (await processCpuMs('self')).self - node0;
  return { perSec: items / sec, cpuMsPer: cpu / items, ownCpuMsPer: own / items, nodeCpuMsPer: node / items, items };
}

/** `runc run` (foreground) of `true` on the template's rootfs, read-only; delete only if state is left. */
async function bareOnce(ctx: BenchContext, bundle: string): Promise<void> {
  const id = `bare-${newId()}`;
  const r = await run(ctx.bareArgs('run', '--bundle', bundle, id), { stdio: ['ignore', 'ignore', 'pipe'] });
  if (await ctx.bareExists(id)) await run(ctx.bareArgs('delete', id));
  if (r.code !== 0) throw new Error(`runc run ${id} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
}

/** The engine alone: create → run `true` → destroy, as the CLI's `runbox run` does. */
async function engineOnce(ctx: BenchContext): Promise<void> {
  const id = newId();
  const vps = await ctx.engine.create(id, { ...(await ctx.spec(id)), diskMb: 256 });
  try {
    const r = await vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 * 1024 });
    if (r.exitCode !== 0 || r.error) throw new Error(`VPS ${id}: true exited ${r.exitCode}${r.error ? `: ${r.error.message}` : ''}`);
  } finally {
    await ctx.engine.destroy(id);
  }
}

interface StepCost {
  /** Wall time, ms (mean). */
  wall: number;
  /** This process's + its reaped children's CPU, ms (mean; 10 ms ticks, averaged). */
  cpu: number;
}

/**
 * Where one VPS's time goes, step by step, sequentially on an otherwise idle engine: the engine's
 * create (split at "runc started"), the job, the destroy; then the helper processes the engine
 * runs, each alone: cp/mount/umount of the layer and ip netns add/del, then the same made as syscalls
 * in this process (what the engine does now), `runc run -d` + `runc delete` of a bare
 * container, and the floor of any process / any Go process (`true`, `runc --version`).
 */
async function profile(ctx: BenchContext, iterations: number): Promise<Record<string, StepCost & { cgroupCpu?: number }>> {
  const acc = new Map<string, { wall: number[]; cpu: number[] }>();
  const add = (k: string, wall: number, cpu: number) => {
    let a = acc.get(k);
    if (!a) acc.set(k, (a = { wall: [], cpu: [] }));
    a.wall.push(wall);
    a.cpu.push(cpu);
  };
  const step = async <T>(k: string, f: () => Promise<T>): Promise<T> => {
    const c0 = await ownCpuMs();
    const t0 = now();
    const r = await f();
    add(k, now() - t0, (await ownCpuMs()) - c0);
    return r;
  };
  let vpsCgroupCpu = 0;
  for (let i = 0; i < iterations; i++) {
    checkInterrupted();
    const id = newId();
    const spec = { ...(await ctx.spec(id)), diskMb: 256 };
    const t0 = now();
    const vps = await step('engine.create', () => ctx.engine.create(id, spec));
    const started = ctx.createTimes.get(id)?.runcStarted ?? NaN;
    ctx.createTimes.delete(id);
    add('  create: until `runc run -d` returned', started - t0, NaN);
    add('  create: agent ready after that', now() - started, NaN);
    // runc's container init and the agent run in the VPS's cgroup, outside this process's children.
    vpsCgroupCpu += (await vps.usage()).cpuMs;
    await step('vps.run(true)', () => vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 }));
    await step('engine.destroy', () => ctx.engine.destroy(id));
  }
  const golden = await goldenImage({ cacheDir: ctx.engine.layout.cacheDir }, 256);
  const dir = path.join(ctx.stateDir, 'profile');
  const lower = (await ctx.base()).rootfs;
  const bundle = await ctx.bareBundle('profile', ['true']);
  for (let i = 0; i < iterations; i++) {
    checkInterrupted();
    const img = path.join(dir, 'disk.img');
    const layer = path.join(dir, 'layer');
    const root = path.join(dir, 'root');
    await fs.mkdir(layer, { recursive: true });
    await fs.mkdir(root, { recursive: true });
    await step('helper: cp --sparse (golden image)', () => execOk(['cp', '--sparse=always', golden, img]));
    await step('helper: mount ext4 loop', () => execOk(['mount', '-t', 'ext4', '-o', 'loop,nosuid,nodev', img, layer]));
    try {
      await fs.mkdir(path.join(layer, 'upper'));
      await fs.mkdir(path.join(layer, 'work'));
      await step('helper: mount overlay', () => execOk(['mount', '-t', 'overlay', 'overlay', '-o', overlayOptions(lower, layer), root]));
    } finally {
      // One umount process for both, as the engine does.
      await step('helper: umount overlay + loop', () => exec(['umount', root, layer]));
    }
    await fs.rm(img, { force: true });
    // The same steps as the engine makes them now: syscalls in this process (runtime/native/sys.ts).
    await step('sys: copySparse (golden image)', () => copySparse(golden, img));
    await step('sys: mountLoop ext4', () => mountLoop(img, layer, 'ext4', { flags: MS.NOSUID | MS.NODEV }));
    try {
      await fs.mkdir(path.join(layer, 'upper'));
      await fs.mkdir(path.join(layer, 'work'));
      await step('sys: mount overlay', () => mount('overlay', root, 'overlay', { data: overlayOptions(lower, layer) }));
    } finally {
      await step('sys: umount overlay + loop', async () => {
        await umount(root).catch(() => undefined);
        await umount(layer);
      });
    }
    await fs.rm(img, { force: true });
    const ns = `rbprof-${newId()}`;
    await step('helper: ip netns add', () => execOk(['ip', 'netns', 'add', ns]));
    await step('helper: ip netns del', () => execOk(['ip', 'netns', 'del', ns]));
    await step('sys: netnsAdd', () => netnsAdd(ns));
    await step('sys: netnsDel', () => netnsDel(ns));
    const bid = `prof-${newId()}`;
    const started = await step('helper: runc run -d (bare, true)', () => run(ctx.bareArgs('run', '--detach', '--bundle', bundle, bid), { stdio: 'ignore' }));
    if (started.code !== 0) throw new Error(`runc run -d ${bid} failed (${started.code ?? started.signal})`);
    await sleep(5); // `true` has exited: what is deleted is a stopped container, as in the engine's destroy
    const deleted = await step('helper: runc delete (bare, stopped)', () => run(ctx.bareArgs('delete', '--force', bid)));
    if (deleted.code !== 0) throw new Error(`runc delete ${bid} failed: ${deleted.stderr.trim()}`);
    await step('helper: spawn true', () => execOk(['true']));
    await step('helper: runc --version (Go floor)', () => execOk([RUNC, '--version']));
  }
  const out: Record<string, StepCost & { cgroupCpu?: number }> = {};
  for (const [k, v] of acc) out[k] = { wall: mean(v.wall), cpu: mean(v.cpu) };
  out['engine.create']!.cgroupCpu = vpsCgroupCpu / iterations;
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

interface QueueResult {
  /** Completed jobs/s between the 10th and the 90th percentile of completion times. */
  steadyPerSec: number;
  /** Jobs done / time from the (warm) worker's start to the last completion. */
  overallPerSec: number;
  failures: number;
  cpuMsPerJob: number;
  ownCpuMsPerJob: number;
  /** Of that: this Node process alone (worker, BullMQ, ioredis, the engine's own code). */
  nodeCpuMsPerJob: number;
  /** redis-server's CPU per job. */
  redisCpuMsPerJob: number;
}

/**
 * Submits `jobs` jobs of `true` first, then starts a warm worker with the given knobs in this
 * process and lets it drain the queue; every job must end `succeeded`.
 */
async function queueRun(ctx: BenchContext, redis: BenchRedis, knobs: ServiceKnobs, jobs: number): Promise<QueueResult> {
  const cfg = benchServiceConfig(ctx, redis, knobs);
  const sub = new BenchSubmitter(cfg, redis.url);
  try {
    const ids: string[] = [];
    for (let i = 0; i < jobs; i++) ids.push(await sub.submit({ command: ['true'] }));
    const worker = await startBenchWorker(ctx, cfg, knobs);
    const cpu0 = await cpuBusyMs();
    const own0 = await ownCpuMs();
    const node0 = await processCpuMs('self');
    const redis0 = await processCpuMs(redis.pid);
    const t0 = now();
    await sub.waitDone(jobs, Math.max(120_000, jobs * 1000));
    const t1 = now();
    const cpu1 = await cpuBusyMs();
    const own1 = await ownCpuMs();
    const node1 = await processCpuMs('self');
    const redis1 = await processCpuMs(redis.pid);
    await worker.close();
    const left = await ctx.engine.list();
    if (left.length) throw new Error(`worker.close() left ${left.length} VPS dirs behind`);

    const missing = ids.filter((id) => !sub.done.has(id));
    const statuses = new Map<string, number>();
    for (const d of sub.done.values()) statuses.set(d.status, (statuses.get(d.status) ?? 0) + 1);
    let failures = missing.length;
    for (const [s, n] of statuses) if (s !== 'succeeded') failures += n;
    if (failures) {
      const sample = [...sub.done.entries()].filter(([, d]) => d.status !== 'succeeded').slice(0, 3);
      for (const [id] of sample) note(`  failed job ${id}: ${JSON.stringify((await sub.jobs.get(id))?.job.error)}`);
    }
    const times = [...sub.done.values()].map((d) => d.at).sort((a, b) => a - b);
    const lo = Math.floor(times.length * 0.1);
    const hi = Math.max(lo + 1, Math.floor(times.length * 0.9) - 1);
    const steady = (hi - lo) / ((times[hi]! - times[lo]!) / 1000);
    return {
      steadyPerSec: steady,
      overallPerSec: sub.done.size / ((t1 - t0) / 1000),
      failures,
      cpuMsPerJob: (cpu1 - cpu0) / Math.max(1, sub.done.size),
      ownCpuMsPerJob: (own1 - own0) / Math.max(1, sub.done.size),
      nodeCpuMsPerJob: (node1.self - node0.self) / Math.max(1, sub.done.size),
      redisCpuMsPerJob: (redis1.self - redis0.self) / Math.max(1, sub.done.size),
    };
  } finally {
    await sub.close();
  }
}

export const throughput: Benchmark = {
  name: NAME,
  description: 'sustained jobs/s of `true` (fresh VPS each) through Redis + BullMQ + a warm worker, vs bare `runc run` loops and engine-only loops',
  options: {
    jobs: { default: 300, min: 10, help: 'jobs per worker configuration' },
    config: { default: 0, min: 0, help: `worker configuration to run, 1..${CONFIGS.length} (0: all)` },
    configs: { default: 0, min: 0, help: 'several configurations as a bit mask (bit K-1 = configuration K), e.g. 3 = 1 and 2' },
    seconds: { default: 15, min: 1, help: 'duration of each baseline loop measurement' },
    baselines: { default: 1, min: 0, help: '1: measure the runc and engine-only baselines, 0: skip them' },
    rounds: { default: 3, min: 1, help: 'rounds over the configurations (order rotated; medians reported)' },
    profile: { default: 30, min: 0, help: 'iterations of the per-step profile of one VPS (0 skips it)' },
  },
  async run(ctx, opts) {
    const seconds = opts.seconds!;
    let bare: Rate | undefined;
    const engineRates: Record<number, Rate> = {};
    if (opts.baselines) {
      // One bundle (hence one cgroup path) per loop: the containers of one loop run one at a time.
      const bundles = [await ctx.bareBundle('tp0', ['true']), await ctx.bareBundle('tp1', ['true'])];
      for (let i = 0; i < 4; i++) {
        await bareOnce(ctx, bundles[0]!);
        await engineOnce(ctx);
      }
      bare = await loopsFor(2, seconds, (k) => bareOnce(ctx, bundles[k]!));
      note(`bare runc run, 2 loops: ${bare.perSec.toFixed(1)} containers/s (${bare.items} in ${seconds} s), ${bare.cpuMsPer.toFixed(0)} ms CPU each machine-wide, ${bare.ownCpuMsPer.toFixed(0)} ms own + children`);
      report(NAME, { metric: 'bare_runc_run_2_loops', value: bare.perSec, unit: 'containers/s' });
      report(NAME, { metric: 'bare_runc_run_cpu_per_container', value: bare.cpuMsPer, unit: 'ms' });
      report(NAME, { metric: 'bare_runc_run_own_cpu_per_container', value: bare.ownCpuMsPer, unit: 'ms' });
      for (const loops of [2, 3, 4]) {
        checkInterrupted();
        const r = await loopsFor(loops, seconds, () => engineOnce(ctx));
        engineRates[loops] = r;
        note(`engine create→run→destroy, ${loops} loops: ${r.perSec.toFixed(1)} VPS/s (${r.items}), ${r.cpuMsPer.toFixed(0)} ms CPU each machine-wide, ${r.ownCpuMsPer.toFixed(0)} ms own + children, of which Node ${r.nodeCpuMsPer.toFixed(1)} ms`);
        report(NAME, { metric: `engine_only_${loops}_loops`, value: r.perSec, unit: 'VPS/s', baseline: bare.perSec });
        report(NAME, { metric: `engine_only_${loops}_loops_cpu_per_vps`, value: r.cpuMsPer, unit: 'ms', baseline: bare.cpuMsPer });
        report(NAME, { metric: `engine_only_${loops}_loops_own_cpu_per_vps`, value: r.ownCpuMsPer, unit: 'ms', baseline: bare.ownCpuMsPer });
      }
    }

    if (opts.profile) {
      const prof = await profile(ctx, opts.profile);
      note(`profile of one VPS (mean of ${opts.profile}, sequential; CPU = this process + reaped children):`);
      for (const [k, v] of Object.entries(prof)) {
        note(`  ${k.padEnd(42)} ${v.wall.toFixed(1).padStart(6)} ms wall${Number.isNaN(v.cpu) ? '' : `, ${v.cpu.toFixed(1)} ms CPU`}${v.cgroupCpu !== undefined ? ` (+ ${v.cgroupCpu.toFixed(1)} ms CPU in the VPS's cgroup: runc init + agent)` : ''}`);
        const metric = `profile_${k.trim().replace(/[^A-Za-z0-9]+/g, '_').replace(/^_|_$/g, '').toLowerCase()}`;
        report(NAME, { metric: `${metric}_wall`, value: v.wall, unit: 'ms' });
        if (!Number.isNaN(v.cpu)) report(NAME, { metric: `${metric}_cpu`, value: v.cpu, unit: 'ms' });
      }
    }

    const redis = await startBenchRedis(ctx);
    const jobs = opts.jobs!;
    const rounds = opts.rounds!;
    const chosen = opts.config ? [CONFIGS[opts.config - 1]] : opts.configs ? CONFIGS.filter((_, k) => opts.configs! & (1 << k)) : CONFIGS;
    if (chosen.some((k) => !k)) throw new Error(`--config must be 0..${CONFIGS.length}`);
    const configs = chosen as ServiceKnobs[];
    const results = new Map<ServiceKnobs, QueueResult[]>(configs.map((k) => [k, []]));
    for (let r = 0; r < rounds; r++) {
      // Rotate the order per round, so that drifting load from neighbours hits every configuration.
      for (let j = 0; j < configs.length; j++) {
        checkInterrupted();
        const knobs = configs[(j + r) % configs.length]!;
        const label = knobsLabel(knobs);
        const q = await queueRun(ctx, redis, knobs, jobs);
        results.get(knobs)!.push(q);
        note(
          `round ${r + 1}/${rounds} ${label}: steady ${q.steadyPerSec.toFixed(1)} jobs/s, overall ${q.overallPerSec.toFixed(1)} jobs/s, ` +
            `${q.failures} failures, ${q.cpuMsPerJob.toFixed(0)} ms CPU per job machine-wide (${q.ownCpuMsPerJob.toFixed(0)} ms own + children, of which Node ${q.nodeCpuMsPerJob.toFixed(1)} ms; redis-server ${q.redisCpuMsPerJob.toFixed(1)} ms)`,
        );
      }
    }
    const bestEngine = Math.max(0, ...Object.values(engineRates).map((x) => x.perSec));
    let best: { label: string; steady: number } | undefined;
    for (const knobs of configs) {
      const label = knobsLabel(knobs);
      const rs = results.get(knobs)!;
      const steady = median(rs.map((x) => x.steadyPerSec));
      const failures = rs.reduce((a, x) => a + x.failures, 0);
      report(NAME, { metric: `queue_${label}_steady`, value: steady, unit: 'jobs/s', ...(bestEngine ? { baseline: bestEngine } : {}) });
      report(NAME, { metric: `queue_${label}_steady_min`, value: Math.min(...rs.map((x) => x.steadyPerSec)), unit: 'jobs/s' });
      report(NAME, { metric: `queue_${label}_failures`, value: failures, unit: 'jobs' });
      report(NAME, { metric: `queue_${label}_cpu_per_job`, value: median(rs.map((x) => x.cpuMsPerJob)), unit: 'ms' });
      report(NAME, { metric: `queue_${label}_own_cpu_per_job`, value: median(rs.map((x) => x.ownCpuMsPerJob)), unit: 'ms' });
      report(NAME, { metric: `queue_${label}_node_cpu_per_job`, value: median(rs.map((x) => x.nodeCpuMsPerJob)), unit: 'ms' });
      report(NAME, { metric: `queue_${label}_redis_cpu_per_job`, value: median(rs.map((x) => x.redisCpuMsPerJob)), unit: 'ms' });
      note(`${label}: median steady ${steady.toFixed(1)} jobs/s over ${rs.length} rounds (${rs.map((x) => x.steadyPerSec.toFixed(1)).join(', ')}), ${failures} failures`);
      if (failures === 0 && (!best || steady > best.steady)) best = { label, steady };
    }
    if (best) {
      report(NAME, { metric: 'queue_best_steady', value: best.steady, unit: 'jobs/s', ...(bestEngine ? { baseline: bestEngine } : {}) });
      note(`best: ${best.label} at ${best.steady.toFixed(1)} jobs/s (target ≥ 20 jobs/s, zero failures)`);
    }
    // What one helper process costs this process's event loop: child_process.spawn() returns only
    // after fork() and the child's exec (libuv 1.46 forks on Linux: page tables ∝ RSS).
    const spawnMs: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = now();
      const child = spawn('true', [], { stdio: 'ignore' });
      spawnMs.push(now() - t0);
      await new Promise((r) => child.once('exit', r));
    }
    const rssMiB = process.memoryUsage().rss / 1024 / 1024;
    report(NAME, { metric: 'spawn_blocking_p50', value: median(spawnMs), unit: 'ms' });
    report(NAME, { metric: 'bench_process_rss', value: rssMiB, unit: 'MiB' });
    note(`spawn() blocks this process (RSS ${rssMiB.toFixed(0)} MiB) for ${median(spawnMs).toFixed(2)} ms per helper process (p50 of 50)`);
    if (bare) note(`baselines: bare runc ${bare.perSec.toFixed(1)}/s; engine ${Object.entries(engineRates).map(([l, r]) => `${l} loops ${r.perSec.toFixed(1)}/s`).join(', ')}; median CPU/VPS ${median(Object.values(engineRates).map((r) => r.cpuMsPer)).toFixed(0)} ms`);
  },
};
