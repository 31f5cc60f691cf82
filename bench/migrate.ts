import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { errorMessage } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { checkpoint, dumpForMove, restore } from '../runtime/checkpoint/checkpoint.js';
import type { RuncEngine } from '../runtime/runc-engine.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import { resolveTemplate } from '../runtime/templates/store.js';
import type { RunResult, VpsSpec } from '../runtime/vps.js';
import {
  compileMemJob,
  criuEngine,
  jobPause,
  lastWrite,
  memJobSpec,
  SIZES_OPTION,
  startMemJob,
  summary,
  type JobOutput,
  type ListBenchmark,
} from './checkpoint.js';
import { checkInterrupted, MiB, note, report, sleep, TEMPLATES_DIR, type BenchContext } from './lib.js';
import { exchange, readHeader, untar } from '../worker/migration.js';

const NAME = 'migrate';
/** Job time before and after the move over which its tick rate is taken. */
const RATE_WINDOW_MS = 2000;

/**
 * What the "target host" needs besides the stream: in the worker the job store and the header say
 * it; here the benchmark registers it before sending. The target fills in its timestamps.
 */
interface Incoming {
  out: JobOutput;
  startedAt: string;
  /** Set by the target: tar -x done, create() returned, the adopted run() (settles at destroy). */
  untarredAt?: number;
  restoredAt?: number;
  bytes?: number;
  adopted?: Promise<RunResult>;
  vps?: RuncVps;
}

interface Header {
  vpsId: string;
  spec: Omit<VpsSpec, 'template'> & { template: { name: string; hash: string } };
  frozenAt: number;
}

/**
 * The target side of worker/migration.ts, in this process, on a loopback TCP port: header line,
 * then a tar stream of {images, fs.tar} extracted into a fresh dir, then the template check,
 * engine.create(..., restore) on engine B, adopt, and an answer line with the resume time.
 */
class Receiver {
  private server?: net.Server;
  readonly pending = new Map<string, Incoming>();
  port = 0;

  constructor(
    private readonly engine: RuncEngine,
    private readonly workDir: string,
  ) {}

