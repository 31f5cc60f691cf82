import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { isRunboxError, RunboxError } from '../../core/errors.js';
import { exec, execOk, start, type ExecResult } from '../exec.js';
import { checkpointArgs, lazyCriuOptions, lazyPagesArgs, resumeArgs } from '../oci/runc.js';
import { pipe2 } from '../native/pipe.js';
import { within, type RuncEngine } from '../runc-engine.js';
import type { RuncVps } from '../runc-vps.js';
import { criuErrors, dumpError, dumpWithNetwork, freezeForMove, linkDisk } from './checkpoint.js';

/**
 * Post-copy (lazy pages) with CRIU: the source dumps everything but the memory pages and keeps
 * them in its page server; the target restores at once and its `criu lazy-pages` daemon fetches
 * each page from the source as the restored processes touch it (userfaultfd), then the rest in the
 * background. The pause no longer includes copying the memory, on either side.
 *
 * Needs userfaultfd and a CRIU that has lazy-pages (`criu check --feature uffd-noncoop`), and
 * fs.pipe-max-size ≥ 4 MiB: the page server grows a pipe to 819 pages, which the kernel rounds up
 * to 4 MiB; without CAP_SYS_RESOURCE (these sandboxes) that fails with EPERM above the limit, CRIU
 * ignores the error and every transfer then dies with "page-pipe: splice: -1: Bad file descriptor
 * ... Lazy pages transfer FAILED".
 */
export const PIPE_MAX_SIZE_NEEDED = 4 * 1024 * 1024;
const PIPE_MAX_SIZE = '/proc/sys/fs/pipe-max-size';

export interface PostCopySupport {
  ok: boolean;
  detail: string;
}

/** Whether this host can migrate with post-copy; raises fs.pipe-max-size when `fix` (root). */
export async function postCopySupport(criu: string | undefined, fix: boolean, o: { userns?: boolean } = {}): Promise<PostCopySupport> {
  if (!criu) return { ok: false, detail: 'no criu configured' };
  if (o.userns) {
    const refusal = usernsPostCopyRefusal((await fs.readFile(UNPRIVILEGED_USERFAULTFD, 'utf8').catch(() => '0')).trim());
    if (refusal) return { ok: false, detail: refusal };
  }
  const uffd = await exec([criu, 'check', '--feature', 'uffd-noncoop'], { timeoutMs: 30_000 }).catch(() => undefined);
  if (!uffd || uffd.code !== 0) return { ok: false, detail: `criu check --feature uffd-noncoop: ${(uffd?.stdout + (uffd?.stderr ?? '')).trim().split('\n')[0] || 'failed'}` };
  const current = Number((await fs.readFile(PIPE_MAX_SIZE, 'utf8').catch(() => '0')).trim());
  if (current >= PIPE_MAX_SIZE_NEEDED) return { ok: true, detail: `userfaultfd supported; fs.pipe-max-size ${current}` };
  if (fix) {
    try {
      await fs.writeFile(PIPE_MAX_SIZE, String(PIPE_MAX_SIZE_NEEDED));
      return { ok: true, detail: `userfaultfd supported; fs.pipe-max-size raised from ${current} to ${PIPE_MAX_SIZE_NEEDED}` };
    } catch (e) {
      return { ok: false, detail: `fs.pipe-max-size is ${current} and cannot be raised to ${PIPE_MAX_SIZE_NEEDED}: ${(e as Error).message}` };
    }
  }
  return { ok: false, detail: `fs.pipe-max-size is ${current}; CRIU's page server needs ${PIPE_MAX_SIZE_NEEDED}` };
}

const UNPRIVILEGED_USERFAULTFD = '/proc/sys/vm/unprivileged_userfaultfd';

/**
 * Why a host whose VPSs have user namespaces cannot restore them lazily (undefined: it can). CRIU
 * opens the restored VPS's userfaultfd in the VPS's processes, which hold no capability of the
 * host's user namespace: the kernel refuses them unless vm.unprivileged_userfaultfd is 1 (CRIU:
 * "uffd: Unable to open an userfaultfd descriptor: Operation not permitted"). runbox does not set
 * it: it would hand every process of the host, jobs included, userfaultfd on kernel faults, a
 * well-known aid to kernel exploits. Moves then stop and copy.
 */
