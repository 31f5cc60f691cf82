import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { errorMessage } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { checkpoint, restore, snapshot } from '../runtime/checkpoint/checkpoint.js';
import { execOk } from '../runtime/exec.js';
import { gc } from '../runtime/gc.js';
import { checkpointArgs } from '../runtime/oci/runc.js';
import { RuncEngine } from '../runtime/runc-engine.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import type { RunResult, VpsSpec } from '../runtime/vps.js';
import {
  AGENT,
  checkInterrupted,
  MiB,
  note,
  report,
  run,
  RUNC,
  RUNTIME,
  USERNS,
  runOk,
  sleep,
  stats,
  TEMPLATES_DIR,
  type BenchContext,
  type Benchmark,
} from './lib.js';
import { serviceLogger } from './services.js';

const NAME = 'checkpoint';

/** The CRIU wrapper setup installs (it sets CRIU_FAULT=130: this VM does not deliver hardware breakpoints). */
export const CRIU = process.env.RUNBOX_CRIU ?? '/opt/runbox/criu/bin/criu';

// ---------------------------------------------------------------------------------------------
// List options: the harness's options are single integers; these two benchmarks also take
// `--sizes 64,256` (see bench/main.ts).

export interface ListOptionDef {
  default: number[];
  /** Smallest accepted value of each element. */
  min: number;
  help: string;
}

/** A comma-separated list of names out of a fixed set (e.g. migration modes). */
export interface NameListOptionDef {
  default: string[];
  choices: string[];
  help: string;
}

/**
 * A benchmark that also takes comma-separated lists: of integers (`listOptions`, handed to run() as
 * `lists`) and of names (`nameOptions`, as `names`).
 */
export interface ListBenchmark extends Benchmark {
  listOptions: Record<string, ListOptionDef>;
  nameOptions?: Record<string, NameListOptionDef>;
  run(ctx: BenchContext, opts: Record<string, number>, lists?: Record<string, number[]>, names?: Record<string, string[]>): Promise<void>;
}

export const SIZES_OPTION: ListOptionDef = { default: [64, 256], min: 1, help: 'MB of changing memory the job holds, comma-separated' };

// ---------------------------------------------------------------------------------------------
// The workload: a static C program holding N MB of pseudo-random data that it keeps changing.

/**
 * mallocs N MB, fills it with xorshift output, then forever: rewrite 8 random pages, sleep 10 ms.
 * Every 10th tick it prints `c LINE TICKS MS` (MS = CLOCK_REALTIME in ms, the host's clock too:
 * runc VPSs have no time namespace). When a sleep overran by more than 20 ms (the job was frozen,
 * or starved), it prints `g MS_AFTER PAUSED_MS LINE TICKS` at once, before anything else: the
 * first moment it runs again and how long it did not. That line counts as a counter line.
 */
const MEMJOB_C = String.raw`
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static uint64_t s = 0x9E3779B97F4A7C15ULL;
static inline uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (long long)t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
  size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
  size_t words = (mb << 20) / 8, pages = (mb << 20) / 4096;
  uint64_t *buf = malloc(mb << 20);
  if (!buf || pages == 0) { perror("malloc"); return 1; }
  for (size_t i = 0; i < words; i++) buf[i] = rnd();
  printf("filled %zu MB\n", mb);
  fflush(stdout);
  unsigned long long ticks = 0, line = 0;
  for (;;) {
    for (int k = 0; k < 8; k++) {
      uint64_t *pg = buf + (rnd() % pages) * 512;
      for (int w = 0; w < 512; w++) pg[w] = rnd();
    }
    ticks++;
    long long before = now_us();
    usleep(10000);
    long long after = now_us();
    long long over = after - before - 10000;
    if (over > 20000) {
      printf("g %lld %lld %llu %llu\n", after / 1000, over / 1000, ++line, ticks);
      fflush(stdout);
    } else if (ticks % 10 == 0) {
      printf("c %llu %llu %lld\n", ++line, ticks, after / 1000);
      fflush(stdout);
    }
  }
}
`;

