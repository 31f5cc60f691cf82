import { spawn } from 'node:child_process';
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { canCheckpoint, nonRootMessage } from '../core/checkpointable.js';
import { errorMessage, isRunboxError, RunboxError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Job } from '../core/job.js';
import type { Logger } from '../core/log.js';
import type { Host } from '../core/store/hosts.js';
import type { JobStore } from '../core/store/jobs.js';
import type { Keys } from '../core/store/keys.js';
import { instanceHost, type LeaseStore } from '../core/store/leases.js';
import { dumpForMove, restore } from '../runtime/checkpoint/checkpoint.js';
import { transferDir } from '../runtime/gc.js';
import { freePort, lazyDumpForMove, startLazyPages, type LazyDump, type LazyPages } from '../runtime/checkpoint/lazy.js';
import type { RuncEngine } from '../runtime/runc-engine.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import { ensureTemplateVersion } from '../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../runtime/templates/recipes.js';
import type { VpsSpec } from '../runtime/vps.js';
import type { NetworkMode } from '../runtime/net/network.js';
import type { RunningJob, RunningJobs } from './running.js';

/**
 * Live migration, stop-and-copy, directly from host to host over TCP:
 *
 *   source: ask the target to prepare (while the job keeps running) → freeze → drain output
 *           → CRIU dump → sync and link the disk image → connect to the target → header line (JSON) + tar
 *           of {images, disk.img} → wait for the answer line
 *   target: prepare: have the checkpoint's template version (build it from the recipe if that
 *           makes exactly this version) → answer
 *           move: mount the disk image that came → restore (same address, same hostname, the job's own network
 *           configuration) → claim the job → answer → supervise the job to its end
 *
 * Never two live copies: both sides claim the migration with SET NX on one Redis key before a
 * copy may run. The target claims before `runc restore`; a source whose transfer failed claims
 * before restoring locally; whoever loses does not run its copy.
 */
export type MigrationMode = 'stop-and-copy' | 'post-copy';
/** What a caller asks for; `auto` is post-copy where both hosts can do it. */
export type MigrationPreference = 'auto' | MigrationMode;

export interface Header {
  secret: string;
  migrationId: string;
  jobId: string;
  vpsId: string;
  spec: Omit<VpsSpec, 'template'> & { template: { name: string; hash: string } };
  network: { mode: NetworkMode; address?: string };
  frozenAt: number;
  /** The source host (for notes). */
  from: string;
  mode: MigrationMode;
  /** Post-copy: where the source's CRIU page server serves the memory pages. */
  pageServer?: { address: string; port: number };
}

/**
 * The first message of a migration: make sure the target can restore it, before the job freezes.
 * With `vps`, the target also makes the VPS's network (same address) and disk ahead of the restore.
 */
export interface PrepareHeader {
  secret: string;
  jobId: string;
  prepare: { template: { name: string; hash: string }; vps?: Pick<Header, 'vpsId' | 'spec' | 'network'> };
}

/** A move that will not come after all: the target destroys the VPS it prepared for it. */
export interface ReleaseHeader {
  secret: string;
  jobId: string;
  release: string;
}

export interface MigrationResult {
  from: string;
  to: string;
  startedAt: string;
  totalMs: number;
  frozenMs: number;
  mode: MigrationMode;
}

export interface MigrationDeps {
  hostId: string;
  engine: RuncEngine;
  jobs: JobStore;
  redis: Redis;
  keys: Keys;
  running: RunningJobs;
  /** Job leases (core/store/leases.ts) and this worker's holder name: a move hands the lease over. */
  leases: LeaseStore;
  instance: string;
  log: Logger;
  /** Template recipes, to build the version an incoming job needs (default: templates/ of this checkout). */
  recipesDir?: string;
  /** This host can migrate with post-copy (criu lazy-pages, see runtime/checkpoint/lazy.ts). */
  postCopy: boolean;
  /** Whether this host can checkpoint processes of non-root users (core/checkpointable.ts). */
  checkpointNonRoot: boolean;
  /** This host's address, where a post-copy source's page server listens. */
  address: string | null;
  /** Runs a job that arrived here already running, to its end (the processor's supervision). */
  adopt(jobId: string, vps: RuncVps, note: string, gate?: Promise<boolean>): Promise<void>;
  /** A job whose processes are gone here without a result: resume it from its last checkpoint (or host_lost). */
  recover(jobId: string, why: string): Promise<void>;
}

