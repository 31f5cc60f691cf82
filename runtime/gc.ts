import fs from 'node:fs/promises';
import type { CgroupLayout } from './cgroups/layout.js';
import path from 'node:path';
import { exec } from './exec.js';
import { isAlive, selfRef } from './host/proc.js';
import { runcDelete, runcList } from './oci/runc.js';
import type { RuncEngine } from './runc-engine.js';
import { mountPoints, staleGoldenWork, unmountLayer } from './storage/layer.js';
import { VPS_ID } from './layout.js';

export interface GcReport {
  vps: string[];
  /** Migration dirs of processes that are gone (with any mount CRIU left in them), and golden images they were making. */
  transfers: string[];
  containers: string[];
  netns: string[];
  addresses: string[];
  cgroups: string[];
  mounts: string[];
  network: boolean;
  /** Helper processes (runc, criu, tar) of a dead runbox process, killed. */
  orphans: string[];
  /** VPS disks a dead process left frozen, thawed. */
  thawed: string[];
  /** User namespace id ranges (slots) of VPSs that are gone, given back. */
  userns: number[];
}

/**
 * Removes what a crashed process left behind: VPSs whose owning process is gone (or all of them
 * with `all`), and any runc container, netns, address lease, cgroup or mount of this instance that
 * no VPS dir accounts for. Safe to run while other processes of the same instance are alive: their
 * VPSs have live owners and are left alone.
 */
export async function gc(engine: RuncEngine, opts: { all?: boolean } = {}): Promise<GcReport> {
  const report: GcReport = { vps: [], transfers: [], containers: [], netns: [], addresses: [], cgroups: [], mounts: [], network: false, orphans: [], thawed: [], userns: [] };
  // A worker that died mid-move can leave its CRIU page server and runc behind (they run in
  // process groups of their own), holding its VPS frozen and its disk busy, and a VPS disk frozen
  // for sending (storage/layer.ts freezeLayer): both must go before anything can be removed.
  report.orphans.push(...(await killOrphanHelpers(engine.layout.stateDir)));
  const kept = new Set<string>();
  const dead: string[] = [];
  for (const id of await engine.list()) {
    const record = await engine.readRecord(id);
    if (!opts.all && record && isAlive(record.owner)) kept.add(id);
    else dead.push(id);
  }
  report.thawed.push(...(await thawLayers(engine.layout.vpsRoot, kept)));
  for (const id of dead) {
    await engine.destroy(id);
    report.vps.push(id);
  }

  // Also the other runtime's containers, left by a run of this instance with another RUNBOX_RUNTIME.
  for (const runtime of [engine.runc, ...engine.formerRuntimes()]) {
    const current = runtime === engine.runc;
    for (const c of await runcList(runtime).catch(() => [])) {
      if (kept.has(c.id) && current) continue;
      // The other runtime's delete is best effort; a failure of this one fails gc, as before.
      await (current ? runcDelete(runtime, c.id) : runcDelete(runtime, c.id).catch(() => undefined));
      report.containers.push(c.id);
    }
  }

  const prefix = `rb${engine.layout.instance}-`;
  for (const ns of await engine.net.listNetns()) {
    const id = ns.slice(prefix.length);
    if (kept.has(id)) continue;
    await exec(['ip', 'link', 'del', engine.net.vethName(id)]);
    await exec(['ip', 'netns', 'del', ns]);
    report.netns.push(ns);
  }

  for (const a of await engine.net.listAllocations()) {
    if (kept.has(a.vpsId)) continue;
    await fs.rm(path.join(engine.layout.addrDir, a.address), { force: true });
    report.addresses.push(a.address);
  }

  report.mounts.push(...(await staleMounts(engine, kept)));
  report.userns.push(...(await staleUsernsSlots(engine, kept)));
  report.transfers.push(...(await staleTransfers(engine.layout.transfersDir)));
  report.transfers.push(...(await staleGoldenWork(engine.layout.cacheDir)));
  report.cgroups.push(...(await staleCgroups(engine, kept, opts.all ?? false)));

  if (opts.all) {
    await engine.net.removeAll();
    report.network = true;
    // The instance's roots dir (empty by now), with its empty dir; another process of it remakes them.
    await fs.rmdir(engine.layout.emptyDir).catch(() => undefined);
    await fs.rmdir(engine.layout.rootsDir).catch(() => undefined);
  }
  return report;
}