/** Compiles the workload (gcc -static -O2) in `dir`; returns the binary. */
export async function compileMemJob(dir: string): Promise<Buffer> {
  await fs.mkdir(dir, { recursive: true });
  const src = path.join(dir, 'memjob.c');
  const bin = path.join(dir, 'memjob');
  await fs.writeFile(src, MEMJOB_C);
  await runOk(['gcc', '-static', '-O2', '-o', bin, src], { timeoutMs: 120_000 });
  return fs.readFile(bin);
}

export const MEMJOB_PATH = '/usr/local/bin/memjob';

interface Tick {
  /** Host clock (Date.now()) when the line arrived. */
  at: number;
  /** The job's clock (ms) for the tick. */
  ms: number;
  ticks: number;
}

interface Gap {
  /** Host clock when the line arrived. */
  at: number;
  /** The job's clock: first moment it ran again. */
  ms: number;
  /** How long its sleep overran: the time it did not run. */
  pausedMs: number;
}

/** Parses the job's output (as it arrives through onOutput) into ticks and gaps. */
export class JobOutput {
  readonly ticks: Tick[] = [];
  readonly gaps: Gap[] = [];
  /** Counter lines that did not follow the previous one by exactly 1 (a lost, repeated or restarted job). */
  readonly sequenceErrors: string[] = [];
  private lastLine = 0;
  private partial = '';
  private waiters: Array<() => void> = [];

  push = (_stream: 'stdout' | 'stderr', data: Buffer): void => {
    const at = Date.now();
    const text = this.partial + data.toString('utf8');
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    for (const l of lines) {
      const f = l.trim().split(' ');
      let line: number | undefined;
      if (f[0] === 'c' && f.length === 4) {
        line = Number(f[1]);
        this.ticks.push({ at, ms: Number(f[3]), ticks: Number(f[2]) });
      } else if (f[0] === 'g' && f.length === 5) {
        line = Number(f[3]);
        this.gaps.push({ at, ms: Number(f[1]), pausedMs: Number(f[2]) });
        this.ticks.push({ at, ms: Number(f[1]), ticks: Number(f[4]) });
      }
      if (line !== undefined) {
        if (line !== this.lastLine + 1) this.sequenceErrors.push(`line ${line} after ${this.lastLine}`);
        this.lastLine = line;
      }
    }
    for (const w of this.waiters.splice(0)) w();
  };

  /** Waits until `pred` holds, re-checked on every chunk of output. */
  async until<T>(pred: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = pred();
      if (v !== undefined) return v;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`memjob: no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The first counter line that arrived at or after `t` (host clock). */
  firstTickAfter(t: number): Tick | undefined {
    return this.ticks.find((x) => x.at >= t);
  }

  /** The longest pause the job reported that ended after `t` (host clock, its resume moment) and by `until`. */
  longestGap(t: number, until = Infinity): Gap | undefined {
    let best: Gap | undefined;
    for (const g of this.gaps) if (g.ms >= t && g.ms <= until && (!best || g.pausedMs > best.pausedMs)) best = g;
    return best;
  }

  /** Ticks per second the job made between t0 and t1 (its own clock), from the first and last counter line inside. */
  rate(t0: number, t1: number): number {
    const inside = this.ticks.filter((x) => x.ms >= t0 && x.ms <= t1);
    if (inside.length < 2) return NaN;
    const a = inside[0]!;
    const b = inside[inside.length - 1]!;
    return ((b.ticks - a.ticks) / (b.ms - a.ms)) * 1000;
  }
}

// ---------------------------------------------------------------------------------------------
// CRIU's own statistics (stats-dump, which it writes into the *work* dir): a tiny protobuf reader,
// so no `crit` is needed. Layout: u32 magic, u32 magic, then one entry (u32 length + stats_entry
// whose field 1 is dump_stats_entry: freezing_time 1, frozen_time 2, memdump_time 3,
// memwrite_time 4 (µs), pages_written 7).

export interface CriuDumpStats {
  freezingUs?: number;
  /** How long CRIU kept the tree frozen. */
  frozenUs?: number;
  /** Collecting the pages, and writing them to the images. */
  memdumpUs?: number;
  memwriteUs?: number;
  pagesWritten?: number;
}

function varint(b: Buffer, pos: number): [number, number] {
  let v = 0;
  let mul = 1;
  for (;;) {
    const byte = b[pos++];
    if (byte === undefined) throw new Error('truncated varint');
    v += (byte & 0x7f) * mul;
    if (byte < 0x80) return [v, pos];
    mul *= 128;
  }
}

/** Decodes a message into field number → varint value (submessages as Buffers). */
function fields(b: Buffer): Map<number, number | Buffer> {
  const out = new Map<number, number | Buffer>();
  let pos = 0;
  while (pos < b.length) {
    let key: number;
    [key, pos] = varint(b, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      let v: number;
      [v, pos] = varint(b, pos);
      out.set(field, v);
    } else if (wire === 2) {
      let len: number;
      [len, pos] = varint(b, pos);
      out.set(field, b.subarray(pos, pos + len));
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unexpected wire type ${wire}`);
  }
  return out;
}

