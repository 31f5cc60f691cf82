import { exec, execOk, type ExecResult } from '../exec.js';
import { RunboxError } from '../../core/errors.js';

/**
 * A thin driver for the runc CLI. Argument builders are pure (table-tested); the functions below
 * only hand their argv to exec(). Every call names our own --root, so runbox's containers never mix
 * with other runc users on the host, and two runbox instances never see each other's.
 */
export interface RuncGlobal {
  runc: string;
  root: string;
  criu?: string;
}

export function globalArgs(g: RuncGlobal): string[] {
  const args = [g.runc, '--root', g.root];
  if (g.criu) args.push('--criu', g.criu);
  return args;
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
    ...(o.lazy ? ['--lazy-pages', '--page-server', o.lazy.pageServer, '--status-fd', String(o.lazy.statusFd)] : []),
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
    ...(o.lazyPages ? ['--lazy-pages'] : []),
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
  if (r.code !== 0 && !/does not exist|not exist|container not found/i.test(r.stderr)) {
    throw new RunboxError('internal', `runc delete ${id} failed: ${r.stderr.trim()}`);
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