const ANSWER_TIMEOUT_MS = 180_000;
/** A failed move's note to the target that its prepared VPS is not needed (best effort). */
const RELEASE_TIMEOUT_MS = 10_000;
/** Post-copy: dumps tried when the page server's port was taken before CRIU bound it. */
const PAGE_SERVER_ATTEMPTS = 3;
/** Post-copy: the longest a source keeps serving pages after the target took the job. */
const PAGES_TIMEOUT_MS = 600_000;
/** A target may have to build a template version first (a minute or two for a Debian one). */
const PREPARE_TIMEOUT_MS = 600_000;
/** How long a target keeps a VPS it prepared for a move that has not arrived (the source's dump and tar may take minutes). */
const PREPARED_TTL_MS = 600_000;

type Answer = { ok: boolean; resumedAt?: number; code?: string; message?: string; postCopy?: boolean };

/**
 * Failure injection for tests: with RUNBOX_FAULT_INJECTION=1 in a worker's environment, a job
 * label `runbox.fault` names a step of its migration that fails: `prepare` (the target cannot get
 * the template version), `send` (the source breaks the connection mid-transfer), `restore` (the
 * target fails before restoring), `dump` (the source's dump fails, after the target prepared) or,
 * with post-copy, `pages` (the source's page server is killed as soon as the target runs the job,
 * as if the source died) and `port` (another process takes the page server's port before CRIU
 * binds it, once). Ignored otherwise.
 */
async function faultFor(jobs: JobStore, jobId: string): Promise<string | undefined> {
  if (process.env.RUNBOX_FAULT_INJECTION !== '1') return undefined;
  return (await jobs.get(jobId))?.job.labels['runbox.fault'];
}

/** The shared secret that authenticates transfers between hosts (made once per Redis). */
export async function migrationSecret(redis: Redis, keys: Keys): Promise<string> {
  await redis.set(`${keys.prefix}migration-secret`, randomBytes(32).toString('hex'), 'NX');
  return (await redis.get(`${keys.prefix}migration-secret`))!;
}

const claimKey = (keys: Keys, migrationId: string) => `${keys.prefix}migration:${migrationId}`;
async function claim(redis: Redis, keys: Keys, migrationId: string, who: 'source' | 'target'): Promise<boolean> {
  return (await redis.set(claimKey(keys, migrationId), who, 'EX', 3600, 'NX')) === 'OK';
}

/** What the source holds of a job it has frozen and dumped for a move. */
interface Dumped {
  frozenAt: number;
  /** Header fields the target needs for this mode. */
  header: Pick<Header, 'mode' | 'pageServer'>;
  /** The target did not take it: the job goes on here (restored, or thawed). */
  undo(): Promise<void>;
  /** The disk image was sent (or will not be): its file system may be written again (see linkDisk). */
  releaseDisk(): Promise<void>;
  /** The target took it: settles when nothing of the job is needed here any more (an error: the page transfer failed). */
  finished: Promise<Error | undefined>;
  /** Post-copy failure injection (see faultFor). */
  signalPageServer?(signal: NodeJS.Signals): void;
}