export async function readCriuStats(workDir: string): Promise<CriuDumpStats | undefined> {
  const buf = await fs.readFile(path.join(workDir, 'stats-dump')).catch(() => undefined);
  if (!buf || buf.length < 12) return undefined;
  try {
    const len = buf.readUInt32LE(8);
    const dump = fields(buf.subarray(12, 12 + len)).get(1);
    if (!Buffer.isBuffer(dump)) return undefined;
    const f = fields(dump);
    const n = (k: number) => (typeof f.get(k) === 'number' ? (f.get(k) as number) : undefined);
    return { freezingUs: n(1), frozenUs: n(2), memdumpUs: n(3), memwriteUs: n(4), pagesWritten: n(7) };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Engines with CRIU, each with its own state dir under the context's (so the context's mount
// check covers them), and their own cleanup + leak checks.

export interface CriuEngine {
  engine: RuncEngine;
  /** Removes every VPS and everything of the instance; returns the leaks found (empty when clean). */
  cleanup(): Promise<string[]>;
}

export async function criuEngine(ctx: BenchContext, sub: string, log: Logger = serviceLogger()): Promise<CriuEngine> {
  const stateDir = path.join(ctx.stateDir, sub);
  await fs.mkdir(stateDir, { recursive: true });
  const engine = new RuncEngine({
    stateDir,
    templatesDir: TEMPLATES_DIR,
    runcPath: RUNC,
    runtime: RUNTIME,
    userns: USERNS,
    criuPath: CRIU,
    agentPath: AGENT,
    netCidr: ctx.netCidr,
    log,
  });
  const cgroupDirs = async (): Promise<string[]> => {
    const roots = (await fs.readdir('/sys/fs/cgroup', { withFileTypes: true }).catch(() => []))
      .filter((e) => e.isDirectory())
      .map((e) => path.join('/sys/fs/cgroup', e.name));
    const out: string[] = [];
    for (const root of [...roots, '/sys/fs/cgroup']) {
      const dir = path.join(root, engine.layout.cgroupParent);
      if (!(await fs.stat(dir).catch(() => undefined))?.isDirectory()) continue;
      for (const k of await fs.readdir(dir, { withFileTypes: true })) if (k.isDirectory()) out.push(path.join(dir, k.name));
      out.push(dir);
    }
    return out;
  };
  const cleanup = async (): Promise<string[]> => {
    const problems: string[] = [];
    const step = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        problems.push(`${sub}: ${what}: ${errorMessage(e)}`);
      }
    };
    await step('destroy', () => engine.destroyAll());
    await step('gc', () => gc(engine, { all: true }));
    // gc(all) leaves the cgroup parent in the hybrid layout's unified hierarchy (see lib.ts).
    await step('cgroups', async () => {
      for (const d of await cgroupDirs()) await fs.rmdir(d).catch(() => undefined);
    });
    await step('runc list', async () => {
      const r = await run([engine.runc.runc, '--root', engine.runc.root, 'list', '--format', 'json']);
      if (r.code !== 0 && !/no such file|does not exist/i.test(r.stderr)) throw new Error(r.stderr.trim());
      const left = (JSON.parse(r.stdout.trim() || 'null') as Array<{ id: string }> | null) ?? [];
      if (left.length) throw new Error(`containers left: ${left.map((c) => c.id).join(', ')}`);
    });
    const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((mp) => mp === stateDir || mp.startsWith(`${stateDir}/`));
    if (mounts.length) problems.push(`${sub}: mounts left: ${mounts.join(', ')}`);
    await step('cgroup dirs', async () => {
      const left = await cgroupDirs();
      if (left.length) throw new Error(`cgroup dirs left: ${left.join(', ')}`);
    });
    if (mounts.length === 0) await step('state dir', () => fs.rm(stateDir, { recursive: true, force: true }));
    return problems;
  };
  return { engine, cleanup };
}