/**
 * runc, CRIU and tar processes of this instance (their command line names its state dir) whose
 * runbox process is gone: reparented to init. Killed with their process group (runc's CRIU).
 */
async function killOrphanHelpers(stateDir: string): Promise<string[]> {
  const killed: string[] = [];
  for (const pid of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const [cmd, stat] = await Promise.all([
      fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''),
      fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => ''),
    ]);
    if (!cmd.split('\0').some((arg) => arg === stateDir || arg.startsWith(`${stateDir}/`))) continue;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [ppid, pgid] = [Number(fields[1]), Number(fields[2])];
    if (ppid !== 1) continue; // its runbox process is alive (or it is a runbox process)
    for (const target of pgid > 1 && pgid === Number(pid) ? [-pgid, Number(pid)] : [Number(pid)]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    // A VPS's processes choose their own command lines: printable characters only in the report.
    killed.push(`${pid} ${cmd.replace(/\0/g, ' ').replace(/[^\x20-\x7e]/g, '?').slice(0, 120)}`);
  }
  if (killed.length) await new Promise((r) => setTimeout(r, 100)); // let them die
  return killed;
}

/**
 * Unfreezes the mounted disks of this instance's VPSs that no live process owns (a no-op on disks
 * that are not frozen). An unmount alone would leave a frozen file system alive, detached, with
 * its loop device.
 */
async function thawLayers(vpsRoot: string, kept: Set<string>): Promise<string[]> {
  const thawed: string[] = [];
  for (const mp of await mountPoints()) {
    if (!mp.startsWith(`${vpsRoot}/`) || !mp.endsWith('/layer')) continue;
    if (kept.has(mp.slice(vpsRoot.length + 1).split('/')[0]!)) continue;
    if ((await exec(['fsfreeze', '--unfreeze', mp], { timeoutMs: 30_000 })).code === 0) thawed.push(mp);
  }
  return thawed;
}

/** Mounts of VPSs no live process owns (under their VPS dir or their root dir), unmounted with their dirs removed. */
async function staleMounts(engine: RuncEngine, kept: Set<string>): Promise<string[]> {
  const { vpsRoot, rootsDir } = engine.layout;
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const stale = new Map<string, string[]>();
  for (const line of info.split('\n')) {
    const mp = line.split(' ')[4];
    const base = [vpsRoot, rootsDir].find((b) => mp?.startsWith(`${b}/`));
    if (!mp || !base) continue;
    const id = mp.slice(base.length + 1).split('/')[0]!;
    if (!VPS_ID.test(id) || kept.has(id)) continue;
    stale.set(id, [...(stale.get(id) ?? []), mp]);
  }
  for (const id of stale.keys()) {
    const p = engine.layout.vps(id);
    await unmountLayer(p);
    await Promise.all([fs.rm(p.dir, { recursive: true, force: true }), fs.rm(p.rootDir, { recursive: true, force: true })]);
  }
  // Root dirs left without a mount (a crash between their mkdir and the overlay).
  for (const id of await fs.readdir(rootsDir).catch(() => [] as string[])) {
    if (VPS_ID.test(id) && !kept.has(id)) await fs.rm(path.join(rootsDir, id), { recursive: true, force: true });
  }
  return [...stale.values()].flat();
}

/** Id ranges this instance holds for VPSs that no live process owns (their VPS was destroyed above, or never got a record). */
async function staleUsernsSlots(engine: RuncEngine, kept: Set<string>): Promise<number[]> {
  const freed: number[] = [];
  for (const { slot, vpsId } of await engine.usernsRanges.held()) {
    if (kept.has(vpsId)) continue;
    await engine.usernsRanges.release(slot, vpsId);
    freed.push(slot);
  }
  return freed;
}

