import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { isAlive, selfRef, type ProcessRef } from '../host/proc.js';

/**
 * An exclusive lock per (template, hash) across processes: a file created with O_EXCL that holds
 * its owner's pid and start time. A lock whose owner is dead (crashed, killed) is stale and is
 * broken by the next taker. Within one process the builder dedupes on its own (in-flight map), so
 * a lock held by this very process means "wait" like any other.
 *
 * What the lock protects is work, not correctness: every build writes to a directory of its own
 * and publishes it with a rename that fails when the version already exists, so even two builders
 * that both believe they hold the lock cannot corrupt a template; one of them just wasted a build.
 */
export class BuildLock {
  private constructor(
    readonly file: string,
    private readonly owner: ProcessRef,
  ) {}

  /** Takes the lock, waiting while a live owner holds it. `onWait` is called once if it has to wait. */
  static async acquire(file: string, opts: { timeoutMs?: number; onWait?: (holder: ProcessRef) => void } = {}): Promise<BuildLock> {
    const me = selfRef();
    const deadline = Date.now() + (opts.timeoutMs ?? 60 * 60_000);
    let told = false;
    for (;;) {
      try {
        const fh = await fs.open(file, 'wx', 0o644);
        await fh.writeFile(JSON.stringify(me));
        await fh.close();
        return new BuildLock(file, me);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') {
          // Its directory was removed (a failed build cleans up an empty template dir): make it again.
          await fs.mkdir(path.dirname(file), { recursive: true });
          continue;
        }
        if (code !== 'EEXIST') throw e;
      }
      const holder = await readHolder(file);
      if (holder && !isAlive(holder)) {
        await breakStale(file, holder);
        continue;
      }
      // An unreadable lock is one caught between open and write; one that stays so was left by a
      // process that died right there.
      if (!holder) {
        const st = await fs.stat(file).catch(() => undefined);
        if (st && Date.now() - st.mtimeMs > 10_000) await fs.rm(file, { force: true });
      } else if (!told) {
        told = true;
        opts.onWait?.(holder);
      }
      if (Date.now() > deadline) {
        throw new RunboxError('unavailable', `timed out waiting for the build lock ${file} (held by pid ${holder?.pid ?? '?'})`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async release(): Promise<void> {
    const holder = await readHolder(this.file);
    if (holder && holder.pid === this.owner.pid && holder.start === this.owner.start) await fs.rm(this.file, { force: true });
  }
}

export async function readHolder(file: string): Promise<ProcessRef | undefined> {
  try {
    const o = JSON.parse(await fs.readFile(file, 'utf8')) as Partial<ProcessRef>;
    return typeof o.pid === 'number' && typeof o.start === 'number' ? { pid: o.pid, start: o.start } : undefined;
  } catch {
    return undefined;
  }
}

/** Whether a lock file exists with a live owner (gc leaves such versions and build dirs alone). */
export async function isLockHeld(file: string): Promise<boolean> {
  const h = await readHolder(file);
  return !!h && isAlive(h);
}

/** A lock left by a dead process (or never completed by one: unreadable and older than 10 s). */
export async function isLockStale(file: string): Promise<boolean> {
  const h = await readHolder(file);
  if (h) return !isAlive(h);
  const st = await fs.stat(file).catch(() => undefined);
  return !!st && Date.now() - st.mtimeMs > 10_000;
}

/**
 * Removes a stale lock, unless someone replaced it meanwhile (re-read right before unlinking; the
 * remaining window only risks a duplicate build, see the class comment).
 */
async function breakStale(file: string, seen: ProcessRef): Promise<void> {
  const now = await readHolder(file);
  if (now && now.pid === seen.pid && now.start === seen.start) await fs.rm(file, { force: true });
}