/** A VPS of the benchmarks' usual shape, with room for the job's memory. */
export async function memJobSpec(ctx: BenchContext, id: string, sizeMb: number): Promise<VpsSpec> {
  return { ...(await ctx.spec(id)), memoryMb: sizeMb + 64 };
}

/** Creates a VPS, puts the program in, starts it (not awaited) and waits for its first counter line. */
export async function startMemJob(
  engine: RuncEngine,
  spec: VpsSpec,
  id: string,
  program: Buffer,
  sizeMb: number,
): Promise<{ vps: RuncVps; out: JobOutput; running: Promise<RunResult> }> {
  const vps = await engine.create(id, spec);
  await vps.writeFile(MEMJOB_PATH, program, 0o755);
  const out = new JobOutput();
  const running = vps.run({ argv: [MEMJOB_PATH, String(sizeMb)], timeoutSec: 3600, outputBytes: 1 << 30, onOutput: out.push });
  running.catch(() => undefined);
  await out.until(() => out.ticks[0], 'counter line (memory filled)', 60_000);
  return { vps, out, running };
}

/** mtime (ms) of the most recently written file in a dir tree. */
export async function lastWrite(dir: string): Promise<number> {
  let last = 0;
  for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, e.name);
    last = Math.max(last, e.isDirectory() ? await lastWrite(full) : (await fs.stat(full)).mtimeMs);
  }
  return last;
}

export async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, e.name);
    total += e.isDirectory() ? await dirBytes(full) : (await fs.stat(full)).size;
  }
  return total;
}

/** p50 with min and max, NaN-free. */
export function summary(xs: number[]): { p50: number; min: number; max: number; n: number } {
  const s = stats(xs.filter((x) => Number.isFinite(x)));
  return { p50: s.p50, min: s.min, max: s.max, n: s.n };
}

export const ms = (us: number | undefined): number => (us === undefined ? NaN : us / 1000);

// ---------------------------------------------------------------------------------------------

interface Sample {
  /** snapshot(): pause + dump --leave-running + disk sync and sparse copy + resume. */
  snapTotal: number;
  snapFrozen: number;
  snapJobPause: number;
  snapImages: number;
  snapFs: number;
  /** Parts of it, from file mtimes: start → last image written (runc pause + CRIU dump), → disk copy written (CRIU and runc exiting, sync, copy). */
  snapCriuPart: number;
  snapFsPart: number;
  /** The disk's sparse copy alone, as a separate run of the same command. */
  diskCopyAlone: number;
  /** plain `runc checkpoint --leave-running` of the same container. */
  plainTotal: number;
  /** CRIU's own stats-dump: how long it kept the tree frozen, collected and wrote the pages. */
  plainCriuFrozen: number;
  plainCriuMemdump: number;
  plainCriuMemwrite: number;
  plainJobPause: number;
  plainImages: number;
  /** stop-and-copy on the same host: checkpoint() (pause, drain, dump) + restore(). */
  scCheckpoint: number;
  scRestore: number;
  scJobPause: number;
}

/**
 * The pause the job itself saw around an operation that ran from t0 to end (host clock): the
 * longest sleep overrun it reported resuming in that window (it reports within a tick of running
 * again; a second of slack for the line to arrive). NaN when it reported none.
 */
export async function jobPause(out: JobOutput, t0: number, end: number): Promise<number> {
  const until = end + 1000;
  await out.until(() => (Date.now() >= until ? true : undefined), 'wait', 5000);
  return out.longestGap(t0, until)?.pausedMs ?? NaN;
}

