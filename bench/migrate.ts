import fs from 'node:fs/promises';
import path from 'node:path';
import { errorMessage } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { checkpoint, dumpForMove, restore } from '../runtime/checkpoint/checkpoint.js';
import { freePort, lazyDumpForMove, postCopySupport, startLazyPages, type LazyDump, type LazyPages } from '../runtime/checkpoint/lazy.js';
import type { RuncEngine } from '../runtime/runc-engine.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import { resolveTemplate } from '../runtime/templates/store.js';
import type { RunResult } from '../runtime/vps.js';
import type { Host } from '../core/store/hosts.js';
import { createLogger } from '../core/log.js';
import {
  compileMemJob,
  CRIU,
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
import { loadCredentials, type MigrationCredentials } from '../worker/migration/credentials.js';
import { receiveFiles } from '../worker/migration/files.js';
import { checkpointFiles, parseMessage, seal, type Move } from '../worker/migration/protocol.js';
import { FileSender } from '../worker/migration/sender.js';
import { ChannelServer, request, within as withinOr, type ChannelRequest } from '../worker/migration/transport.js';

const NAME = 'migrate';
/** Job time before and after the move over which its tick rate is taken. */
const RATE_WINDOW_MS = 2000;
/** The short window right after the job resumed on B (post-copy: while most pages are still on A). */
const EARLY_RATE_WINDOW_MS = 500;
/** Post-copy: how long the last page may take to arrive after the job resumed on B. */
const PAGES_TIMEOUT_MS = 120_000;

/**
 * stop-and-copy and post-copy send the move's files as the worker does (from its file sender's
 * thread, worker/migration/sender.ts); stop-and-copy-inline sends them from this thread, for A/B
 * runs (not measured by default).
 */
type Mode = 'stop-and-copy' | 'post-copy' | 'stop-and-copy-inline';
const MODES: readonly Mode[] = ['stop-and-copy', 'post-copy', 'stop-and-copy-inline'];
const DEFAULT_MODES: readonly Mode[] = ['stop-and-copy', 'post-copy'];

/**
 * What the "target host" needs besides the stream: in the worker the job store and the header say
 * it; here the benchmark registers it before sending. The target fills in its timestamps.
 */
interface Incoming {
  out: JobOutput;
  startedAt: string;
  /** Set by the target: tar -x done, (post-copy) lazy-pages daemon ready, create() returned, the adopted run() (settles at destroy). */
  untarredAt?: number;
  lazyReadyAt?: number;
  restoredAt?: number;
  bytes?: number;
  adopted?: Promise<RunResult>;
  vps?: RuncVps;
  /** Post-copy: the lazy-pages daemon and when it had every page (rejects: it failed). */
  pages?: LazyPages;
  pagesDoneAt?: Promise<number>;
  /** Post-copy: the received dir, which the daemon reads until its end; the move removes it. */
  dir?: string;
}

/** A stand-in heartbeat of one of the benchmark's two "hosts" (both on loopback). */
function benchHost(id: string, port: number, creds: MigrationCredentials): Host {
  const now = new Date().toISOString();
  return { id, address: '127.0.0.1', startedAt: now, heartbeatAt: now, draining: false, running: 0, capacity: 1, pools: [], templates: [], version: 'bench', migrationPort: port, migrationFingerprint: creds.fingerprint };
}

/**
 * The target side of worker/migration/target.ts, in this process, on the migration channel
 * (worker/migration/transport.ts: mutual TLS, host "a" authenticated by its certificate) on a
 * loopback port: the move line, then the checkpoint's files (files.ts) into a fresh dir, then the
 * template check, (post-copy: `criu lazy-pages` pointed at the source's page server),
 * engine.create(..., restore) on engine B, adopt, and an answer line with the resume time.
 */
class Receiver {
  private channel?: ChannelServer;
  readonly pending = new Map<string, Incoming>();
  port = 0;

  constructor(
    private readonly engine: RuncEngine,
    private readonly workDir: string,
    readonly credentials: MigrationCredentials,
    private readonly source: () => Host,
  ) {}

  async listen(): Promise<void> {
    this.channel = new ChannelServer({ credentials: this.credentials, hosts: { list: async () => [this.source()] }, log: createLogger('warn'), onRequest: (r) => this.accept(r) });
    this.port = await this.channel.listen('127.0.0.1', 0);
  }

  close(): Promise<void> {
    return this.channel?.close() ?? Promise.resolve();
  }

  private async accept(req: ChannelRequest): Promise<void> {
    const answer = (a: { ok: boolean; resumedAt?: number; message?: string }) => req.answer(a);
    let dir: string | undefined;
    let header: Move | undefined;
    let inc: Incoming | undefined;
    let keepDir = false;
    let started: Promise<LazyPages> | undefined;
    try {
      const message = parseMessage(req.line);
      if (message.kind !== 'move') throw new Error(`unexpected ${message.kind} request`);
      header = message;
      inc = this.pending.get(header.vpsId);
      if (!inc) throw new Error(`unexpected migration of ${header.vpsId}`);
      const template = await resolveTemplate(TEMPLATES_DIR, header.spec.template.name);
      if (template.hash !== header.spec.template.hash) throw new Error(`template ${template.name} differs`);
      dir = path.join(this.workDir, `incoming-${header.vpsId}`);
      await fs.mkdir(dir, { recursive: true });
      await receiveFiles(req.reader, checkpointFiles(dir, header.spec));
      req.done();
      inc.bytes = req.reader.bytesRead;
      inc.untarredAt = Date.now();
      const imagesDir = path.join(dir, 'images');
      const workDir = path.join(dir, 'lazy-work');
      if (header.mode === 'post-copy') {
        if (!this.engine.runc.criu || !header.pageServer) throw new Error('post-copy move without criu or page server');
        // As the worker does: the daemon starts while create() makes the layer and netns.
        const incoming = inc;
        started = startLazyPages(this.engine.runc.criu, { imagesDir, workDir, source: header.pageServer }).then((p) => {
          incoming.pages = p;
          incoming.lazyReadyAt = Date.now();
          // Taken the moment the last page arrived, whatever the move awaits meanwhile.
          incoming.pagesDoneAt = p.done.then(() => Date.now());
          incoming.pagesDoneAt.catch(() => undefined);
          return p;
        });
        started.catch(() => undefined);
      }
      const vps = await this.engine.create(header.vpsId, { ...header.spec, template }, { imagesDir, disk: { path: path.join(dir, 'disk.img'), move: true }, lazyPagesWorkDir: started && workDir, lazyPagesReady: started });
      const pages = await started;
      inc.restoredAt = Date.now();
      inc.vps = vps;
      // At once, before anything else can read the new channel (its backlog goes to the first listener).
      inc.adopted = vps.adopt({ argv: [], timeoutSec: 3600, outputBytes: 1 << 30, onOutput: inc.out.push }, { startedAt: inc.startedAt });
      inc.adopted.catch(() => undefined);
      if (pages) {
        // The daemon reads the images until the last page: the move stops it and removes the dir.
        inc.dir = dir;
        keepDir = true;
      }
      answer({ ok: true, resumedAt: inc.restoredAt });
    } catch (e) {
      if (header) await this.engine.destroy(header.vpsId).catch(() => undefined);
      await started?.then((p) => p.stop(), () => undefined);
      answer({ ok: false, message: errorMessage(e) });
    } finally {
      if (dir && !keepDir) await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

interface Sample {
  mode: Mode;
  /** Dump start (pause) → restored on B (create returned). */
  total: number;
  /** frozenAt (dumpForMove / lazyDumpForMove) → the job's first counter line on B, as onOutput delivered it. */
  frozen: number;
  /** The job's own view: how long its sleep overran across the move (it did not run). */
  jobPause: number;
  /** Parts: dump start → frozenAt (runc pause), → dumped, → untarred on B, → restored, → first line. */
  pause: number;
  dump: number;
  transfer: number;
  restore: number;
  /** Post-copy, part of `restore`: untarred → the lazy-pages daemon has its socket. */
  lazyStart: number;
  firstOutput: number;
  bytes: number;
  /** Parts of dump: frozenAt → last CRIU image written (drain + CRIU, from file mtimes), → dump returned (CRIU and runc exiting, disk synced and linked). */
  dumpCriu: number;
  dumpFs: number;
  /** Post-copy: the job's first line on B → every page arrived on B and the source's page server ended. */
  pagesIn: number;
  /** Ticks/s of the job in the RATE_WINDOW_MS before the dump, after it ran again on B, and in the EARLY_RATE_WINDOW_MS after that. */
  rateBefore: number;
  rateAfter: number;
  rateEarly: number;
  /** Baseline, same VPS on A just before: checkpoint() (pause, drain, dump) + restore() on the same host. */
  localTotal: number;
  localJobPause: number;
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return withinOr(p, ms, () => new Error(`${what}: not within ${ms} ms`));
}

/**
 * Ticks/s from t0 (job clock) over about `windowMs`: the counter lines inside the window, plus the
 * next one after it when fewer than two are inside (a short window of a slowed job), so the window
 * is then up to one line interval longer.
 */
function windowRate(out: JobOutput, t0: number, windowMs: number): number {
  const inside = out.ticks.filter((x) => x.ms >= t0 && x.ms <= t0 + windowMs);
  if (inside.length < 2) {
    const next = out.ticks.find((x) => x.ms > t0 + windowMs);
    if (next) inside.push(next);
  }
  if (inside.length < 2) return NaN;
  const a = inside[0]!;
  const b = inside[inside.length - 1]!;
  return ((b.ticks - a.ticks) / (b.ms - a.ms)) * 1000;
}

async function oneMove(
  ctx: BenchContext,
  a: RuncEngine,
  b: RuncEngine,
  recv: Receiver,
  from: MigrationCredentials,
  sender: FileSender,
  program: Buffer,
  size: number,
  mode: Mode,
  prepare: boolean,
): Promise<Sample> {
  const s = { mode, lazyStart: NaN, pagesIn: NaN } as Sample;
  const id = newId();
  const spec = await memJobSpec(ctx, id, size);
  const moveDir = path.join(ctx.stateDir, 'moves', id);
  await fs.mkdir(moveDir, { recursive: true });
  let started: Awaited<ReturnType<typeof startMemJob>> | undefined;
  let inc: Incoming | undefined;
  let lazy: LazyDump | undefined;
  let transferSettled = false;
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

    // The move: A → TCP → B (post-copy: the pages then from A's page server to B's lazy-pages daemon).
    const info = src.info();
    // As the worker's prepare step: B makes the VPS's network while the job still runs on A.
    if (prepare) await b.prepareRestore(id, spec, { network: spec.network, diskMb: spec.diskMb, address: info.network.address });
    inc = { out, startedAt: new Date().toISOString() };
    recv.pending.set(id, inc);
    const pageServer = mode === 'post-copy' ? { address: '127.0.0.1', port: await freePort('127.0.0.1') } : undefined;
    const t0 = Date.now();
    let dumped: { frozenAt: number; imagesDir: string; diskImage: string; releaseDisk: () => Promise<void> };
    let transferredAt: Promise<number> | undefined;
    if (pageServer) {
      lazy = await lazyDumpForMove(a, src, moveDir, pageServer);
      dumped = lazy;
      transferredAt = lazy.transferred.then(() => Date.now());
      transferredAt.catch(() => undefined);
      void lazy.transferred.then(
        () => (transferSettled = true),
        () => (transferSettled = true),
      );
    } else {
      dumped = await dumpForMove(a, src, moveDir);
    }
    const tDumped = Date.now();
    const { hostname, network, memoryMb, cpus, pids, diskMb } = info.spec;
    const wireSpec = { template: { name: info.spec.template.name, hash: info.spec.template.hash }, hostname, network, memoryMb, cpus, pids, diskMb };
    const header = seal(
      { kind: 'move', jobId: id, migrationId: id, vpsId: id, spec: wireSpec, network: { mode: network }, frozenAt: dumped.frozenAt, mode: mode === 'post-copy' ? 'post-copy' : 'stop-and-copy', ...(pageServer ? { pageServer } : {}) },
      { from: 'a', to: 'b' },
    );
    const to = benchHost('b', recv.port, recv.credentials);
    const send = { files: checkpointFiles(moveDir, wireSpec), timeoutMs: 180_000 };
    const answer = await (mode === 'stop-and-copy-inline' ? request(from, to, header, send) : sender.send(from, to, header, send));
    await dumped.releaseDisk();
    if (!answer.ok) throw new Error(`the target refused the move: ${answer.message}`);
    src.handOver();
    const handed = await running;
    if (!handed.migrated) throw new Error(`the source's run() did not report migrated: ${JSON.stringify(handed)}`);
    const first = await out.until(() => out.firstTickAfter(tDumped), 'counter line on B', 10_000);
    // The dump functions remove CRIU's work dir (and its stats) or keep it busy; split their time by file mtimes instead.
    const criuEnd = await lastWrite(dumped.imagesDir);
    // Post-copy: the page server's work dir is in there until it ended.
    if (!lazy) await fs.rm(moveDir, { recursive: true, force: true });

    s.total = inc.restoredAt! - t0;
    s.frozen = first.at - dumped.frozenAt;
    s.pause = dumped.frozenAt - t0;
    s.dump = tDumped - dumped.frozenAt;
    s.transfer = inc.untarredAt! - tDumped;
    s.restore = inc.restoredAt! - inc.untarredAt!;
    if (inc.lazyReadyAt !== undefined) s.lazyStart = inc.lazyReadyAt - inc.untarredAt!;
    s.firstOutput = first.at - inc.restoredAt!;
    s.bytes = inc.bytes!;
    s.dumpCriu = criuEnd - dumped.frozenAt;
    s.dumpFs = tDumped - criuEnd;
    const gap = out.longestGap(t0);
    s.jobPause = gap?.pausedMs ?? NaN;
    // Rates on the job's own clock: before the freeze, and from its first tick on B.
    s.rateBefore = out.rate(t0 - RATE_WINDOW_MS, t0);
    const resumed = gap?.ms ?? first.ms;
    await out.until(() => (out.ticks.at(-1)!.ms >= resumed + RATE_WINDOW_MS + 100 ? true : undefined), 'two seconds of counter lines on B', RATE_WINDOW_MS + 10_000);
    s.rateAfter = out.rate(resumed, resumed + RATE_WINDOW_MS);
    s.rateEarly = windowRate(out, resumed, EARLY_RATE_WINDOW_MS);
    if (lazy) {
      // Every page arrived (the daemon on B ended successfully) and the page server on A ended (its processes gone).
      const [pagesAt, servedAt] = await within(Promise.all([inc.pagesDoneAt!, transferredAt!]), PAGES_TIMEOUT_MS, 'every page on B');
      const allIn = Math.max(pagesAt, servedAt);
      s.pagesIn = allIn - first.at;
      // And the job goes on on B with all its memory local.
      await out.until(() => out.firstTickAfter(allIn + 1), 'counter line on B after the last page', 10_000);
    }
    // Nothing lost, nothing repeated: A's last counter line is followed by the next one on B.
    if (out.sequenceErrors.length) throw new Error(`the job's counter lines are not continuous: ${out.sequenceErrors.join(', ')}`);
    return s;
  } finally {
    recv.pending.delete(id);
    // Target first: the moved copy on B, then its lazy-pages daemon (post-copy).
    await b.destroy(id);
    await inc?.adopted;
    await inc?.pages?.stop();
    // The source must not be destroyed while its page server runs: before the target restored,
    // cancel (thaws it here); after, its end follows the daemon's (killed when it does not).
    if (lazy && !transferSettled) {
      if (!inc?.restoredAt) await lazy.cancel().catch(() => undefined);
      else {
        await within(lazy.transferred, 10_000, 'page server end').catch(() => undefined);
        if (!transferSettled) lazy.signalPageServer('SIGKILL');
      }
      await lazy.transferred.catch(() => undefined);
    }
    // The source's copy (dumped, its processes gone).
    await a.destroy(id);
    await started?.running;
    await fs.rm(moveDir, { recursive: true, force: true });
    if (inc?.dir) await fs.rm(inc.dir, { recursive: true, force: true });
  }
}

export const migrateBench: ListBenchmark = {
  name: NAME,
  description:
    'stop-and-copy and post-copy (lazy pages) move of a running job holding N MB of changing memory between two engines over loopback TCP (total, frozen, transfer, pages in, slowdown) vs same-host checkpoint+restore',
  options: {
    runs: { default: 5, min: 1, help: 'measured moves per size and mode (a fresh VPS each)' },
    warmup: { default: 1, min: 0, help: 'unmeasured moves first, per size and mode' },
    prepare: { default: 1, min: 0, help: "1: host B makes the VPS's network and disk before the freeze, as a worker does (0: inside the restore)" },
  },
  listOptions: { sizes: SIZES_OPTION },
  nameOptions: { modes: { default: [...DEFAULT_MODES], choices: [...MODES], help: 'migration modes to measure, comma-separated (stop-and-copy-inline: files sent from the main thread, for A/B)' } },
  async run(ctx, opts, lists, names) {
    const modes = (names?.modes ?? [...DEFAULT_MODES]) as Mode[];
    const runs = opts.runs!;
    const sizes = lists?.sizes ?? SIZES_OPTION.default;
    note(`modes: ${modes.join(', ')}`);
    if (modes.includes('post-copy')) {
      // Raises fs.pipe-max-size to 4 MiB when lower (a host setting; it stays so).
      const support = await postCopySupport(CRIU, true);
      if (!support.ok) throw new Error(`post-copy is not possible on this host: ${support.detail} (measure stop-and-copy alone with --modes stop-and-copy)`);
      note(`post-copy: ${support.detail}`);
    }
    const program = await compileMemJob(path.join(ctx.stateDir, 'memjob'));
    note(`memjob compiled (${program.length} bytes, static)`);
    const a = await criuEngine(ctx, 'host-a');
    const b = await criuEngine(ctx, 'host-b');
    // Each "host" its own key and certificate, as a worker makes them (openssl, under its state dir).
    const log = createLogger('warn');
    const credsA = await loadCredentials({ stateDir: path.join(ctx.stateDir, 'host-a-tls'), hostId: 'a', files: {}, log });
    const credsB = await loadCredentials({ stateDir: path.join(ctx.stateDir, 'host-b-tls'), hostId: 'b', files: {}, log });
    const recv = new Receiver(b.engine, path.join(ctx.stateDir, 'incoming'), credsB, () => benchHost('a', 0, credsA));
    const sender = new FileSender();
    sender.warm();
    let failure: unknown;
    try {
      await recv.listen();
      note(`target listening on 127.0.0.1:${recv.port}`);
      for (const size of sizes) {
        const samples = new Map<Mode, Sample[]>(modes.map((m) => [m, []]));
        for (let i = -opts.warmup!; i < runs; i++) {
          // Alternating which mode goes first, so neither always runs right after the other.
          const order = (i + opts.warmup!) % 2 === 0 ? modes : [...modes].reverse();
          for (const mode of order) {
            checkInterrupted();
            const s = await oneMove(ctx, a.engine, b.engine, recv, credsA, sender, program, size, mode, opts.prepare !== 0);
            note(
              `${size} MB ${mode} ${i < 0 ? 'warm-up' : `${i + 1}/${runs}`}: total ${s.total} ms, frozen ${s.frozen} ms (job saw ${s.jobPause}) = ` +
                `dump ${s.dump} + transfer ${s.transfer} + restore ${s.restore}${mode === 'post-copy' ? ` (lazy-pages start ${s.lazyStart})` : ''} + first line ${s.firstOutput}; ${(s.bytes / MiB).toFixed(1)} MiB; ` +
                (mode === 'post-copy' ? `pages in ${s.pagesIn} ms after the first line; ` : '') +
                `rate ${s.rateBefore.toFixed(1)} → ${s.rateEarly.toFixed(1)} (first ${EARLY_RATE_WINDOW_MS} ms) / ${s.rateAfter.toFixed(1)} (${RATE_WINDOW_MS} ms) ticks/s; ` +
                `local checkpoint+restore ${s.localTotal} ms (job saw ${s.localJobPause})`,
            );
            if (i >= 0) samples.get(mode)!.push(s);
          }
        }
        for (const mode of modes) {
          const ss = samples.get(mode)!;
          const col = (k: keyof Sample) => summary(ss.map((x) => x[k] as number));
          // Stop-and-copy keeps the metric names it had before post-copy was measured.
          const m = mode === 'stop-and-copy' ? `${size}mb` : `${size}mb_${mode}`;
          const put = (metric: string, k: keyof Sample, base?: keyof Sample, unit = 'ms', scale = 1, which: Array<'p50' | 'min' | 'max'> = ['p50', 'min', 'max']) => {
            const v = col(k);
            const bs = base ? col(base) : undefined;
            for (const w of which) report(NAME, { metric: `${m}_${metric}_${w}`, value: v[w] / scale, unit, ...(bs ? { baseline: bs[w] / scale } : {}) });
          };
          put('total', 'total', 'localTotal');
          put('frozen', 'frozen');
          put('job_pause', 'jobPause', 'localJobPause');
          const parts: Array<[string, keyof Sample]> = [
            ['frozen.pause', 'pause'],
            ['frozen.dump', 'dump'],
            ['frozen.transfer', 'transfer'],
            ['frozen.restore', 'restore'],
            ...(mode === 'post-copy' ? ([['frozen.restore.lazy_pages_start', 'lazyStart']] as Array<[string, keyof Sample]>) : []),
            ['frozen.first_output', 'firstOutput'],
            ['frozen.dump.criu', 'dumpCriu'],
            ['frozen.dump.criu_exit_and_fs_tar', 'dumpFs'],
          ];
          for (const [metric, k] of parts) put(metric, k, undefined, 'ms', 1, ['p50']);
          put('transfer', 'bytes', undefined, 'MiB', MiB, ['p50']);
          if (mode === 'post-copy') put('pages_in', 'pagesIn');
          // Slowdown after the move: ticks/s after resume vs before the freeze (ratio ~1 = none);
          // the first EARLY_RATE_WINDOW_MS is where post-copy's page faults go to the source.
          put('rate_after_500ms', 'rateEarly', 'rateBefore', 'ticks/s');
          put('rate_after', 'rateAfter', 'rateBefore', 'ticks/s');
          const f = col('frozen');
          note(
            `${size} MB ${mode}: frozen p50 ${f.p50} ms (min ${f.min}, max ${f.max}); target ≤ ${size <= 64 ? 300 : 500} ms; total p50 ${col('total').p50} ms (target ≤ 5000)` +
              (mode === 'post-copy' ? `; pages in p50 ${col('pagesIn').p50} ms after the first line` : ''),
          );
        }
      }
    } catch (err) {
      failure = err;
    } finally {
      await recv.close();
      await sender.close();
      const problems = [...(await b.cleanup()), ...(await a.cleanup())];
      for (const p of problems) note(`LEAK/cleanup problem: ${p}`);
      await fs.rm(path.join(ctx.stateDir, 'incoming'), { recursive: true, force: true });
      await fs.rm(path.join(ctx.stateDir, 'moves'), { recursive: true, force: true });
      if (problems.length && !failure) failure = new Error(`cleanup problems: ${problems.join('; ')}`);
    }
    if (failure) throw failure;
  },
};
