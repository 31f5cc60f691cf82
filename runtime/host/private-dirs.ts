import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';

/**
 * runbox's state is private to the user it runs as (root): VPS root file systems (a tenant's
 * setuid binaries and device nodes), checkpoints (CRIU images hold process memory: secrets),
 * templates, Redis data, tokens. Every directory holding them is 0700 and every secret file 0600,
 * so no other user of the host can reach any of it by path. Each composition root (`runbox up`,
 * `worker`, `api`, `cluster up`, `run`) calls these before it creates anything.
 */

export type PrivacyAction = 'ok' | 'tighten' | { refuse: string };

/**
 * What to do with an existing directory or file (pure, table-tested): keep it, tighten its mode,
 * or refuse to use it. A shared directory such as /tmp (sticky or world-writable) is refused,
 * never chmod-ed; so is one owned by another user (its owner could open it again at any time).
 */
export function privacyAction(st: { mode: number; uid: number; isDirectory: boolean }, kind: 'dir' | 'file', uid: number): PrivacyAction {
  if (kind === 'dir' && !st.isDirectory) return { refuse: 'is not a directory' };
  if (kind === 'file' && st.isDirectory) return { refuse: 'is a directory, not a file' };
  if (st.uid !== uid) return { refuse: `belongs to uid ${st.uid}, not to runbox's uid ${uid}: its owner could open it to others again (chown it, or use a directory of runbox's own)` };
  if (kind === 'dir' && (st.mode & 0o1000 || st.mode & 0o002)) {
    return { refuse: `is a shared directory (mode ${octal(st.mode)}); runbox keeps private state there: use a directory of its own` };
  }
  return (st.mode & 0o077) !== 0 ? 'tighten' : 'ok';
}

const octal = (mode: number): string => (mode & 0o7777).toString(8).padStart(4, '0');
const myUid = (): number => process.geteuid?.() ?? 0;

/**
 * Makes `dir` (and missing parents) with mode 0700, or tightens an existing one to 0700 with a
 * log line. `create: false` only tightens a directory that exists (e.g. the API's view of a state
 * dir that lives on another machine).
 */
export async function ensurePrivateDir(dir: string, opts: { log?: Logger; create?: boolean } = {}): Promise<void> {
  if (opts.create !== false) await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await tighten(dir, 'dir', 0o700, opts.log);
}

/** Tightens an existing secret file (a token file) to 0600; a missing one is no error. */
export async function ensurePrivateFile(file: string, opts: { log?: Logger } = {}): Promise<void> {
  await tighten(file, 'file', 0o600, opts.log);
}

/** ensurePrivateDir of each distinct directory, in order (state dir first: it holds the others). */
export async function ensurePrivateDirs(dirs: string[], opts: { log?: Logger; create?: boolean } = {}): Promise<void> {
  for (const d of [...new Set(dirs)]) await ensurePrivateDir(d, opts);
}

async function tighten(p: string, kind: 'dir' | 'file', mode: number, log?: Logger): Promise<void> {
  const st = await fs.stat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new RunboxError('invalid_argument', `cannot check the permissions of ${p}: ${e.message}`, { cause: e });
  });
  if (!st) return;
  const action = privacyAction({ mode: st.mode, uid: st.uid, isDirectory: st.isDirectory() }, kind, myUid());
  if (action === 'ok') return;
  if (action !== 'tighten') throw new RunboxError('invalid_argument', `${p} ${action.refuse}`);
  try {
    await fs.chmod(p, mode);
  } catch (e) {
    throw new RunboxError('invalid_argument', `${p} is readable by other users (mode ${octal(st.mode)}) and could not be made ${octal(mode)}: ${(e as Error).message}`, { cause: e });
  }
  log?.warn({ path: p, was: octal(st.mode), now: octal(mode) }, `made ${kind === 'dir' ? 'a state directory' : 'a secret file'} private: it was open to other users of this host`);
}

/**
 * Writes `text` to `file` (0600) only if no file is there: the first of several processes making
 * the same secret wins (link() fails with EEXIST for the others). Returns false when one existed;
 * `replace` writes it in place of an existing file instead (rename).
 */
export async function writePrivateFile(file: string, text: string, o: { replace?: boolean } = {}): Promise<boolean> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await fs.writeFile(tmp, text, { mode: 0o600 });
  await fs.chmod(tmp, 0o600); // the umask may have taken bits away, never added: made explicit
  try {
    if (o.replace) {
      await fs.rename(tmp, file);
      return true;
    }
    await fs.link(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    await fs.rm(tmp, { force: true });
  }
}