async function onePass(engine: RuncEngine, vps: RuncVps, out: JobOutput, staging: string, i: number, snapFirst: boolean): Promise<Sample> {
  const s = {} as Sample;
  const doSnap = async () => {
    const dir = path.join(staging, `snap-${i}`);
    await fs.mkdir(dir, { recursive: true });
    const imagesDir = path.join(dir, 'images');
    const t0 = Date.now();
    const r = await snapshot(engine, vps, { imagesDir, diskImage: path.join(dir, 'disk.img') });
    const end = Date.now();
    s.snapTotal = r.durationMs;
    s.snapFrozen = r.frozenMs;
    s.snapImages = r.imagesBytes;
    s.snapFs = r.diskBytes;
    // Where the time went: the last image file CRIU wrote, then the disk copy (file mtimes).
    const criuEnd = await lastWrite(imagesDir);
    s.snapCriuPart = criuEnd - t0;
    s.snapFsPart = (await fs.stat(path.join(dir, 'disk.img'))).mtimeMs - criuEnd;
    // The disk copy step alone, repeated now.
    const a0 = Date.now();
    await execOk(['cp', '--sparse=always', engine.layout.vps(vps.id).image, path.join(dir, 'again.img')], { timeoutMs: 60_000 });
    s.diskCopyAlone = Date.now() - a0;
    s.snapJobPause = await jobPause(out, t0, end);
    await fs.rm(dir, { recursive: true, force: true });
  };
  const doPlain = async () => {
    const imagePath = path.join(staging, `plain-${i}`);
    const workPath = `${imagePath}.work`;
    await fs.mkdir(imagePath, { recursive: true });
    await fs.mkdir(workPath, { recursive: true });
    const t0 = Date.now();
    await execOk(checkpointArgs(engine.runc, vps.id, { imagePath, workPath, leaveRunning: true }), { timeoutMs: 120_000 });
    const end = Date.now();
    s.plainTotal = end - t0;
    s.plainImages = await dirBytes(imagePath);
    // CRIU writes its statistics into the work dir (runtime/checkpoint removes its own work dirs).
    const st = await readCriuStats(workPath);
    s.plainCriuFrozen = ms(st?.frozenUs);
    s.plainCriuMemdump = ms(st?.memdumpUs);
    s.plainCriuMemwrite = ms(st?.memwriteUs);
    s.plainJobPause = await jobPause(out, t0, end);
    await fs.rm(imagePath, { recursive: true, force: true });
    await fs.rm(workPath, { recursive: true, force: true });
  };
  if (snapFirst) {
    await doSnap();
    await sleep(300);
    await doPlain();
  } else {
    await doPlain();
    await sleep(300);
    await doSnap();
  }
  await sleep(300);
  // Stop-and-copy on this host: the job's processes end after the dump; restore brings them back.
  const t0 = Date.now();
  const cp = await checkpoint(engine, vps, { leaveRunning: false, name: `sc-${i}` });
  const rs = await restore(engine, vps, cp.imagePath);
  const end = Date.now();
  s.scCheckpoint = cp.durationMs;
  s.scRestore = rs.durationMs;
  s.scJobPause = await jobPause(out, t0, end);
  await fs.rm(cp.imagePath, { recursive: true, force: true });
  await sleep(300);
  return s;
}

