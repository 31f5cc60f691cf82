import { startApi } from '../api/server.js';
import { apiDeps } from '../cli/services.js';
import { newId } from '../core/ids.js';
import type { Job } from '../core/job.js';
import type { WorkerHandle } from '../worker/main.js';
import { checkInterrupted, median, note, now, report, sleep, stats, type Benchmark } from './lib.js';
import { benchServiceConfig, serviceLogger, startBenchRedis, startBenchWorker, type ServiceKnobs } from './services.js';

const NAME = 'e2e-latency';

/** `runbox up`'s defaults (README "Configuration"). */
const KNOBS: ServiceKnobs = { workerConcurrency: 8, poolMinIdle: 2, poolMax: 16 };

/** Wall-clock split of one request, from the job record's own timestamps (ms resolution). */
interface Split {
  /** request sent → job record created (HTTP, auth, validation, Redis). */
  create: number;
  /** created → the agent's `started` (enqueue, worker pickup, acquire, limits, start). */
  toStarted: number;
  /** started → finished (`true` runs; exit frame; cgroup usage read). */
  run: number;
  /** finished → response received (result recorded, status event, HTTP response). */
  respond: number;
}

/** Waits until every pool is full again and no VPS is being destroyed (the quiet state). */
async function settle(worker: WorkerHandle): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const full = worker.pools.every((p) => {
      const s = p.state();
      return s.idle >= s.minIdle && s.creating === 0 && s.inUse === 0;
    });
    const vpsDirs = (await worker.engine.list()).length;
    const idle = worker.pools.reduce((a, p) => a + p.state().idle, 0);
    if (full && vpsDirs === idle) return;
    await sleep(5);
  }
  throw new Error('the worker did not settle within 10 s');
}

export const e2eLatency: Benchmark = {
  name: NAME,
  description: 'HTTP POST /v1/jobs?wait=30 of `true` → response (p50/p99) through API + Redis + warm worker, vs GET /healthz and an in-process cold engine run',
  options: {
    runs: { default: 200, min: 1, help: 'measured sequential requests (≥ 100 for recorded numbers)' },
    warmup: { default: 5, min: 0, help: 'unmeasured requests first' },
  },
  async run(ctx, opts) {
    const runs = opts.runs!;
    if (runs < 100) note(`--runs ${runs} < 100: fine for a try, not for recorded numbers`);
    const redis = await startBenchRedis(ctx);
    const cfg = benchServiceConfig(ctx, redis, KNOBS);
    const token = cfg.apiTokens!.split('=')[1]!;
    const worker = await startBenchWorker(ctx, cfg, KNOBS);
    const stop = new AbortController();
    const { deps, close } = await apiDeps(cfg, redis.url, serviceLogger(), stop.signal);
    ctx.defer('API deps', close);
    const api = await startApi(deps, { host: '127.0.0.1', port: 0 });
    ctx.defer('API', async () => {
      stop.abort();
      await api.close();
    });
    note(`API at ${api.url}, worker ${worker.hostId} with a pool of ${KNOBS.poolMinIdle}`);

    const submit = async (): Promise<{ ms: number; split: Split }> => {
      const wall0 = Date.now();
      const t0 = now();
      const res = await fetch(`${api.url}/v1/jobs?wait=30`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ command: ['true'] }),
      });
      const job = (await res.json()) as Job;
      const t1 = now();
      const wall1 = Date.now();
      if (res.status !== 201 || job.status !== 'succeeded' || job.exitCode !== 0) {
        throw new Error(`POST /v1/jobs?wait=30 → ${res.status}, job ${job.id} ${job.status} ${JSON.stringify(job.error)}`);
      }
      const created = Date.parse(job.createdAt);
      const started = Date.parse(job.startedAt!);
      const finished = Date.parse(job.finishedAt!);
      return { ms: t1 - t0, split: { create: created - wall0, toStarted: started - created, run: finished - started, respond: wall1 - finished } };
    };
    const healthz = async (): Promise<number> => {
      const t0 = now();
      const res = await fetch(`${api.url}/healthz`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`GET /healthz → ${res.status}`);
      return now() - t0;
    };
    /** The engine alone, cold: create → run `true` (to its result; the destroy is not waited for by a worker either). */
    const coldEngine = async (): Promise<number> => {
      const id = newId();
      const t0 = now();
      const vps = await ctx.engine.create(id, { ...(await ctx.spec(id)), diskMb: 256 });
      try {
        const r = await vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 * 1024 });
        if (r.exitCode !== 0) throw new Error(`VPS ${id}: true exited ${r.exitCode}`);
        return now() - t0;
      } finally {
        await ctx.engine.destroy(id);
      }
    };

    // Sequential requests, each with the pool full and nothing being destroyed, alternating with
    // the two baselines (so drifting noise hits all three alike).
    const e2e: number[] = [];
    const splits: Split[] = [];
    const health: number[] = [];
    const cold: number[] = [];
    for (let i = -opts.warmup!; i < runs; i++) {
      checkInterrupted();
      await settle(worker);
      const h = await healthz();
      const r = await submit();
      await settle(worker);
      const c = await coldEngine();
      if (i < 0) continue;
      e2e.push(r.ms);
      splits.push(r.split);
      health.push(h);
      cold.push(c);
      if ((i + 1) % 50 === 0 || i + 1 === runs) note(`${i + 1}/${runs}: e2e p50 ${median(e2e).toFixed(1)} ms, healthz p50 ${median(health).toFixed(2)} ms, cold engine p50 ${median(cold).toFixed(1)} ms`);
    }
    const e = stats(e2e);
    const h = stats(health);
    const c = stats(cold);
    for (const k of ['p50', 'p90', 'p99', 'mean'] as const) report(NAME, { metric: `submit_wait_${k}`, value: e[k], unit: 'ms', baseline: c[k] });
    report(NAME, { metric: 'healthz_p50', value: h.p50, unit: 'ms' });
    report(NAME, { metric: 'healthz_p99', value: h.p99, unit: 'ms' });
    report(NAME, { metric: 'cold_engine_create_run_p50', value: c.p50, unit: 'ms' });
    for (const k of ['create', 'toStarted', 'run', 'respond'] as const) {
      report(NAME, { metric: `split_${k}_p50`, value: median(splits.map((s) => s[k])), unit: 'ms' });
    }

    // Back to back: no waiting for the pool to refill; with a pool of 2 and creates slower than
    // requests, later requests may find it empty.
    const b2b: number[] = [];
    for (let i = 0; i < runs; i++) {
      checkInterrupted();
      b2b.push((await submit()).ms);
    }
    const b = stats(b2b);
    report(NAME, { metric: 'back_to_back_submit_wait_p50', value: b.p50, unit: 'ms', baseline: c.p50 });
    report(NAME, { metric: 'back_to_back_submit_wait_p99', value: b.p99, unit: 'ms', baseline: c.p99 });
    note(`e2e p50 ${e.p50.toFixed(1)} ms p99 ${e.p99.toFixed(1)} ms (target p50 ≤ 30 ms); healthz p50 ${h.p50.toFixed(2)} ms; cold engine p50 ${c.p50.toFixed(1)} ms; back-to-back p50 ${b.p50.toFixed(1)} p99 ${b.p99.toFixed(1)} ms`);
    await api.close();
    await worker.close();
  },
};
