import { exec, execOk, type ExecResult } from '../exec.js';
import { RunboxError } from '../../core/errors.js';
import type { OciRuntimeKind } from './runtime-choice.js';

/**
 * A thin driver for the OCI runtime's CLI: runc, or crun, which takes the same commands and flags
 * for everything here but post-copy (oci/runtime-choice.ts). Argument builders are pure
 * (table-tested); the functions below only hand their argv to exec(). Every call names our own
 * --root, so runbox's containers never mix with other users of the runtime on the host, and two
 * runbox instances never see each other's.
 */
export interface RuncGlobal {
  /** Which runtime `runc` is (default runc). */
  kind?: OciRuntimeKind;
  /** The runtime's binary. */
  runc: string;
  root: string;
  criu?: string;
}

export function globalArgs(g: RuncGlobal): string[] {
  const args = [g.runc, '--root', g.root];
  // crun runs CRIU through libcriu, which takes the `criu` on PATH (crun's wrapper puts runbox's first).
  if (g.criu && g.kind !== 'crun') args.push('--criu', g.criu);
  return args;
}

/** The runtime's subcommand in an argv built here ("run", "restore", …), for messages. */
export function subcommandOf(argv: readonly string[]): string {
  return argv.find((a, i) => i > 0 && !a.startsWith('-') && argv[i - 1] !== '--root' && argv[i - 1] !== '--criu') ?? argv[0] ?? '?';
}

/**
 * crun has no flags for lazy pages; CRIU takes them from the container's configuration file
 * (`org.criu.config`), whose settings override what the runtime asks for. These are the lines a
 * crun dump or restore needs there (RuncEngine.setCriuOptions), in CRIU's long option names.
 */
export function lazyCriuOptions(o: { lazy?: CheckpointOptions['lazy']; lazyPages?: boolean }): string[] {
  if (o.lazy) {
    const at = o.lazy.pageServer.lastIndexOf(':');
    const address = o.lazy.pageServer.slice(0, at).replace(/^\[|\]$/g, '');
    return ['lazy-pages', `address ${address}`, `port ${o.lazy.pageServer.slice(at + 1)}`, `status-fd ${o.lazy.statusFd}`];
  }
  return o.lazyPages ? ['lazy-pages'] : [];
}

export const runArgs = (g: RuncGlobal, id: string, bundle: string, pidFile: string): string[] => [
  ...globalArgs(g), 'run', '--detach', '--bundle', bundle, '--pid-file', pidFile, id,
];

export const killArgs = (g: RuncGlobal, id: string, signal: string, all: boolean): string[] => [
  ...globalArgs(g), 'kill', ...(all ? ['--all'] : []), id, signal,
];

/** Plain delete of a stopped container (fast); --force polls the kill in ~100 ms steps. */
export const deleteArgs = (g: RuncGlobal, id: string, force: boolean): string[] => [
  ...globalArgs(g), 'delete', ...(force ? ['--force'] : []), id,
];

export const pauseArgs = (g: RuncGlobal, id: string): string[] => [...globalArgs(g), 'pause', id];
export const resumeArgs = (g: RuncGlobal, id: string): string[] => [...globalArgs(g), 'resume', id];

export const stateArgs = (g: RuncGlobal, id: string): string[] => [...globalArgs(g), 'state', id];
export const listArgs = (g: RuncGlobal): string[] => [...globalArgs(g), 'list', '--format', 'json'];

export interface CheckpointOptions {
  imagePath: string;
  workPath: string;
  leaveRunning: boolean;
  /** Parent image dir for incremental dumps (only where dirty tracking works). */
  parentPath?: string;
  /**
   * Post-copy: dump everything but the memory pages, then serve those on demand from a page server
   * listening on `pageServer` (ADDRESS:PORT) until the target has them all; CRIU writes one byte to
   * `statusFd` when the page server is ready. The VPS's processes end after the last page.
   */
  lazy?: { pageServer: string; statusFd: number };
}

/** CRIU image and work paths must be absolute (relative ones fail deep inside criu). */
export function checkpointArgs(g: RuncGlobal, id: string, o: CheckpointOptions): string[] {
  return [
    ...globalArgs(g), 'checkpoint',
    '--image-path', o.imagePath,
    '--work-path', o.workPath,
    '--tcp-established',
    '--file-locks',
    ...(o.leaveRunning ? ['--leave-running'] : []),
    ...(o.parentPath ? ['--parent-path', o.parentPath] : []),
    ...(o.lazy && g.kind !== 'crun' ? ['--lazy-pages', '--page-server', o.lazy.pageServer, '--status-fd', String(o.lazy.statusFd)] : []),
    id,
  ];
}

export interface RestoreOptions {
  bundle: string;
  pidFile: string;
  imagePath: string;
  /** With `lazyPages`, the work dir of the `criu lazy-pages` daemon (its lazy-pages.socket is there). */
  workPath: string;
  lazyPages?: boolean;
}

export function restoreArgs(g: RuncGlobal, id: string, o: RestoreOptions): string[] {
  return [
    ...globalArgs(g), 'restore', '--detach',
    '--bundle', o.bundle,
    '--pid-file', o.pidFile,
    '--image-path', o.imagePath,
    '--work-path', o.workPath,
    '--tcp-established',
    '--file-locks',
    ...(o.lazyPages && g.kind !== 'crun' ? ['--lazy-pages'] : []),
    id,
  ];
}

/** The target's side of post-copy: fetches pages from the source's page server as the restored VPS faults them in. */
export function lazyPagesArgs(criu: string, o: { imagesDir: string; workDir: string; address: string; port: number }): string[] {
  return [criu, 'lazy-pages', '--page-server', '--address', o.address, '--port', String(o.port), '--images-dir', o.imagesDir, '--work-dir', o.workDir];
}

const RUNC_TIMEOUT_MS = 30_000;

export async function runcKill(g: RuncGlobal, id: string, signal = 'KILL'): Promise<void> {
  await exec(killArgs(g, id, signal, true), { timeoutMs: RUNC_TIMEOUT_MS });
}

/** Idempotent: deleting a container runc does not know resolves. */
export async function runcDelete(g: RuncGlobal, id: string, force = true): Promise<void> {
  const r = await exec(deleteArgs(g, id, force), { timeoutMs: RUNC_TIMEOUT_MS });
  // runc: "container does not exist"; crun: "container `x` does not exist" or, without --force,
  // "cannot open directory `<root>/x`: No such file or directory".
  if (r.code !== 0 && !/does not exist|container not found|cannot open directory .*No such file or directory/i.test(r.stderr)) {
    throw new RunboxError('internal', `${g.kind ?? 'runc'} delete ${id} failed: ${r.stderr.trim()}`);
  }
}

export interface RuncContainer {
  id: string;
  pid: number;
  status: string;
  bundle: string;
}

export async function runcList(g: RuncGlobal): Promise<RuncContainer[]> {
  const r: ExecResult = await execOk(listArgs(g), { timeoutMs: RUNC_TIMEOUT_MS });
  const parsed = JSON.parse(r.stdout.trim() || 'null') as RuncContainer[] | null;
  return parsed ?? [];
}

export async function runcState(g: RuncGlobal, id: string): Promise<RuncContainer | undefined> {
  const r = await exec(stateArgs(g, id), { timeoutMs: RUNC_TIMEOUT_MS });
  if (r.code !== 0) return undefined;
  return JSON.parse(r.stdout) as RuncContainer;
}