export function usernsPostCopyRefusal(unprivilegedUserfaultfd: string): string | undefined {
  if (unprivilegedUserfaultfd === '1') return undefined;
  return 'VPSs run in user namespaces, where CRIU can restore lazily only with vm.unprivileged_userfaultfd=1 (it is ' +
    `${unprivilegedUserfaultfd || 'unknown'}; runbox leaves it so): moves stop and copy`;
}

/** A port free on `address` right now, for a page server (CRIU binds it a moment later). */
export async function freePort(address: string): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, address, () => resolve());
  });
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export interface LazyDump {
  /** The moment the VPS stopped executing here. */
  frozenAt: number;
  /** CRIU images without the memory pages, plus the VPS's network configuration. */
  imagesDir: string;
  /** The VPS's disk image (a hard link: see linkDisk), unchangeable until releaseDisk. */
  diskImage: string;
  releaseDisk(): Promise<void>;
  /**
   * Settles when the page server stops: resolves once the target has every page (the processes
   * here have ended then), rejects when the transfer failed (the target lost its source).
   */
  transferred: Promise<void>;
  /**
   * Before the target has restored (nothing fetched yet): stops the page server and thaws the VPS
   * here, where it goes on with its own memory. Resolves once it runs again.
   */
  cancel(): Promise<void>;
  /** Signals the page server's process group (SIGKILL: a target that never finishes; failure injection). */
  signalPageServer(signal: NodeJS.Signals): void;
}

/**
 * Post-copy, source side: freezes the VPS, reads its output pipe empty (as dumpForMove does), dumps
 * it with `--lazy-pages` and a page server on `listen`, links its disk image, and returns while the
 * page server waits for the target. Its processes stay frozen here until the target has fetched
 * every page (then they end) or `cancel()` thaws them.
 */
export async function lazyDumpForMove(engine: RuncEngine, vps: RuncVps, outDir: string, listen: { address: string; port: number }): Promise<LazyDump> {
  const { imagesDir, workPath, old, frozenAt } = await freezeForMove(engine, vps, outDir);
  const thawHere = async () => {
    vps.endSwap(undefined);
    const r = await exec(resumeArgs(engine.runc, vps.id), { timeoutMs: 30_000 });
    if (r.code !== 0) throw new RunboxError('internal', `VPS ${vps.id} could not be resumed: ${r.stderr.trim()}`);
  };
  let dump: ReturnType<typeof start> | undefined;
  let disk: { diskImage: string; releaseDisk: () => Promise<void> } | undefined;
  try {
    await old.drained();
    // A real pipe for CRIU's status byte: runc refuses the socket Node would make ("not writable").
    const status = pipe2();
    const options = { imagePath: imagesDir, workPath, leaveRunning: false, lazy: { pageServer: `${listen.address}:${listen.port}`, statusFd: 3 } };
    let plainCriuConfig: (() => Promise<void>) | undefined;
    try {
      plainCriuConfig = await engine.setCriuOptions(vps.id, lazyCriuOptions(options)); // crun: no flags for these
      dump = start(checkpointArgs(engine.runc, vps.id, options), { stdio: ['ignore', 'pipe', 'pipe', status.write], group: true });
    } finally {
      fsSync.closeSync(status.write);
      if (!dump) {
        fsSync.closeSync(status.read);
        await plainCriuConfig?.();
      }
    }
    const statusPipe = new net.Socket({ fd: status.read, readable: true, writable: false });
    try {
      const started = dump;
      await dumpWithNetwork(() => pageServerReady(statusPipe, started.result, workPath), vps, imagesDir, { captureRequired: false, log: engine.opts.log });
    } finally {
      statusPipe.destroy();
      await plainCriuConfig?.();
    }
    disk = await linkDisk(engine, vps, outDir);
  } catch (e) {
    if (dump) await stopPageServer(dump, listen);
    await thawHere();
    if (isRunboxError(e, 'checkpoint_unsupported')) throw e;
    throw new RunboxError('internal', `lazy dump of VPS ${vps.id} failed; it keeps running here`, { cause: e });
  }
  const running = dump;
  const transferred = running.result.then(async (r) => {
    if (r.code !== 0) throw new RunboxError('unavailable', `the page transfer of VPS ${vps.id} failed (runc ${r.code ?? r.signal})${await criuErrors(workPath, 'dump.log')}`);
    await within(old.whenClosed(), 5000); // the processes ended after the last page
  });
  transferred.catch(() => undefined); // observed by the caller, or deliberately ignored after cancel()
  return {
    frozenAt,
    imagesDir,
    diskImage: disk.diskImage,
    releaseDisk: disk.releaseDisk,
    transferred,
    cancel: async () => {
      await disk.releaseDisk();
      await stopPageServer(running, listen);
      await thawHere();
    },
    signalPageServer: (signal) => running.signal(signal),
  };
}