/** A dir for one migration's checkpoint, named after its owner (see Layout.transfersDir). */
export async function transferDir(transfersDir: string, name: string): Promise<string> {
  await fs.mkdir(transfersDir, { recursive: true });
  const { pid, start } = selfRef();
  return fs.mkdtemp(path.join(transfersDir, `${pid}.${start}.${name}.`));
}

/** Transfer dirs whose owner is gone; a CRIU killed mid-restore leaves its cgroup yard mounted there. */
async function staleTransfers(dir: string): Promise<string[]> {
  const removed: string[] = [];
  const stale = (await fs.readdir(dir).catch(() => [] as string[])).filter((name) => {
    const [pid, start] = name.split('.').map(Number);
    return !(pid && start !== undefined && isAlive({ pid, start }));
  });
  if (stale.length === 0) return removed;
  const mounted = [...(await mountPoints())];
  for (const name of stale) {
    const full = path.join(dir, name);
    const mounts = mounted.filter((mp) => mp.startsWith(`${full}/`)).sort((a, b) => b.length - a.length); // innermost first
    for (const mp of mounts) await exec(['umount', '--lazy', mp]);
    await fs.rm(full, { recursive: true, force: true });
    removed.push(full);
  }
  return removed;
}

/** cgroup dirs under this instance's parent with no VPS: kill what is inside, then rmdir. */
async function staleCgroups(engine: RuncEngine, kept: Set<string>, removeParent: boolean): Promise<string[]> {
  const removed: string[] = [];
  for (const root of await hierarchies(engine.cgroups)) {
    const parent = path.join(root, engine.layout.cgroupParent);
    const children = await fs.readdir(parent, { withFileTypes: true }).catch(() => []);
    for (const child of children) {
      if (!child.isDirectory() || kept.has(child.name)) continue;
      const dir = path.join(parent, child.name);
      if (await removeCgroupTree(dir)) removed.push(dir);
    }
    if (removeParent) await fs.rmdir(parent).catch(() => undefined);
  }
  return removed;
}

/**
 * Roots of every hierarchy a VPS's cgroup can be in: v2's root, or each mounted v1 hierarchy,
 * including the hybrid layout's cgroup2 at "unified" (runtimes make dirs there too).
 */
async function hierarchies(layout: CgroupLayout): Promise<string[]> {
  if (layout.kind === 'v2') return [layout.root];
  const entries = await fs.readdir(layout.root, { withFileTypes: true });
  return entries.filter((e) => e.isDirectory()).map((e) => path.join(layout.root, e.name));
}

/** Removes one VPS's cgroup from every hierarchy, where the runtime left it (a failed create). */
export async function removeVpsCgroup(layout: CgroupLayout, cgroupsPath: string): Promise<void> {
  await Promise.all((await hierarchies(layout)).map((root) => removeCgroupTree(path.join(root, cgroupsPath))));
}

/**
 * Kills what is in a cgroup and below it and removes it, innermost first: crun leaves a nested
 * `.proxy-crun` cgroup in a VPS's when a restore fails, which a plain rmdir cannot remove (EBUSY).
 * Resolves whether the cgroup is gone (true when it was not there).
 */
export async function removeCgroupTree(dir: string): Promise<boolean> {
  const children = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const c of children) if (c.isDirectory()) await removeCgroupTree(path.join(dir, c.name));
  await killCgroup(dir);
  return fs.rmdir(dir).then(
    () => true,
    (e: NodeJS.ErrnoException) => e.code === 'ENOENT',
  );
}

async function killCgroup(dir: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const procs = (await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => ''))
      .split('\n')
      .filter(Boolean)
      .map(Number);
    if (procs.length === 0) return;
    for (const pid of procs) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