export const checkpointBench: ListBenchmark = {
  name: NAME,
  description: 'snapshot() (pause + CRIU dump --leave-running + fs tar + resume) of a job holding N MB of changing memory vs plain `runc checkpoint --leave-running`, and stop-and-copy checkpoint+restore',
  options: {
    runs: { default: 5, min: 1, help: 'measured checkpoints of each kind per size' },
    warmup: { default: 1, min: 0, help: 'unmeasured passes first, per size' },
  },
  listOptions: { sizes: SIZES_OPTION },
  async run(ctx, opts, lists) {
    const runs = opts.runs!;
    const sizes = lists?.sizes ?? SIZES_OPTION.default;
    const program = await compileMemJob(path.join(ctx.stateDir, 'memjob'));
    note(`memjob compiled (${program.length} bytes, static)`);
    const e = await criuEngine(ctx, 'engine');
    let failure: unknown;
    try {
      for (const size of sizes) {
        checkInterrupted();
        const id = newId();
        const staging = path.join(ctx.stateDir, 'staging', id);
        await fs.mkdir(staging, { recursive: true });
        const { vps, out, running } = await startMemJob(e.engine, await memJobSpec(ctx, id, size), id, program, size);
        const samples: Sample[] = [];
        try {
          await sleep(500);
          for (let i = -opts.warmup!; i < runs; i++) {
            checkInterrupted();
            const s = await onePass(e.engine, vps, out, staging, i + opts.warmup!, i % 2 === 0);
            note(
              `${size} MB ${i < 0 ? 'warm-up' : `${i + 1}/${runs}`}: snapshot ${s.snapTotal} ms (frozen ${s.snapFrozen}, job saw ${s.snapJobPause}), ` +
                `plain runc checkpoint --leave-running ${s.plainTotal} ms (job saw ${s.plainJobPause}), ` +
                `stop-and-copy ${s.scCheckpoint} + ${s.scRestore} ms (job saw ${s.scJobPause})`,
            );
            if (i >= 0) samples.push(s);
          }
          // The job ran on through all of it: its counter kept going after the last restore.
          const last = out.ticks.at(-1)!;
          await out.until(() => (out.ticks.at(-1)!.ticks > last.ticks ? true : undefined), 'counter after the last pass', 5000);
          if (out.sequenceErrors.length) throw new Error(`the job's counter lines are not continuous: ${out.sequenceErrors.join(', ')}`);
        } finally {
          await e.engine.destroy(id);
          await running;
          await fs.rm(staging, { recursive: true, force: true });
        }
        const col = (k: keyof Sample) => summary(samples.map((x) => x[k]));
        const m = `${size}mb`;
        const put = (metric: string, k: keyof Sample, base?: keyof Sample, unit = 'ms', scale = 1) => {
          const v = col(k);
          const b = base ? col(base) : undefined;
          report(NAME, { metric: `${m}_${metric}_p50`, value: v.p50 / scale, unit, ...(b ? { baseline: b.p50 / scale } : {}) });
          report(NAME, { metric: `${m}_${metric}_min`, value: v.min / scale, unit, ...(b ? { baseline: b.min / scale } : {}) });
          report(NAME, { metric: `${m}_${metric}_max`, value: v.max / scale, unit, ...(b ? { baseline: b.max / scale } : {}) });
        };
        // Leave-running checkpoint (snapshot) vs plain runc checkpoint --leave-running.
        put('checkpoint_total', 'snapTotal', 'plainTotal');
        put('frozen', 'snapFrozen', 'plainCriuFrozen');
        put('job_pause', 'snapJobPause', 'plainJobPause');
        put('frozen.runc_pause_and_criu_dump', 'snapCriuPart');
        put('frozen.criu_exit_and_fs_tar', 'snapFsPart');
        put('disk_copy_alone', 'diskCopyAlone');
        put('plain_criu_frozen', 'plainCriuFrozen');
        put('plain_criu_memdump', 'plainCriuMemdump');
        put('plain_criu_memwrite', 'plainCriuMemwrite');
        put('images', 'snapImages', 'plainImages', 'MiB', MiB);
        put('fs_tar', 'snapFs', undefined, 'MiB', MiB);
        // Stop-and-copy on this host (the HOST-NOTES kind of measurement), same run.
        put('stopcopy_checkpoint', 'scCheckpoint');
        put('stopcopy_restore', 'scRestore');
        put('stopcopy_job_pause', 'scJobPause');
        const sp = col('snapFrozen');
        const target = size <= 64 ? 300 : size <= 256 ? 500 : NaN;
        note(`${size} MB: snapshot frozen p50 ${sp.p50} ms (min ${sp.min}, max ${sp.max})${Number.isFinite(target) ? `; target ≤ ${target} ms` : ''}`);
      }
    } catch (err) {
      failure = err;
    } finally {
      const problems = await e.cleanup();
      for (const p of problems) note(`LEAK/cleanup problem: ${p}`);
      if (problems.length && !failure) failure = new Error(`cleanup problems: ${problems.join('; ')}`);
    }
    if (failure) throw failure;
  },
};