/** Source side: moves `job` (running here) to `target`. Resolves with the timings. */
export async function migrateOut(d: MigrationDeps, entry: RunningJob, target: Host, secret: string, preference: MigrationPreference = 'auto'): Promise<MigrationResult> {
  const vps = entry.vps;
  if (!vps) throw new RunboxError('conflict', `job ${entry.jobId} has not started yet`);
  if (entry.leaving) throw new RunboxError('conflict', `job ${entry.jobId} is already moving away from ${d.hostId}`);
  if (!target.address || !target.migrationPort) throw new RunboxError('unavailable', `host ${target.id} does not accept migrations`);
  const t0 = Date.now();
  const startedAt = new Date(t0).toISOString();
  const migrationId = newId(8);
  const info = vps.info();
  const template = { name: info.spec.template.name, hash: info.spec.template.hash };
  const fault = await faultFor(d.jobs, entry.jobId);
  const record = (await d.jobs.get(entry.jobId))?.job;
  if (record && !(canCheckpoint(record.runAs, { checkpointNonRoot: d.checkpointNonRoot }) && canCheckpoint(record.runAs, target))) {
    const unable = [...(d.checkpointNonRoot ? [] : [d.hostId]), ...(target.checkpointNonRoot ? [] : [target.id])];
    throw new RunboxError('checkpoint_unsupported', nonRootMessage(entry.jobId, record.runAs!, unable));
  }
  // A pooled VPS was created with generous limits and given the job's own in its cgroup: the
  // target must recreate the job's limits, not the pool's.
  const limits = record?.limits;
  const moving: Pick<Header, 'vpsId' | 'spec' | 'network'> = {
    vpsId: vps.id,
    spec: { ...info.spec, ...(limits ? { memoryMb: limits.memoryMb, cpus: limits.cpus, pids: limits.pids } : {}), template },
    network: { mode: info.network.mode, address: info.network.address },
  };
  // The job keeps running while the target gets ready (it may build the template version first,
  // and makes the VPS's network and disk).
  const prepare: PrepareHeader = { secret, jobId: entry.jobId, prepare: { template, vps: moving } };
  const prepared = await exchange(target.address, target.migrationPort, prepare, { timeoutMs: PREPARE_TIMEOUT_MS }).catch(
    (e: unknown): Answer => ({ ok: false, code: 'unavailable', message: errorMessage(e) }),
  );
  if (!prepared.ok) {
    const code = prepared.code === 'checkpoint_incompatible' ? 'checkpoint_incompatible' : 'unavailable';
    throw new RunboxError(code, `host ${target.id} cannot take job ${entry.jobId}: ${prepared.message}; the job keeps running on ${d.hostId}`);
  }
  // From the freeze on, the job's lease may pass to the target before this host lets go of it:
  // the reconciler must not take that for another holder's (worker/job/reconcile.ts), and no
  // checkpoint may start here. It stays set once the job moved (this host is done with it).
  entry.leaving = true;
  try {
    return await moveOut(d, entry, vps, target, secret, preference, { migrationId, t0, startedAt, fault, moving, prepared });
  } catch (e) {
    if (!vps.isHandedOver) entry.leaving = false; // it goes on here
    throw e;
  }
}

