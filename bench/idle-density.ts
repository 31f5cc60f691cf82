import fs from 'node:fs/promises';
import path from 'node:path';
import { newId } from '../core/ids.js';
import { VpsCgroup } from '../runtime/cgroups/cgroup.js';
import { parseKeyValues } from '../runtime/cgroups/stats.js';
import {
  checkInterrupted,
  median,
  meminfo,
  meminfoDelta,
  memAvailableMedian,
  MiB,
  note,
  scanProcesses,
  now,
  report,
  run,
  sleep,
  type BenchContext,
  type Benchmark,
} from './lib.js';
import { headroom, hostLimits, hostUsage, type Headroom } from './host-limits.js';

const NAME = 'idle-density';
const SETTLE_MS = 2000;

interface Density {
  /** MemAvailable lost per instance, bytes. */
  hostBytes: number;
  /** The same, minus what other processes' anonymous memory grew by meanwhile (neighbours). */
  hostBytesCorrected: number;
  /** Sum of the instances' cgroup memory usage / N, bytes. */
  cgroupBytes: number;
  /** Host processes added per instance. */
  procs: number;
  /** Seconds to start all N. */
  startSec: number;
  /** Seconds to stop all N. */
  stopSec: number;
  /** Host limits, the first one first (measured for the VPSs, not the bare containers). */
  headroom?: Headroom[];
}

/** memory.stat of one cgroup (v1 or v2), for the breakdown notes. */
async function memoryStat(ctx: BenchContext, relPath: string): Promise<Record<string, number>> {
  const l = ctx.engine.cgroups;
  const file = l.kind === 'v1' ? path.join(l.controllers.memory, relPath, 'memory.stat') : path.join(l.root, relPath, 'memory.stat');
  const stat = parseKeyValues(await fs.readFile(file, 'utf8').catch(() => ''));
  if (l.kind === 'v1') {
    const kmem = await fs.readFile(path.join(l.controllers.memory, relPath, 'memory.kmem.usage_in_bytes'), 'utf8').catch(() => '');
    if (kmem) stat.kmem_usage = Number(kmem);
  }
  return stat;
}

const mib = (b: number | undefined) => `${((b ?? 0) / MiB).toFixed(2)}`;

function describeStat(s: Record<string, number>, v1: boolean): string {
  return v1
    ? `rss ${mib(s.rss)} MiB, cache ${mib(s.cache)} MiB (mapped ${mib(s.mapped_file)}, shmem ${mib(s.shmem)}), kmem ${mib(s.kmem_usage)} MiB`
    : `anon ${mib(s.anon)} MiB, file ${mib(s.file)} MiB (shmem ${mib(s.shmem)}), kernel ${mib(s.kernel)} MiB, slab ${mib(s.slab)} MiB`;
}

/** One kind of instance to hold N of. */
interface Kind {
  label: string;
  /** Unmeasured per-instance preparation (bare bundles). */
  prepare(): Promise<string>;
  /** Starts one instance (measured); returns its id. */
  start(id: string): Promise<void>;
  /** cgroup path (relative to each hierarchy root) of an instance. */
  cgroupPath(id: string): string;
  stop(id: string): Promise<void>;
}

function oursKind(ctx: BenchContext): Kind {
  return {
    label: 'ours',
    prepare: async () => newId(),
    start: async (id) => {
      await ctx.engine.create(id, await ctx.spec(id));
    },
    cgroupPath: (id) => ctx.engine.layout.vps(id).cgroupsPath,
    stop: (id) => ctx.engine.destroy(id),
  };
}

function bareKind(ctx: BenchContext): Kind {
  return {
    label: 'bare',
    prepare: async () => {
      const id = `bare-${newId()}`;
      await ctx.bareBundle(id, ['sleep', '1000']);
      return id;
    },
    start: async (id) => {
      // Detached: runc hands its stdio to the container, so give it none to hold.
      const r = await run(ctx.bareArgs('run', '--detach', '--bundle', path.join(ctx.bareBundles, id), id), { stdio: 'ignore' });
      if (r.code !== 0) throw new Error(`runc run -d ${id} failed (${r.code ?? r.signal})`);
    },
    cgroupPath: (id) => `${ctx.bareCgroupParent}/${id}`,
    stop: async (id) => {
      await ctx.bareRemove(id);
      await fs.rm(path.join(ctx.bareBundles, id), { recursive: true, force: true });
    },
  };
}

