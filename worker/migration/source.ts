import fs from 'node:fs/promises';
import { canCheckpoint, nonRootMessage } from '../../core/checkpointable.js';
import { errorMessage, RunboxError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import type { Host } from '../../core/store/hosts.js';
import { dumpForMove, restore } from '../../runtime/checkpoint/checkpoint.js';
import { freePort, lazyDumpForMove, type LazyDump } from '../../runtime/checkpoint/lazy.js';
import { transferDir } from '../../runtime/gc.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { RunningJob } from '../running.js';
import { claim } from './claim.js';
import type { MigrationDeps, MigrationPreference, MigrationResult } from './deps.js';
import { NoFaults, occupy, type FaultStep } from './faults.js';
import { ANSWER_TIMEOUT_MS, checkpointFiles, PAGES_TIMEOUT_MS, seal, type Answer, type MigrationMode, type Move, type Moving } from './protocol.js';
import { request } from './transport.js';

/**
 * Source side of a live migration:
 *
 *   prepare (the job keeps running) → freeze → drain output → CRIU dump → sync and link the disk
 *   image → connect to the target (mutual TLS) → move line + the checkpoint's files → its answer
 *
 * A failure before the target took the job leaves it running here (restored, or thawed).
 */

/** A failed move's note to the target that its prepared VPS is not needed (best effort). */
const RELEASE_TIMEOUT_MS = 10_000;
/** Post-copy: dumps tried when the page server's port was taken before CRIU bound it. */
const PAGE_SERVER_ATTEMPTS = 3;
/** A target may have to build a template version first (a minute or two for a Debian one). */
const PREPARE_TIMEOUT_MS = 600_000;

/** What the source holds of a job it has frozen and dumped for a move. */
interface Dumped {
  frozenAt: number;
  /** Fields the target needs for this mode. */
  header: Pick<Move, 'mode' | 'pageServer'>;
  /** The target did not take it: the job goes on here (restored, or thawed). */
  undo(): Promise<void>;
  /** The disk image was sent (or will not be): its file system may be written again (see linkDisk). */
  releaseDisk(): Promise<void>;
  /** The target took it: settles when nothing of the job is needed here any more (an error: the page transfer failed). */
  finished: Promise<Error | undefined>;
  /** Post-copy failure injection (see faults.ts). */
  signalPageServer?(signal: NodeJS.Signals): void;
}

interface MoveState {
  migrationId: string;
  t0: number;
  startedAt: string;
  fault: FaultStep | undefined;
  moving: Moving;
  prepared: Answer;
}

/** Source side: moves `job` (running here) to `target`. Resolves with the timings. */
export async function migrateOut(d: MigrationDeps, entry: RunningJob, target: Host, preference: MigrationPreference = 'auto'): Promise<MigrationResult> {
  const vps = entry.vps;
  if (!vps) throw new RunboxError('conflict', `job ${entry.jobId} has not started yet`);
  if (entry.leaving) throw new RunboxError('conflict', `job ${entry.jobId} is already moving away from ${d.hostId}`);
  if (!target.address || !target.migrationPort) throw new RunboxError('unavailable', `host ${target.id} does not accept migrations`);
  d.sender?.warm();
  const t0 = Date.now();
  const startedAt = new Date(t0).toISOString();
  const migrationId = newId(8);
  const info = vps.info();
  const template = { name: info.spec.template.name, hash: info.spec.template.hash };
  const fault = await (d.faults ?? NoFaults).at(entry.jobId);
  const record = (await d.jobs.get(entry.jobId))?.job;
  if (record && !(canCheckpoint(record.runAs, { checkpointNonRoot: d.checkpointNonRoot }) && canCheckpoint(record.runAs, target))) {
    const unable = [...(d.checkpointNonRoot ? [] : [d.hostId]), ...(target.checkpointNonRoot ? [] : [target.id])];
    throw new RunboxError('checkpoint_unsupported', nonRootMessage(entry.jobId, record.runAs!, unable));
  }
  // A pooled VPS was created with generous limits and given the job's own in its cgroup: the
  // target must recreate the job's limits, not the pool's.
  const limits = record?.limits ?? info.spec;
  const { hostname, network, diskMb } = info.spec;
  const moving: Moving = {
    vpsId: vps.id,
    spec: { template, hostname, network, diskMb, memoryMb: limits.memoryMb, cpus: limits.cpus, pids: limits.pids },
    network: { mode: info.network.mode, ...(info.network.address ? { address: info.network.address } : {}) },
  };
  // The job keeps running while the target gets ready (it may build the template version first,
  // and makes the VPS's network).
  const prepare = seal({ kind: 'prepare', jobId: entry.jobId, migrationId, template, vps: moving }, { from: d.hostId, to: target.id });
  const prepared = await request(d.credentials, target, prepare, { timeoutMs: PREPARE_TIMEOUT_MS }).catch(
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
    return await moveOut(d, entry, vps, target, preference, { migrationId, t0, startedAt, fault, moving, prepared });
  } catch (e) {
    if (!vps.isHandedOver) entry.leaving = false; // it goes on here
    throw e;
  }
}

async function moveOut(d: MigrationDeps, entry: RunningJob, vps: RuncVps, target: Host, preference: MigrationPreference, m: MoveState): Promise<MigrationResult> {
  const { migrationId, t0, startedAt, fault, moving, prepared } = m;
  const route = { from: d.hostId, to: target.id };
  let moveStarted: { mode: MigrationMode; dir: string; dumped: Dumped };
  try {
    moveStarted = await freezeAndDump(d, entry, vps, target, preference, prepared, fault);
  } catch (e) {
    // The target made the VPS's network for a move that will not come: let it go at once.
    const release = seal({ kind: 'release', jobId: entry.jobId, migrationId, vpsId: vps.id }, route);
    await request(d.credentials, target, release, { timeoutMs: RELEASE_TIMEOUT_MS }).catch(() => undefined);
    throw e;
  }
  const { mode, dir, dumped } = moveStarted;
  try {
    const move = seal({ kind: 'move', jobId: entry.jobId, migrationId, ...moving, frozenAt: dumped.frozenAt, ...dumped.header }, route);
    let answer: Answer;
    try {
      const send = { files: checkpointFiles(dir, moving.spec), breakMidway: fault === 'send', timeoutMs: ANSWER_TIMEOUT_MS };
      answer = await (d.sender ? d.sender.send(d.credentials, target, move, send) : request(d.credentials, target, move, send));
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
  fault: FaultStep | undefined,
): Promise<{ mode: MigrationMode; dir: string; dumped: Dumped }> {
  const mismatch = runtimeMismatch(d.engine.ociRuntime.kind, prepared.runtime) ?? usernsMismatch(await d.engine.usernsEnabled(), prepared.userns);
  if (mismatch) throw new RunboxError('checkpoint_incompatible', `host ${target.id}: ${mismatch}; the job keeps running on ${d.hostId}`);
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

/** The messages of an error and its causes, one per line (CRIU's own lines are in the causes). */
function causeChain(e: unknown): string {
  const lines: string[] = [];
  for (let c: unknown = e; c !== undefined && lines.length < 10; c = c instanceof Error ? c.cause : undefined) lines.push(errorMessage(c));
  return lines.join('\n');
}

/**
 * Why a VPS of this host cannot move to a target that does (not) give VPSs user namespaces, or
 * undefined: CRIU restores a VPS's user namespace with the VPS (or none), and a host runs its VPSs
 * one way. A host that does not say has none (older hosts).
 */
export function usernsMismatch(ours: boolean, theirs: boolean | undefined): string | undefined {
  const has = (v: boolean) => (v ? 'in user namespaces' : 'without user namespaces');
  return ours === (theirs ?? false) ? undefined : `it runs its VPSs ${has(theirs ?? false)}, this host ${has(ours)}, and a VPS cannot move between them (RUNBOX_USERNS)`;
}

/**
 * Why a VPS of this host's OCI runtime cannot move to a target of `theirs`, or undefined: runc and
 * crun name a VPS's external mounts differently in its CRIU images, and the other runtime cannot
 * restore them ("No mapping for … mountpoint"). A host that does not say runs runc (older hosts).
 */
export function runtimeMismatch(ours: 'runc' | 'crun' | undefined, theirs: 'runc' | 'crun' | undefined): string | undefined {
  const [a, b] = [ours ?? 'runc', theirs ?? 'runc'];
  return a === b ? undefined : `it runs its VPSs with ${b}, this host with ${a}, and a VPS cannot move between them (RUNBOX_RUNTIME)`;
}