async function moveOut(
  d: MigrationDeps,
  entry: RunningJob,
  vps: RuncVps,
  target: Host,
  secret: string,
  preference: MigrationPreference,
  m: { migrationId: string; t0: number; startedAt: string; fault: string | undefined; moving: Pick<Header, 'vpsId' | 'spec' | 'network'>; prepared: Answer },
): Promise<MigrationResult> {
  const { migrationId, t0, startedAt, fault, moving, prepared } = m;
  const to = { address: target.address!, port: target.migrationPort! };
  let moveStarted: { mode: MigrationMode; dir: string; dumped: Dumped };
  try {
    moveStarted = await freezeAndDump(d, entry, vps, target, preference, prepared, fault);
  } catch (e) {
    // The target made the VPS's network and disk for a move that will not come: let it go at once.
    const release: ReleaseHeader = { secret, jobId: entry.jobId, release: vps.id };
    await exchange(to.address, to.port, release, { timeoutMs: RELEASE_TIMEOUT_MS }).catch(() => undefined);
    throw e;
  }
  const { mode, dir, dumped } = moveStarted;
  try {
    const header: Header = {
      secret,
      migrationId,
      jobId: entry.jobId,
      from: d.hostId,
      ...moving,
      frozenAt: dumped.frozenAt,
      ...dumped.header,
    };
    let answer: Answer;
    try {
      answer = await exchange(to.address, to.port, header, { dir, breakMidway: fault === 'send' });
    } catch (e) {
      answer = { ok: false, code: 'unavailable', message: errorMessage(e) };
    }
    const answeredAt = Date.now();
    // Sent (or not at all): the disk may be written again, by a restore here or by the processes' end.
    await dumped.releaseDisk();
    if (!answer.ok) {
      // The target did not take it. Bring the job back here, unless the target did run it after all.
      if (await claim(d.redis, d.keys, migrationId, 'source')) {
        if ((await d.leases.get(entry.jobId))?.holder !== d.instance) {
          // Meanwhile another host recovered the job (this one looked dead): it lives there now.
          vps.handOver();
          throw new RunboxError('conflict', `migration to ${target.id} failed: ${answer.message}; the job was meanwhile taken over by another host`);
        }
        try {
          await dumped.undo();
        } catch (e) {
          // Post-copy only: CRIU ended the processes although no target has the job. Its last checkpoint is what is left.
          vps.handOver();
          void d.recover(entry.jobId, `its move to ${target.id} failed and it could not go on here (${errorMessage(e)})`);
          throw new RunboxError('unavailable', `migration to ${target.id} failed: ${answer.message}; the job is being restored from its last checkpoint`);
        }
        await d.jobs.transition(entry.jobId, 'running', {}, { from: ['migrating'], host: d.hostId, note: `migration to ${target.id} failed: ${answer.message}` });
        throw new RunboxError(answer.code === 'checkpoint_incompatible' ? 'checkpoint_incompatible' : 'unavailable', `migration to ${target.id} failed: ${answer.message}; the job keeps running on ${d.hostId}`);
      }
    }
    if (fault === 'pages') dumped.signalPageServer?.('SIGKILL'); // the source "dies" before the pages arrived
    // Post-copy: the processes here stay frozen until the target has every page; only then may they go.
    const transferError = await dumped.finished;
    if (transferError) d.log.warn({ err: transferError, jobId: entry.jobId }, 'the page transfer failed after the target resumed the job; the target restores it from its last checkpoint');
    vps.handOver();
    const result: MigrationResult = {
      from: d.hostId,
      to: target.id,
      startedAt,
      totalMs: Date.now() - t0,
      // Measured on this host's clock only (hosts' clocks may differ): freeze → the target's answer
      // (it answers once the job runs again there).
      frozenMs: answeredAt - dumped.frozenAt,
      mode,
    };
    const stored = await d.jobs.get(entry.jobId);
    if (stored) await d.jobs.update(entry.jobId, { migrations: [...stored.job.migrations, result] });
    return result;
  } finally {
    await dumped.releaseDisk().catch((e: unknown) => d.log.error({ err: e, jobId: entry.jobId }, 'thawing the disk after a move failed'));
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Picks the mode, marks the job migrating, freezes and dumps it (a failure leaves it running here). */
async function freezeAndDump(
  d: MigrationDeps,
  entry: RunningJob,
  vps: RuncVps,
  target: Host,
  preference: MigrationPreference,
  prepared: Answer,
  fault: string | undefined,
): Promise<{ mode: MigrationMode; dir: string; dumped: Dumped }> {
  const canPostCopy = d.postCopy && prepared.postCopy && !!d.address;
  if (preference === 'post-copy' && !canPostCopy) {
    const who = !d.postCopy || !d.address ? d.hostId : target.id;
    throw new RunboxError('host_unsupported', `host ${who} cannot migrate with post-copy; the job keeps running on ${d.hostId}`);
  }
  const mode: MigrationMode = preference !== 'stop-and-copy' && canPostCopy ? 'post-copy' : 'stop-and-copy';
  await d.jobs.transition(entry.jobId, 'migrating', {}, { from: ['running'], host: d.hostId, note: `to ${target.id} (${mode})` });
  const dir = await transferDir(d.engine.layout.transfersDir, `out-${entry.jobId}`);
  let dumped: Dumped;
  try {
    if (fault === 'dump') throw new RunboxError('unavailable', `injected fault: the dump failed; the job keeps running on ${d.hostId}`);
    dumped = mode === 'post-copy' ? await dumpLazily(d, vps, dir, target.address!, fault === 'port') : await dumpFully(d, vps, dir);
  } catch (e) {
    await fs.rm(dir, { recursive: true, force: true });
    await d.jobs.transition(entry.jobId, 'running', {}, { from: ['migrating'], host: d.hostId, note: `migration failed: ${errorMessage(e)}` }).catch(() => undefined);
    throw e;
  }
  return { mode, dir, dumped };
}

/** Stop-and-copy: every page in the images; a failed move restores them here. */
async function dumpFully(d: MigrationDeps, vps: RuncVps, dir: string): Promise<Dumped> {
  const dumped = await dumpForMove(d.engine, vps, dir);
  return {
    frozenAt: dumped.frozenAt,
    header: { mode: 'stop-and-copy' },
    undo: () => restore(d.engine, vps, dumped.imagesDir).then(() => undefined),
    releaseDisk: dumped.releaseDisk,
    finished: Promise.resolve(undefined),
  };
}

/**
 * Post-copy: the pages stay here in CRIU's page server; a failed move thaws the VPS here. The page
 * server serves the frozen job's memory to whoever connects first and has no authentication of its
 * own (runc 1.1 exposes no TLS), so its port is closed to all but the target (and this host, which
 * cancels through it) while it runs.
 */
async function dumpLazily(d: MigrationDeps, vps: RuncVps, dir: string, targetAddress: string, takePort = false): Promise<Dumped> {
  let pageServer: { address: string; port: number };
  let unguard: () => Promise<void>;
  let dumped: LazyDump;
  // The port is free when picked and CRIU binds it a moment later: another process may take it in
  // between. Then the dump fails cleanly (the VPS thaws) and is tried again on another port.
  for (let attempt = 1; ; attempt++) {
    pageServer = { address: d.address!, port: await freePort(d.address!) };
    unguard = await d.engine.net.guardPort(pageServer.port, [targetAddress, d.address!], (PAGES_TIMEOUT_MS + ANSWER_TIMEOUT_MS) / 1000);
    const squatter = takePort && attempt === 1 ? await occupy(pageServer) : undefined; // failure injection
    try {
      dumped = await lazyDumpForMove(d.engine, vps, dir, pageServer);
      break;
    } catch (e) {
      await unguard();
      if (attempt >= PAGE_SERVER_ATTEMPTS || !/Can't bind page server|Address already in use/.test(causeChain(e))) throw e;
      d.log.warn({ port: pageServer.port, attempt }, 'the page server port was taken before CRIU bound it; dumping again on another port');
      await fs.rm(dir, { recursive: true, force: true });
      await fs.mkdir(dir, { recursive: true });
    } finally {
      squatter?.close();
    }
  }
  void dumped.transferred.then(unguard, unguard);
  return {
    frozenAt: dumped.frozenAt,
    header: { mode: 'post-copy', pageServer },
    undo: () => dumped.cancel(),
    releaseDisk: () => dumped.releaseDisk(),
    finished: new Promise<Error | undefined>((resolve) => {
      // A page server whose target never came (or stalled) would keep the frozen VPS here forever.
      const timer = setTimeout(() => dumped.signalPageServer('SIGKILL'), PAGES_TIMEOUT_MS);
      dumped.transferred.then(
        () => resolve(undefined),
        (e: unknown) => resolve(e instanceof Error ? e : new Error(String(e))),
      ).finally(() => clearTimeout(timer));
    }),
    signalPageServer: (s) => dumped.signalPageServer(s),
  };
}

/**
 * Writes the header line and, with `dir`, the tar stream of its checkpoint; then reads the target's
 * answer line.
 */
export function exchange(host: string, port: number, header: object, o: { dir?: string; breakMidway?: boolean; timeoutMs?: number } = {}): Promise<Answer> {
  const timeoutMs = o.timeoutMs ?? ANSWER_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    const timer = setTimeout(() => sock.destroy(new Error(`no answer from ${host}:${port} within ${timeoutMs} ms`)), timeoutMs);
    let answer = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (answer += d));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(answer.split('\n')[0]!) as { ok: boolean });
      } catch {
        reject(new Error(`the target closed the connection without an answer`));
      }
    });
    sock.on('connect', () => {
      sock.write(`${JSON.stringify(header)}\n`);
      if (!o.dir) {
        sock.end();
        return;
      }
      // --sparse: the disk image is mostly holes (only what the job wrote and the file system's metadata travel).
      const tar = spawn('tar', ['--create', '--sparse', '--file', '-', '-C', o.dir, 'images', 'disk.img'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let tarErr = '';
      tar.stderr.on('data', (d: Buffer) => (tarErr = (tarErr + d.toString()).slice(-2000)));
      if (o.breakMidway) {
        tar.stdout.once('data', (chunk: Buffer) => {
          sock.write(chunk.subarray(0, 1000));
          sock.destroy(new Error('injected fault: connection broken during the transfer'));
          tar.kill();
        });
        return;
      }
      tar.stdout.pipe(sock, { end: true });
      tar.on('exit', (code) => {
        if (code !== 0) sock.destroy(new Error(`tar of the checkpoint failed (${code}): ${tarErr.trim()}`));
      });
    });
  });
}

