import fs from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import { RunboxError } from '../../core/errors.js';
import type { IdMapping } from '../native/sys.js';

/**
 * Host id ranges of VPS user namespaces. Each VPS gets its own range of USERNS_SIZE uids and the
 * same gids (root inside = the range's first id), distinct from every other VPS's on the machine,
 * so VPSs are different users to the kernel: a file, a process or a per-user count (pipe pages,
 * RLIMIT_NPROC) of one is not another's, and none is host root's.
 *
 * Ranges are slots above USERNS_FIRST_HOST_ID (2^30: far above the ids distributions hand out,
 * /etc/subuid's 100000+ included) and below 2^31. A slot is taken machine-wide, by every runbox
 * instance on the host, by creating `<dir>/<slot>` exclusively; the file names its instance and
 * VPS so that gc can give back the slots of VPSs that are gone. The dir is under /run: a reboot
 * ends every VPS and frees every slot together.
 */
export const USERNS_SIZE = 65536;
export const USERNS_FIRST_HOST_ID = 2 ** 30;
export const USERNS_SLOTS = 2 ** 30 / USERNS_SIZE; // 16384
export const USERNS_DIR = '/run/runbox/userns';

export interface UsernsLease extends IdMapping {
  slot: number;
}

/** The host ids of slot `slot`. */
export function slotMapping(slot: number): UsernsLease {
  if (!Number.isInteger(slot) || slot < 0 || slot >= USERNS_SLOTS) throw new RunboxError('invalid_argument', `invalid user namespace slot ${slot}`);
  return { slot, hostId: USERNS_FIRST_HOST_ID + slot * USERNS_SIZE, count: USERNS_SIZE };
}

/** Whether `l` is exactly what slot `l.slot` maps (a record read back must not name other ids). */
export function isSlotLease(l: { slot: number; hostId: number; count: number }): boolean {
  if (!Number.isInteger(l.slot) || l.slot < 0 || l.slot >= USERNS_SLOTS) return false;
  const m = slotMapping(l.slot);
  return m.hostId === l.hostId && m.count === l.count;
}

const ownerLine = (instance: string, vpsId: string) => `${instance} ${vpsId}\n`;

export class UsernsRanges {
  constructor(
    readonly instance: string,
    readonly dir = USERNS_DIR,
    private readonly random: () => number = Math.random,
  ) {}

  /** Takes a free slot for VPS `vpsId` (unavailable when all are taken). */
  async allocate(vpsId: string): Promise<UsernsLease> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const start = Math.floor(this.random() * USERNS_SLOTS);
    for (let i = 0; i < USERNS_SLOTS; i++) {
      const slot = (start + i) % USERNS_SLOTS;
      try {
        await fs.writeFile(path.join(this.dir, String(slot)), ownerLine(this.instance, vpsId), { flag: 'wx', mode: 0o600 });
        return slotMapping(slot);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    throw new RunboxError('unavailable', `all ${USERNS_SLOTS} user namespace id ranges of this host are in use`);
  }

  /** Gives slot `slot` back if VPS `vpsId` of this instance holds it (idempotent). */
  async release(slot: number, vpsId: string): Promise<void> {
    const file = path.join(this.dir, String(slotMapping(slot).slot));
    const owner = await fs.readFile(file, 'utf8').catch(() => undefined);
    if (owner === ownerLine(this.instance, vpsId)) await fs.rm(file, { force: true });
  }

  /** The slots this instance holds, with their VPSs. */
  async held(): Promise<Array<{ slot: number; vpsId: string }>> {
    const names = await fs.readdir(this.dir).catch(() => [] as string[]);
    const out: Array<{ slot: number; vpsId: string }> = [];
    for (const name of names) {
      if (!/^\d{1,5}$/.test(name) || Number(name) >= USERNS_SLOTS) continue;
      const owner = await fs.readFile(path.join(this.dir, name), 'utf8').catch(() => '');
      const m = /^([0-9a-f]+) ([a-z0-9]{1,64})\n$/.exec(owner);
      if (m && m[1] === this.instance) out.push({ slot: Number(name), vpsId: m[2]! });
    }
    return out;
  }
}

/**
 * Per-VPS caps of the kernel's counts that are kept per user up the user-namespace tree
 * (kernel/ucount.c): a VPS's inotify instances and watches count in its own user namespace and
 * then in its owner's (host root's, which made it) in the host's namespace. Without a cap of the
 * VPS's own, one VPS can take the host's whole per-user budget (fs.inotify.max_user_instances,
 * 128) from every other VPS and from host root's daemons. So each VPS's namespace gets these
 * limits (/proc/sys/user/*, writable only with CAP_SYS_RESOURCE in it: not by the VPS), and the
 * host's budget is raised to hold many VPSs' worth (HOST_INOTIFY).
 */
export const VPS_USER_LIMITS = { max_inotify_instances: 128, max_inotify_watches: 65536 } as const;
/** fs.inotify.* the host needs at least with user namespaces (host root's budget, shared by its VPSs). */
export const HOST_INOTIFY = { max_user_instances: 65536, max_user_watches: 16777216 } as const;

/** The helper that writes them inside a VPS's user namespace (runtime/userns/userns-limits.c, built by setup). */
export const USERNS_LIMITS_HELPER = path.join(REPO_ROOT, 'build/runbox-userns-limits');

/** Its argv for the VPS whose init is `pid`. */
export function userLimitsArgv(pid: number, limits: Readonly<Record<string, number>> = VPS_USER_LIMITS, helper = USERNS_LIMITS_HELPER): string[] {
  if (!Number.isInteger(pid) || pid <= 1) throw new RunboxError('internal', `bad pid ${pid}`);
  const pairs = Object.entries(limits).map(([k, v]) => {
    if (!/^[a-z_]+$/.test(k) || !Number.isInteger(v) || v < 0) throw new RunboxError('internal', `bad user namespace limit ${k}=${v}`);
    return `${k}=${v}`;
  });
  return [helper, String(pid), ...pairs];
}