/** Waits for CRIU's status byte (page server listening), or fails with CRIU's errors when it exits first. */
async function pageServerReady(status: Readable, exited: Promise<ExecResult>, workPath: string): Promise<void> {
  const ready = new Promise<'ready'>((resolve) => status.once('data', () => resolve('ready')));
  const outcome = await Promise.race([ready, exited]);
  if (outcome !== 'ready') {
    const runc = outcome.stderr.trim().split('\n').at(-1) ?? '';
    throw await dumpError(`runc checkpoint --lazy-pages ended before its page server was ready (${runc})`, workPath, undefined);
  }
}

/**
 * Ends a page server no target has used, so that CRIU undoes its dump the regular way (network
 * unlocked, tasks left alive, runc keeps the container). Careful: a connection that just closes is
 * "Lazy pages transfer finished successfully" to CRIU, which then kills the VPS's processes, pages
 * never sent. A request CRIU cannot parse is a failed transfer instead. A page server that does not
 * end so is killed.
 */
async function stopPageServer(dump: ReturnType<typeof start>, listen: { address: string; port: number }): Promise<void> {
  await new Promise<void>((resolve) => {
    // 24 bytes: one page_server_iov {cmd, nr_pages, vaddr, dst_id} with a command CRIU does not know.
    const bogus = Buffer.alloc(24);
    bogus.writeUInt32LE(0xdead, 0);
    const sock = net.connect({ host: listen.address, port: listen.port }, () => sock.end(bogus));
    sock.on('error', () => resolve());
    sock.on('close', () => resolve());
  });
  const ended = await Promise.race([dump.result.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 10_000))]);
  if (!ended) {
    dump.signal('SIGKILL');
    await dump.result;
  }
}

export interface LazyPages {
  /** Its work dir: `runc restore --lazy-pages --work-path` must name it (lazy-pages.socket). */
  workDir: string;
  /** Resolves when every page has arrived; rejects when the source stopped serving before that. */
  done: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Post-copy, target side: starts `criu lazy-pages` for images received from a source whose page
 * server listens on `source`, and resolves once its socket is there for the restore.
 */
export async function startLazyPages(criu: string, o: { imagesDir: string; workDir: string; source: { address: string; port: number } }): Promise<LazyPages> {
  await fs.mkdir(o.workDir, { recursive: true });
  const daemon = start(lazyPagesArgs(criu, { imagesDir: o.imagesDir, workDir: o.workDir, address: o.source.address, port: o.source.port }), { group: true });
  const done = daemon.result.then(async (r) => {
    if (r.code !== 0) throw new RunboxError('unavailable', `criu lazy-pages failed (${r.code ?? r.signal})${await criuErrors(o.workDir, 'lazy-pages.log')}`);
  });
  done.catch(() => undefined);
  const stop = async () => {
    daemon.signal('SIGKILL');
    await daemon.result.catch(() => undefined);
  };
  const socket = path.join(o.workDir, 'lazy-pages.socket');
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (await fs.stat(socket).then(() => true, () => false)) return { workDir: o.workDir, done, stop };
    if (daemon.child.exitCode !== null || daemon.child.signalCode !== null || Date.now() > deadline) {
      await stop();
      await done; // CRIU's own errors when it failed
      throw new RunboxError('unavailable', 'criu lazy-pages did not open its socket within 10 s');
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}