/** Target side: accepts migrations from other hosts. */
export class MigrationServer {
  private server?: net.Server;
  port = 0;
  /**
   * VPSs prepared for moves that have not arrived yet (by `<jobId>/<source VPS id>`), with the id
   * they have here and their expiry. An arriving VPS gets an id of this host's own: the same id
   * may still be in use here (a job that left this host a moment ago can still be serving its
   * memory pages from it, post-copy, when it is moved back).
   */
  private readonly preparedVps = new Map<string, { localId: string; expiry: NodeJS.Timeout }>();

  constructor(
    private readonly d: MigrationDeps,
    private readonly secret: string,
  ) {}

  async listen(port: number): Promise<number> {
    this.server = net.createServer({ allowHalfOpen: true }, (sock) => void this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, '0.0.0.0', () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    await Promise.all([...this.preparedVps.keys()].map((id) => this.release(id)));
  }

  /** Makes the network of an incoming VPS while its job still runs on the source (see RuncEngine.prepareRestore). */
  private async prepareVps(jobId: string, vps: NonNullable<PrepareHeader['prepare']['vps']>, template: Awaited<ReturnType<MigrationServer['templateVersion']>>): Promise<void> {
    if (typeof vps?.vpsId !== 'string' || typeof vps.spec?.diskMb !== 'number') throw new RunboxError('invalid_argument', 'migration prepare header with a malformed VPS');
    const key = `${jobId}/${vps.vpsId}`;
    const localId = this.forgetPrepared(key) ?? newId();
    await this.d.engine.prepareRestore(localId, { ...vps.spec, template }, { network: vps.network.mode, diskMb: vps.spec.diskMb, address: vps.network.address });
    this.preparedVps.set(key, { localId, expiry: setTimeout(() => void this.release(key), PREPARED_TTL_MS) });
  }

  /** Stops tracking a prepared VPS (its expiry included) and returns its id here; the VPS itself stays. */
  private forgetPrepared(key: string): string | undefined {
    const had = this.preparedVps.get(key);
    clearTimeout(had?.expiry);
    this.preparedVps.delete(key);
    return had?.localId;
  }

  /** Destroys a prepared VPS whose move did not come. */
  private async release(key: string): Promise<void> {
    const vpsId = this.forgetPrepared(key);
    if (vpsId && !this.d.engine.get(vpsId)) await this.d.engine.destroy(vpsId).catch((e: unknown) => this.d.log.warn({ err: e, vpsId }, 'releasing a prepared VPS failed'));
  }

  private templateVersion(t: { name: string; hash: string }, build: boolean) {
    if (typeof t?.name !== 'string' || typeof t.hash !== 'string') throw new RunboxError('invalid_argument', 'migration header without a template');
    return ensureTemplateVersion(t.name, t.hash, {
      build,
      recipesDir: this.d.recipesDir ?? DEFAULT_RECIPES_DIR,
      templatesDir: this.d.engine.layout.templatesDir,
      stateDirs: [this.d.engine.layout.stateDir],
      log: this.d.log.child({ template: t.name }),
    });
  }

  private async accept(sock: net.Socket): Promise<void> {
    const answer = (a: object) => sock.end(`${JSON.stringify(a)}\n`);
    let dir: string | undefined;
    let header: Header | undefined;
    let localId: string | undefined;
    /** The lease's holder before this host took it for the move (given back if the move fails here). */
    let leaseFrom: string | undefined;
    let pagesStarted: Promise<LazyPages> | undefined;
    let keepDir = false;
    try {
      const { head, rest } = await readHeader(sock);
      const message = parseMessage(head);
      if (!safeEqual(message.secret, this.secret)) throw new RunboxError('invalid_argument', 'migration refused: bad secret');
      if ('release' in message) {
        // Only a VPS prepared for a move (never one that runs).
        const key = `${message.jobId}/${String(message.release)}`;
        if (this.preparedVps.has(key)) await this.release(key);
        answer({ ok: true });
        return;
      }
      if ('prepare' in message) {
        if ((await faultFor(this.d.jobs, message.jobId)) === 'prepare') throw new RunboxError('checkpoint_incompatible', 'injected fault: the target cannot have the template version');
        if (this.d.running.byId.has(message.jobId)) throw new RunboxError('conflict', `job ${message.jobId} is still leaving ${this.d.hostId}; move it here again in a moment`);
        const template = await this.templateVersion(message.prepare.template, true);
        if (message.prepare.vps) await this.prepareVps(message.jobId, message.prepare.vps, template);
        answer({ ok: true, postCopy: this.d.postCopy });
        return;
      }
      header = message;
      // The move came: its prepared VPS (if any) is create()'s now, or destroyed below on failure.
      localId = this.forgetPrepared(`${header.jobId}/${header.vpsId}`) ?? newId();
      const log = this.d.log.child({ jobId: header.jobId, vpsId: localId, migration: header.migrationId });
      // The same template content, or no restore at all (hashes name contents). Prepared already.
      const template = await this.templateVersion(header.spec.template, false);
      dir = await transferDir(this.d.engine.layout.transfersDir, `in-${header.jobId}`);
      await untar(sock, rest, dir);
      if ((await faultFor(this.d.jobs, header.jobId)) === 'restore') throw new RunboxError('internal', 'injected fault: restore on the target failed');
      const imagesDir = path.join(dir, 'images');
      const workDir = path.join(dir, 'lazy-work');
      if (header.mode === 'post-copy') {
        if (!this.d.postCopy || !this.d.engine.runc.criu || !header.pageServer) throw new RunboxError('host_unsupported', 'this host does not do post-copy migration');
        // The daemon connects to the source while the layer and netns are made (create awaits it).
        pagesStarted = startLazyPages(this.d.engine.runc.criu, { imagesDir, workDir, source: header.pageServer });
        pagesStarted.catch(() => undefined); // awaited by create, or stopped below
      }
      // A job that left this host a moment ago can still be held here (a post-copy source keeps it
      // until its last page was fetched): one host never holds a job twice.
      if (this.d.running.byId.has(header.jobId) || this.d.running.incoming.has(header.jobId)) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', `job ${header.jobId} is still leaving ${this.d.hostId}; move it here again in a moment`);
      }
      if (!(await claim(this.d.redis, this.d.keys, header.migrationId, 'target'))) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', 'the source took the job back');
      }
      // The job's lease, from exactly its source's worker: had another host recovered the job
      // meanwhile (the source looked dead), the lease is that host's and this copy must not run.
      const holder = (await this.d.leases.get(header.jobId))?.holder ?? '';
      if (instanceHost(holder) !== header.from || !(await this.d.leases.claim(header.jobId, holder, this.d.instance)).ok) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', `job ${header.jobId} is no longer held by ${header.from}`);
      }
      leaseFrom = holder;
      this.d.running.incoming.add(header.jobId);
      const vps = await this.d.engine.create(localId, { ...header.spec, template }, {
        imagesDir,
        disk: { path: path.join(dir, 'disk.img'), move: true },
        address: header.network.address,
        lazyPagesWorkDir: pagesStarted && workDir,
        lazyPagesReady: pagesStarted,
      });
      const resumedAt = Date.now();
      log.info({ frozenMs: resumedAt - header.frozenAt, mode: header.mode }, 'migrated in');
      answer({ ok: true, resumedAt });
      const pages = await pagesStarted;
      // Post-copy: the job's end counts only once every page has arrived (see afterPages).
      const gate = pages?.done.then(() => true, () => false);
      const adopted = this.d.adopt(header.jobId, vps, `migrated from ${header.from} (${header.mode})`, gate);
      if (pages) {
        // The images dir stays until every page has arrived (the lazy-pages daemon reads it).
        keepDir = true;
        void this.afterPages(pages, header, vps, adopted, dir, log);
      }
    } catch (e) {
      this.d.log.warn({ err: e, jobId: header?.jobId }, 'incoming migration failed');
      await pagesStarted?.then((p) => p.stop(), () => undefined);
      if (header) {
        if (localId) await this.d.engine.destroy(localId).catch(() => undefined);
        // The lease first, then the claim: the source takes its job back only holding its lease.
        if (leaseFrom !== undefined) await this.d.leases.claim(header.jobId, this.d.instance, leaseFrom).catch(() => undefined);
        this.d.running.incoming.delete(header.jobId);
        // Hand the claim back, so the source may bring the job back to life.
        const key = claimKey(this.d.keys, header.migrationId);
        if ((await this.d.redis.get(key)) === 'target') await this.d.redis.del(key);
      }
      answer({ ok: false, code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) });
    } finally {
      if (dir && !keepDir) await fs.rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Post-copy, once the job runs here: waits for the last page. If the source stops serving before
   * that (it died, or the network broke), the restored processes must not run on: pages that never
   * came would read as zeros. The job is then handled like one whose host crashed: its VPS here is
   * destroyed and it resumes from its last checkpoint (or ends host_lost without one).
   */
  private async afterPages(pages: LazyPages, header: Header, vps: RuncVps, adopted: Promise<void>, dir: string, log: Logger): Promise<void> {
    // A source that stalls without closing the connection (a network partition) must not leave the
    // job blocked on its page faults for good: past the deadline the daemon is stopped, a failure.
    const deadline = setTimeout(() => void pages.stop(), PAGES_TIMEOUT_MS);
    try {
      await pages.done;
      log.debug('post-copy: every page arrived');
    } catch (e) {
      log.error({ err: e }, 'post-copy: the source stopped serving memory before every page arrived; resuming the job from its last checkpoint');
      // Its supervision ends without a result and stops taking its output; then it is killed at once
      // (pages that never came read as zeros) and destroyed.
      vps.handOver();
      await vps.killAll().catch((err: unknown) => log.warn({ err }, 'killing the VPS failed'));
      await adopted.catch(() => undefined);
      await this.d.recover(header.jobId, `its source ${header.from} stopped serving its memory during a post-copy move`).catch((err: unknown) => log.error({ err }, 'recovery failed'));
    } finally {
      clearTimeout(deadline);
      await pages.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

function parseMessage(head: string): Header | PrepareHeader | ReleaseHeader {
  try {
    const m = JSON.parse(head) as unknown;
    if (m && typeof m === 'object') return m as Header | PrepareHeader | ReleaseHeader;
  } catch {
    /* below */
  }
  throw new RunboxError('invalid_argument', 'migration refused: the header is not a JSON object');
}

/** The messages of an error and its causes, one per line (CRIU's own lines are in the causes). */
function causeChain(e: unknown): string {
  const lines: string[] = [];
  for (let c: unknown = e; c !== undefined && lines.length < 10; c = c instanceof Error ? c.cause : undefined) lines.push(errorMessage(c));
  return lines.join('\n');
}

/** Failure injection: a listener on the page server's port, as another process that took it first. */
async function occupy(at: { address: string; port: number }): Promise<net.Server> {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.address, () => resolve());
  });
  return server;
}

