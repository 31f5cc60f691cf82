import fsSync, { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { exec, execOk } from '../exec.js';
import { checkpointArgs, pauseArgs, restoreArgs, resumeArgs, runcDelete, runcState } from '../oci/runc.js';
import { readInitRef, within, type RuncEngine } from '../runc-engine.js';
import type { RuncVps } from '../runc-vps.js';
import { next } from '../state.js';
import { saveNetnsConfig } from '../net/netns-config.js';
import { allocatedBytes, freezeLayer } from '../storage/layer.js';
import { copySparse } from '../native/sys.js';

export interface CheckpointInfo {
  imagePath: string;
  leaveRunning: boolean;
  sizeBytes: number;
  durationMs: number;
  createdAt: string;
}

/**
 * Checkpoints a VPS with CRIU through `runc checkpoint`.
 *
 * What makes this work (see HOST-NOTES): every process is a descendant of the agent (PID 1), the
 * agent's stdio are real pipes (runc records them in descriptors.json and maps new pipes onto
 * them at restore), image and work paths are absolute, and criu runs with CRIU_FAULT=130 (the
 * wrapper installed by setup) because these VMs do not deliver hardware breakpoints.
 *
 * Without `leaveRunning` the VPS's processes end after the dump; the VPS keeps its layer and
 * network so that `restore` can bring it back on this host.
 */
export async function checkpoint(engine: RuncEngine, vps: RuncVps, opts: { leaveRunning: boolean; name?: string }): Promise<CheckpointInfo> {
  next('checkpoint', vps.state);
  if (!engine.runc.criu) throw new RunboxError('host_unsupported', 'no criu configured (RUNBOX_CRIU)');
  const p = engine.layout.vps(vps.id);
  const imagePath = path.join(p.checkpoints, opts.name ?? `${Date.now()}`);
  const workPath = `${imagePath}.work`;
  await fs.mkdir(imagePath, { recursive: true });
  await fs.mkdir(workPath, { recursive: true });
  const t0 = Date.now();
  const old = vps.channel;
  if (!opts.leaveRunning) {
    // Frozen first, and the output pipe read empty: CRIU would otherwise take what is still in it
    // into its images and not give it back to the restored VPS's new pipe.
    await execOk(pauseArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
    vps.beginSwap();
    await old.drained();
  }
  try {
    const stdio = agentStdio(vps);
    await execOk(checkpointArgs(engine.runc, vps.id, { imagePath, workPath, leaveRunning: opts.leaveRunning }), { timeoutMs: 120_000 });
    await writeDescriptors(imagePath, stdio);
  } catch (e) {
    if (!opts.leaveRunning) {
      vps.endSwap(undefined);
      await exec(resumeArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
    }
    await fs.rm(imagePath, { recursive: true, force: true });
    throw await dumpError(`checkpoint of VPS ${vps.id} failed`, workPath, e);
  } finally {
    await fs.rm(workPath, { recursive: true, force: true });
  }
  // Read the old pipe to its end: output the agent wrote just before the dump is not lost.
  if (!opts.leaveRunning) await within(old.whenClosed(), 5000);
  return { imagePath, leaveRunning: opts.leaveRunning, sizeBytes: await dirSize(imagePath), durationMs: Date.now() - t0, createdAt: new Date(t0).toISOString() };
}

/** Restores a checkpointed VPS on this host, in its own bundle, with fresh agent pipes. */
export async function restore(engine: RuncEngine, vps: RuncVps, imagePath: string): Promise<{ durationMs: number }> {
  const p = engine.layout.vps(vps.id);
  const workPath = `${imagePath}.restore-work`;
  await fs.mkdir(workPath, { recursive: true });
  // Never two live copies: a restore onto a VPS whose processes still run is refused; a stopped
  // container of the same id (its processes died) is removed first.
  const existing = await runcState(engine.runc, vps.id);
  if (existing && existing.status !== 'stopped') {
    throw new RunboxError('conflict', `VPS ${vps.id} is still ${existing.status}; refusing to restore a second copy`);
  }
  if (existing) await runcDelete(engine.runc, vps.id, false);
  const t0 = Date.now();
  vps.beginSwap();
  try {
    await engine.startRestored(vps, restoreArgs(engine.runc, vps.id, { bundle: p.bundle, pidFile: p.pidFile, imagePath, workPath }), { pidFile: p.pidFile, workPath, imagesDir: imagePath });
  } catch (e) {
    vps.endSwap(undefined);
    throw new RunboxError('internal', `restore of VPS ${vps.id} failed${await criuErrors(workPath, 'restore.log')}`, { cause: e });
  } finally {
    await fs.rm(workPath, { recursive: true, force: true });
  }
  const record = await engine.readRecord(vps.id);
  if (record) {
    record.init = await readInitRef(p.pidFile);
    vps.initPid = record.init?.pid;
    await engine.writeRecord(record);
  }
  return { durationMs: Date.now() - t0 };
}

/** Printed on every run in sandboxes without CAP_SYS_RESOURCE, with no effect (HOST-NOTES). */
const HARMLESS_CRIU_ERRORS = /Can't setup RLIMIT_NOFILE/;

/** The end of a CRIU log that is read (a restore of hostile images can make CRIU log a lot). */
const CRIU_LOG_TAIL = 1024 * 1024;
const CRIU_LINE_MAX = 200;

/**
 * The error lines of a CRIU log (runc's own message only says "criu failed: type NOTIFY" and names
 * a log file inside the work dir, which is removed right after), as a suffix for an error message.
 * They reach tenants (job errors, problem details) and carry what the VPS or the images chose
 * (file names, socket paths): only the log's tail is read, without following a symlink, and each
 * line is cut short and stripped of control characters.
 */
export async function criuErrors(workPath: string, logName: string): Promise<string> {
  const text = await readTail(path.join(workPath, logName), CRIU_LOG_TAIL).catch(() => '');
  const errors = text
    .split('\n')
    .filter((l) => /\bError\b/.test(l) && !HARMLESS_CRIU_ERRORS.test(l))
    .map((l) => sanitizeLine(l.replace(/^\([\d.]+\)\s*/, '').trim()));
  return errors.length ? `: ${errors.slice(0, 5).join('; ')}` : '';
}

/** One log line fit for a message: printable ASCII only (others as '?'), at most CRIU_LINE_MAX characters. */
export function sanitizeLine(line: string): string {
  const clean = line.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > CRIU_LINE_MAX ? `${clean.slice(0, CRIU_LINE_MAX)}…` : clean;
}

/** The last `max` bytes of a regular file (not through a symlink, never blocking on a FIFO). */
async function readTail(file: string, max: number): Promise<string> {
  const fh = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) return '';
    const len = Math.min(st.size, max);
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, st.size - len);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * A failed dump as the error it is, with CRIU's own lines. A process of a non-root user on a host
 * whose root lacks CAP_SYS_RESOURCE (CRIU: "Can't get rlimit 0: Operation not permitted") is no
 * infrastructure failure: this host cannot checkpoint that job (core/checkpointable.ts).
 */
export async function dumpError(what: string, workPath: string, cause: unknown): Promise<RunboxError> {
  const lines = await criuErrors(workPath, 'dump.log');
  if (/Can't get rlimit/.test(lines)) {
    return new RunboxError('checkpoint_unsupported', `${what}: a process of the VPS runs as a non-root user, and this host cannot checkpoint those (its root lacks CAP_SYS_RESOURCE)${lines}`, { cause });
  }
  return new RunboxError('internal', `${what}${lines}`, { cause });
}

/** The VPS's own network configuration, read while it is frozen (alongside the dump: no extra pause). */
export async function saveNetwork(vps: RuncVps, imagesDir: string): Promise<void> {
  const { netns, address, gateway } = vps.info().network;
  if (netns) await saveNetnsConfig(netns, { address, gateway }, imagesDir);
}

/** The agent's stdin, stdout and stderr as /proc shows them (`pipe:[inode]`); the VPS is frozen. */
export function agentStdio(vps: RuncVps): string[] | undefined {
  const pid = vps.initPid;
  if (!pid) return undefined;
  try {
    return [0, 1, 2].map((fd) => fsSync.readlinkSync(`/proc/${pid}/fd/${fd}`));
  } catch {
    return undefined;
  }
}

/**
 * descriptors.json names the pipes a restore puts new ones in place of (runc --inherit-fd). runc
 * writes it from its own record of the container's stdio, which is what the criu process it
 * started had as fds 0-2 at one moment of its start: a wrapper that redirected one of them for a
 * builtin just then made that record wrong, and every later restore left the agent's stdin
 * connected to nothing. runbox writes it from the agent's actual fds instead.
 */
export async function writeDescriptors(imagesDir: string, stdio: string[] | undefined): Promise<void> {
  if (!stdio || !stdio.every((d) => /^pipe:\[\d+\]$/.test(d))) return;
  await fs.writeFile(path.join(imagesDir, 'descriptors.json'), JSON.stringify(stdio), { mode: 0o600 });
}

/**
 * Runs CRIU's dump and the network capture side by side and waits for both: a failed capture
 * must never let the caller resume (or give up on) a VPS while CRIU is still dumping it. A dump
 * that failed is thrown as such; a capture that failed after a good dump is thrown only when
 * `captureRequired` (a dump that killed its processes must go on to its images instead).
 */
export async function dumpWithNetwork(dump: () => Promise<unknown>, vps: RuncVps, imagesDir: string, o: { captureRequired: boolean; log?: Logger }): Promise<void> {
  const stdio = agentStdio(vps); // before CRIU runs: a dump that ends the processes takes their fds along
  const [d, n] = await Promise.allSettled([dump(), saveNetwork(vps, imagesDir)]);
  if (d.status === 'rejected') throw d.reason;
  await writeDescriptors(imagesDir, stdio);
  if (n.status === 'rejected') {
    if (o.captureRequired) throw n.reason;
    o.log?.warn({ err: n.reason, vpsId: vps.id }, "the VPS's network configuration could not be read: it moves with its base network only");
  }
}

async function dirSize(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    total += e.isDirectory() ? await dirSize(full) : (await fs.stat(full)).size;
  }
  return total;
}

export interface SnapshotResult {
  /** From the moment the VPS stopped executing to the moment it ran again. */
  frozenMs: number;
  durationMs: number;
  imagesBytes: number;
  /** Bytes the disk image copy takes (sparse: what the job wrote plus the file system's metadata). */
  diskBytes: number;
}

/**
 * A consistent checkpoint of a running VPS that keeps running: the VPS is paused (cgroup freezer),
 * CRIU dumps it with --leave-running, its disk is synced and copied (sparse) while still paused
 * (so memory and files are of the same instant), then it resumes.
 */
export async function snapshot(engine: RuncEngine, vps: RuncVps, out: { imagesDir: string; diskImage: string }): Promise<SnapshotResult> {
  next('checkpoint', vps.state);
  if (!engine.runc.criu) throw new RunboxError('host_unsupported', 'no criu configured (RUNBOX_CRIU)');
  const p = engine.layout.vps(vps.id);
  const workPath = `${out.imagesDir}.work`;
  await fs.mkdir(workPath, { recursive: true });
  const t0 = Date.now();
  await execOk(pauseArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
  const frozenAt = Date.now();
  let resumedAt = frozenAt;
  try {
    await dumpWithNetwork(() => execOk(checkpointArgs(engine.runc, vps.id, { imagePath: out.imagesDir, workPath, leaveRunning: true }), { timeoutMs: 120_000 }), vps, out.imagesDir, { captureRequired: true });
    const thaw = await freezeLayer(p);
    try {
      await copySparse(p.image, out.diskImage);
    } finally {
      await thaw();
    }
  } catch (e) {
    throw await dumpError(`checkpoint of VPS ${vps.id} failed`, workPath, e);
  } finally {
    const resumed = await exec(resumeArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
    resumedAt = Date.now();
    if (resumed.code !== 0) {
      // eslint-disable-next-line no-unsafe-finally -- a VPS left frozen must be reported, whatever else failed
      throw new RunboxError('internal', `VPS ${vps.id} could not be resumed after its checkpoint: ${resumed.stderr.trim()}`);
    }
    await fs.rm(workPath, { recursive: true, force: true });
  }
  return {
    frozenMs: resumedAt - frozenAt,
    durationMs: Date.now() - t0,
    imagesBytes: await dirSize(out.imagesDir),
    diskBytes: await allocatedBytes(out.diskImage),
  };
}

/**
 * Stop-and-copy, source side: freezes the VPS, dumps it with CRIU (its processes end after the
 * dump) and puts its disk image beside the CRIU images, into `outDir`/{images,disk.img}. The VPS's
 * channel is read to its end first, so every byte of output the job wrote before the freeze has
 * been delivered to the caller's run() listener. Returns the moment the VPS stopped executing.
 *
 * If a later step of the move fails, `restore(engine, vps, imagesDir)` brings the job back here.
 */
export async function dumpForMove(
  engine: RuncEngine,
  vps: RuncVps,
  outDir: string,
): Promise<{ frozenAt: number; imagesDir: string; diskImage: string; releaseDisk: () => Promise<void> }> {
  const { imagesDir, workPath, old, frozenAt } = await freezeForMove(engine, vps, outDir);
  try {
    // CRIU would take output still in the pipe into its images and not hand it back: read it first.
    await old.drained();
    await dumpWithNetwork(() => execOk(checkpointArgs(engine.runc, vps.id, { imagePath: imagesDir, workPath, leaveRunning: false }), { timeoutMs: 120_000 }), vps, imagesDir, {
      captureRequired: false,
      log: engine.opts.log,
    });
  } catch (e) {
    vps.endSwap(undefined);
    await exec(resumeArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
    throw await dumpError(`dump of VPS ${vps.id} failed; it keeps running here`, workPath, e);
  } finally {
    await fs.rm(workPath, { recursive: true, force: true });
  }
  await within(old.whenClosed(), 5000);
  const { diskImage, releaseDisk } = await linkDisk(engine, vps, outDir);
  return { frozenAt, imagesDir, diskImage, releaseDisk };
}

/**
 * The VPS's disk image as `outDir`/disk.img, once nothing in the VPS runs any more (its processes
 * dumped, or frozen until their pages are fetched): its file system frozen (freezeLayer), then the
 * image hard-linked (no copy: it cannot change until `releaseDisk`, which the caller calls once it
 * was sent, and before a failed move goes on with the very same disk here).
 */
export async function linkDisk(engine: RuncEngine, vps: RuncVps, outDir: string): Promise<{ diskImage: string; releaseDisk: () => Promise<void> }> {
  const p = engine.layout.vps(vps.id);
  const diskImage = path.join(outDir, 'disk.img');
  const releaseDisk = await freezeLayer(p);
  try {
    await fs.link(p.image, diskImage);
  } catch (e) {
    await releaseDisk();
    throw e;
  }
  return { diskImage, releaseDisk };
}

/**
 * The first steps of every move, either mode: the paths under `outDir`, then the VPS frozen and its
 * output channel put aside (the caller reads it empty before dumping: CRIU would keep what is still
 * in the pipe in its images and not hand it back).
 */
export async function freezeForMove(engine: RuncEngine, vps: RuncVps, outDir: string) {
  next('checkpoint', vps.state);
  if (!engine.runc.criu) throw new RunboxError('host_unsupported', 'no criu configured (RUNBOX_CRIU)');
  const imagesDir = path.join(outDir, 'images');
  const workPath = path.join(outDir, 'dump-work');
  await fs.mkdir(imagesDir, { recursive: true });
  await fs.mkdir(workPath, { recursive: true });
  const old = vps.channel;
  await execOk(pauseArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
  const frozenAt = Date.now();
  vps.beginSwap();
  return { imagesDir, workPath, old, frozenAt };
}