  async listen(): Promise<void> {
    this.server = net.createServer({ allowHalfOpen: true }, (sock) => void this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    return new Promise((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private async accept(sock: net.Socket): Promise<void> {
    const answer = (a: object) => sock.end(`${JSON.stringify(a)}\n`);
    let dir: string | undefined;
    let header: Header | undefined;
    try {
      const { head, rest } = await readHeader(sock);
      header = JSON.parse(head) as Header;
      const inc = this.pending.get(header.vpsId);
      if (!inc) throw new Error(`unexpected migration of ${header.vpsId}`);
      const template = await resolveTemplate(TEMPLATES_DIR, header.spec.template.name);
      if (template.hash !== header.spec.template.hash) throw new Error(`template ${template.name} differs`);
      dir = path.join(this.workDir, `incoming-${header.vpsId}`);
      await fs.mkdir(dir, { recursive: true });
      await untar(sock, rest, dir);
      inc.bytes = sock.bytesRead;
      inc.untarredAt = Date.now();
      const imagesDir = path.join(dir, 'images');
      const vps = await this.engine.create(header.vpsId, { ...header.spec, template }, { imagesDir, fsTars: [path.join(dir, 'fs.tar')] });
      inc.restoredAt = Date.now();
      inc.vps = vps;
      // At once, before anything else can read the new channel (its backlog goes to the first listener).
      inc.adopted = vps.adopt({ argv: [], timeoutSec: 3600, outputBytes: 1 << 30, onOutput: inc.out.push }, { startedAt: inc.startedAt });
      inc.adopted.catch(() => undefined);
      answer({ ok: true, resumedAt: inc.restoredAt });
    } catch (e) {
      if (header) await this.engine.destroy(header.vpsId).catch(() => undefined);
      answer({ ok: false, message: errorMessage(e) });
    } finally {
      if (dir) await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

interface Sample {
  /** Dump start (pause) → restored on B (create returned). */
  total: number;
  /** frozenAt (dumpForMove) → the job's first counter line on B, as onOutput delivered it. */
  frozen: number;
  /** The job's own view: how long its sleep overran across the move (it did not run). */
  jobPause: number;
  /** Parts: dump start → frozenAt (runc pause), → dumped, → untarred on B, → restored, → first line. */
  pause: number;
  dump: number;
  transfer: number;
  restore: number;
  firstOutput: number;
  bytes: number;
  /** Parts of dump, from file mtimes: frozenAt → last CRIU image written (drain + CRIU), → fs.tar written (CRIU and runc exiting, full tar of the layer). */
  dumpCriu: number;
  dumpFs: number;
  /** Ticks/s of the job in the RATE_WINDOW_MS before the dump and after it ran again on B. */
  rateBefore: number;
  rateAfter: number;
  /** Baseline, same VPS on A just before: checkpoint() (pause, drain, dump) + restore() on the same host. */
  localTotal: number;
  localJobPause: number;
}

async function oneMove(ctx: BenchContext, a: RuncEngine, b: RuncEngine, recv: Receiver, program: Buffer, size: number): Promise<Sample> {
  const s = {} as Sample;
  const id = newId();
  const spec = await memJobSpec(ctx, id, size);
  const moveDir = path.join(ctx.stateDir, 'moves', id);
  await fs.mkdir(moveDir, { recursive: true });
  let started: Awaited<ReturnType<typeof startMemJob>> | undefined;
  let inc: Incoming | undefined;
  try {
    started = await startMemJob(a, spec, id, program, size);
    const { vps: src, out, running } = started;
    await sleep(RATE_WINDOW_MS + 500);

    // Baseline: stop-and-copy on the same host (no transfer, no second engine).
    const l0 = Date.now();
    const cp = await checkpoint(a, src, { leaveRunning: false, name: 'local' });
    await restore(a, src, cp.imagePath);
    const l1 = Date.now();
    s.localTotal = l1 - l0;
    s.localJobPause = await jobPause(out, l0, l1);
    await fs.rm(cp.imagePath, { recursive: true, force: true });
    await sleep(RATE_WINDOW_MS + 500);

    // The move: A → TCP → B.
    const info = src.info();
    inc = { out, startedAt: new Date().toISOString() };
    recv.pending.set(id, inc);
    const t0 = Date.now();
    const dumped = await dumpForMove(a, src, moveDir);
    const tDumped = Date.now();
    const header: Header = {
      vpsId: id,
      spec: { ...info.spec, template: { name: info.spec.template.name, hash: info.spec.template.hash } },
      frozenAt: dumped.frozenAt,
    };
    const answer = await exchange('127.0.0.1', recv.port, header, { dir: moveDir });
    if (!answer.ok) throw new Error(`the target refused the move: ${answer.message}`);
    src.handOver();
    const handed = await running;
    if (!handed.migrated) throw new Error(`the source's run() did not report migrated: ${JSON.stringify(handed)}`);
    const first = await out.until(() => out.firstTickAfter(tDumped), 'counter line on B', 10_000);
    // dumpForMove removes CRIU's work dir (and its stats); split its time by file mtimes instead.
    const criuEnd = await lastWrite(dumped.imagesDir);
    const fsEnd = (await fs.stat(dumped.fsTar)).mtimeMs;
    await fs.rm(moveDir, { recursive: true, force: true });

    s.total = inc.restoredAt! - t0;
    s.frozen = first.at - dumped.frozenAt;
    s.pause = dumped.frozenAt - t0;
    s.dump = tDumped - dumped.frozenAt;
    s.transfer = inc.untarredAt! - tDumped;
    s.restore = inc.restoredAt! - inc.untarredAt!;
    s.firstOutput = first.at - inc.restoredAt!;
    s.bytes = inc.bytes!;
    s.dumpCriu = criuEnd - dumped.frozenAt;
    s.dumpFs = fsEnd - criuEnd;
    const gap = out.longestGap(t0);
    s.jobPause = gap?.pausedMs ?? NaN;
    // Rates on the job's own clock: before the freeze, and from its first tick on B.
    s.rateBefore = out.rate(t0 - RATE_WINDOW_MS, t0);
    const resumed = gap?.ms ?? first.ms;
    await out.until(() => (out.ticks.at(-1)!.ms >= resumed + RATE_WINDOW_MS + 100 ? true : undefined), 'two seconds of counter lines on B', RATE_WINDOW_MS + 10_000);
    s.rateAfter = out.rate(resumed, resumed + RATE_WINDOW_MS);
    // Nothing lost, nothing repeated: A's last counter line is followed by the next one on B.
    if (out.sequenceErrors.length) throw new Error(`the job's counter lines are not continuous: ${out.sequenceErrors.join(', ')}`);
    return s;
  } finally {
    recv.pending.delete(id);
    // The source's copy (dumped, its processes gone) and the moved one on B.
    await a.destroy(id);
    await started?.running;
    await b.destroy(id);
    await inc?.adopted;
    await fs.rm(moveDir, { recursive: true, force: true });
  }
}

export const migrateBench: ListBenchmark = {
  name: NAME,
  description: 'stop-and-copy move of a running job holding N MB of changing memory between two engines over loopback TCP (total, frozen, transfer, slowdown) vs same-host checkpoint+restore',
  options: {
    runs: { default: 5, min: 1, help: 'measured moves per size (a fresh VPS each)' },
    warmup: { default: 1, min: 0, help: 'unmeasured moves first, per size' },
  },
  listOptions: { sizes: SIZES_OPTION },
  async run(ctx, opts, lists) {
    const runs = opts.runs!;
    const sizes = lists?.sizes ?? SIZES_OPTION.default;
    const program = await compileMemJob(path.join(ctx.stateDir, 'memjob'));
    note(`memjob compiled (${program.length} bytes, static)`);
    const a = await criuEngine(ctx, 'host-a');
    const b = await criuEngine(ctx, 'host-b');
    const recv = new Receiver(b.engine, path.join(ctx.stateDir, 'incoming'));
    let failure: unknown;
    try {
      await recv.listen();
      note(`target listening on 127.0.0.1:${recv.port}`);
      for (const size of sizes) {
        const samples: Sample[] = [];
        for (let i = -opts.warmup!; i < runs; i++) {
          checkInterrupted();
          const s = await oneMove(ctx, a.engine, b.engine, recv, program, size);
          note(
            `${size} MB ${i < 0 ? 'warm-up' : `${i + 1}/${runs}`}: total ${s.total} ms, frozen ${s.frozen} ms (job saw ${s.jobPause}) = ` +
              `dump ${s.dump} + transfer ${s.transfer} + restore ${s.restore} + first line ${s.firstOutput}; ${(s.bytes / MiB).toFixed(1)} MiB; ` +
              `rate ${s.rateBefore.toFixed(1)} → ${s.rateAfter.toFixed(1)} ticks/s; local checkpoint+restore ${s.localTotal} ms (job saw ${s.localJobPause})`,
          );
          if (i >= 0) samples.push(s);
        }
        const col = (k: keyof Sample) => summary(samples.map((x) => x[k]));
        const m = `${size}mb`;
        const put = (metric: string, k: keyof Sample, base?: keyof Sample, unit = 'ms', scale = 1, which: Array<'p50' | 'min' | 'max'> = ['p50', 'min', 'max']) => {
          const v = col(k);
          const bs = base ? col(base) : undefined;
          for (const w of which) report(NAME, { metric: `${m}_${metric}_${w}`, value: v[w] / scale, unit, ...(bs ? { baseline: bs[w] / scale } : {}) });
        };
        put('total', 'total', 'localTotal');
        put('frozen', 'frozen');
        put('job_pause', 'jobPause', 'localJobPause');
        for (const [metric, k] of [['frozen.pause', 'pause'], ['frozen.dump', 'dump'], ['frozen.transfer', 'transfer'], ['frozen.restore', 'restore'], ['frozen.first_output', 'firstOutput'], ['frozen.dump.criu', 'dumpCriu'], ['frozen.dump.criu_exit_and_fs_tar', 'dumpFs']] as const) {
          put(metric, k, undefined, 'ms', 1, ['p50']);
        }
        put('transfer', 'bytes', undefined, 'MiB', MiB, ['p50']);
        // Slowdown after the move: ticks/s after resume vs before the freeze (ratio ~1 = none).
        put('rate_after', 'rateAfter', 'rateBefore', 'ticks/s');
        const f = col('frozen');
        note(`${size} MB: frozen p50 ${f.p50} ms (min ${f.min}, max ${f.max}); target ≤ ${size <= 64 ? 300 : 500} ms; total p50 ${col('total').p50} ms (target ≤ 5000)`);
      }
    } catch (err) {
      failure = err;
    } finally {
      await recv.close();
      const problems = [...(await b.cleanup()), ...(await a.cleanup())];
      for (const p of problems) note(`LEAK/cleanup problem: ${p}`);
      await fs.rm(path.join(ctx.stateDir, 'incoming'), { recursive: true, force: true });
      await fs.rm(path.join(ctx.stateDir, 'moves'), { recursive: true, force: true });
      if (problems.length && !failure) failure = new Error(`cleanup problems: ${problems.join('; ')}`);
    }
    if (failure) throw failure;
  },
};