/** Holds N instances of a kind at once and measures what they cost the host; stops them all. */
async function measure(ctx: BenchContext, kind: Kind, count: number): Promise<Density> {
  const prepared: string[] = [];
  const started: string[] = [];
  const parents = [ctx.engine.layout.cgroupParent, ctx.bareCgroupParent];
  let d: Omit<Density, 'stopSec'> | undefined;
  let stopSec = NaN;
  try {
    for (let i = 0; i < count; i++) prepared.push(await kind.prepare());
    const usage0 = await hostUsage();
    const scan0 = await scanProcesses(parents);
    const info0 = await meminfo();
    const mem0 = await memAvailableMedian();
    const t0 = now();
    for (const id of prepared) {
      checkInterrupted();
      started.push(id);
      await kind.start(id);
    }
    const startSec = (now() - t0) / 1000;
    await sleep(SETTLE_MS);
    const mem1 = await memAvailableMedian();
    const info1 = await meminfo();
    const scan1 = await scanProcesses(parents);
    let cg = 0;
    for (const id of started) cg += (await new VpsCgroup(ctx.engine.cgroups, kind.cgroupPath(id)).usage()).memoryCurrentBytes;
    const neighbours = scan1.othersAnonBytes - scan0.othersAnonBytes;
    d = {
      hostBytes: (mem0 - mem1) / count,
      hostBytesCorrected: (mem0 - mem1 - neighbours) / count,
      cgroupBytes: cg / count,
      procs: (scan1.own - scan0.own) / count,
      startSec,
      headroom: headroom(usage0, await hostUsage(), count, await hostLimits()),
    };
    note(
      `  ${kind.label}: started ${count} in ${startSec.toFixed(1)} s; per instance: ${mib(d.hostBytes)} MiB host ` +
        `(${mib(d.hostBytesCorrected)} without neighbours' anon change of ${mib(neighbours)} MiB in all), ` +
        `${mib(d.cgroupBytes)} MiB cgroup, ${d.procs.toFixed(2)} processes`,
    );
    note(`    meminfo change per instance (MiB): ${meminfoDelta(info0, info1, count)}`);
    note(`    one instance's memory.stat: ${describeStat(await memoryStat(ctx, kind.cgroupPath(started[0]!)), ctx.engine.cgroups.kind === 'v1')}`);
    note(`    host limits, the first one first (per instance; VPSs more until the limit):`);
    for (const h of d.headroom!) {
      const per = h.resource === 'memAvailable' ? `${mib(h.perVps)} MiB` : h.perVps.toFixed(2);
      note(`      ${h.resource.padEnd(13)} ${per.padStart(10)} each, ${String(h.used).padStart(12)} used of ${String(h.limit).padStart(12)}: ${h.moreVps === Infinity ? 'no limit reached' : `${h.moreVps} more`}`);
    }
  } finally {
    const t = now();
    for (const id of started) await kind.stop(id);
    await fs.rm(ctx.bareBundles, { recursive: true, force: true });
    stopSec = (now() - t) / 1000;
    if (started.length) note(`    stopped ${started.length} in ${stopSec.toFixed(1)} s`);
  }
  return { ...d, stopSec };
}

export const idleDensity: Benchmark = {
  name: NAME,
  description: 'memory and host processes per idle VPS (N ready, no job) vs N bare `runc run -d` containers running sleep',
  options: {
    count: { default: 50, min: 1, help: 'instances of each kind held at once' },
    rounds: { default: 5, min: 1, help: 'rounds of (ours, bare), order alternating; the median is reported' },
  },
  async run(ctx, opts) {
    const count = opts.count!;
    const rounds = opts.rounds!;
    const kinds = { ours: oursKind(ctx), bare: bareKind(ctx) };
    // Warm-up (unmeasured): the golden disk image, runc's and the agent's pages in the page cache.
    for (const k of [kinds.ours, kinds.bare]) {
      const id = await k.prepare();
      try {
        await k.start(id);
      } finally {
        await k.stop(id);
      }
    }
    await sleep(500);

    const results = { ours: [] as Density[], bare: [] as Density[] };
    for (let r = 0; r < rounds; r++) {
      note(`round ${r + 1}/${rounds}: ${count} of each`);
      for (const which of r % 2 === 0 ? (['ours', 'bare'] as const) : (['bare', 'ours'] as const)) {
        checkInterrupted();
        results[which].push(await measure(ctx, kinds[which], count));
        await sleep(1000);
      }
    }

    const med = (which: 'ours' | 'bare', f: (d: Density) => number) => median(results[which].map(f));
    const metric = (name: string, unit: string, f: (d: Density) => number) =>
      report(NAME, { metric: name, value: med('ours', f), unit, baseline: med('bare', f) });
    metric('host_mem_per_vps', 'MiB', (d) => d.hostBytes / MiB);
    metric('host_mem_per_vps_excl_neighbours', 'MiB', (d) => d.hostBytesCorrected / MiB);
    metric('cgroup_mem_per_vps', 'MiB', (d) => d.cgroupBytes / MiB);
    metric('host_procs_per_vps', 'processes', (d) => d.procs);
    metric('start_all', 's', (d) => d.startSec);
    metric('stop_all', 's', (d) => d.stopSec);
    const first = results.ours.at(-1)?.headroom?.[0];
    if (first) {
      report(NAME, { metric: `first_limit_${first.resource}_more_vps`, value: first.moreVps, unit: 'VPSs' });
      note(`first host limit for VPSs: ${first.resource} (${first.perVps.toFixed(2)} per VPS, ${first.moreVps} more VPSs until ${first.limit})`);
    }
    note(
      `target: host memory ≤ 4 MB (3.81 MiB) per VPS; got ${med('ours', (d) => d.hostBytes / MiB).toFixed(2)} MiB ` +
        `(${med('ours', (d) => d.hostBytesCorrected / MiB).toFixed(2)} without neighbours), median of ${rounds} rounds`,
    );
  },
};