function safeEqual(a: unknown, b: string): boolean {
  if (typeof a !== 'string') return false;
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

/** Reads up to the first newline (at most 64 KiB): the header. Returns what came after it. */
export function readHeader(sock: net.Socket): Promise<{ head: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl >= 0) {
        sock.off('data', onData);
        sock.pause();
        resolve({ head: buf.subarray(0, nl).toString('utf8'), rest: buf.subarray(nl + 1) });
      } else if (buf.length > 65536) reject(new RunboxError('invalid_argument', 'migration header too long'));
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.once('end', () => reject(new RunboxError('invalid_argument', 'connection ended before the migration header')));
  });
}

/** Extracts the rest of the stream into `dir` (only the two expected entries). */
export function untar(sock: net.Socket, first: Buffer, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const tar = spawn('tar', ['--extract', '--file', '-', '-C', dir, '--no-same-owner', 'images', 'disk.img'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    tar.stderr.on('data', (d) => (err += d));
    tar.on('exit', (code) => (code === 0 ? resolve() : reject(new RunboxError('invalid_argument', `receiving the checkpoint failed: ${err.trim()}`))));
    tar.stdin.on('error', () => undefined);
    tar.stdin.write(first);
    sock.pipe(tar.stdin);
    sock.resume();
  });
}

export type { Job };
