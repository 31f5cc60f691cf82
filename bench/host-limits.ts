import fs from 'node:fs/promises';

/**
 * What one more VPS takes of the host's hard limits, and which of them stops a host first: read
 * before and after N idle VPSs exist, each limit's headroom divided by the measured use per VPS.
 */
export interface HostUsage {
  /** Open fds of this (the worker's) process. */
  fds: number;
  /** Tasks (processes and threads) on the host. */
  tasks: number;
  /** Named network namespaces (/run/netns). */
  netns: number;
  /** Mounts in this process's mount namespace. */
  mounts: number;
  /** Attached loop devices. */
  loops: number;
  /** Memory cgroups (v1 and v2 give a memcg one of 65535 ids; dying ones still hold theirs). */
  memcgs: number;
  /** MemAvailable, bytes. */
  memAvailable: number;
}

export type HostLimits = Record<keyof HostUsage, number>;

export interface Headroom {
  resource: keyof HostUsage;
  perVps: number;
  used: number;
  limit: number;
  /** VPSs more until the limit at the measured rate (Infinity: none used, or no limit). */
  moreVps: number;
}

const readText = (f: string) => fs.readFile(f, 'utf8').catch(() => '');
const readNumber = async (f: string) => Number((await readText(f)).trim());

export async function hostUsage(): Promise<HostUsage> {
  const [fds, loadavg, netns, mountinfo, blocks, cgroups, meminfo] = await Promise.all([
    fs.readdir('/proc/self/fd').catch(() => []),
    readText('/proc/loadavg'),
    fs.readdir('/run/netns').catch(() => []),
    readText('/proc/self/mountinfo'),
    fs.readdir('/sys/block').catch(() => []),
    readText('/proc/cgroups'),
    readText('/proc/meminfo'),
  ]);
  const loops = await Promise.all(
    blocks.filter((b) => b.startsWith('loop')).map((b) => fs.access(`/sys/block/${b}/loop/backing_file`).then(() => 1, () => 0)),
  );
  const memcgLine = cgroups.split('\n').find((l) => l.startsWith('memory\t'));
  return {
    fds: fds.length,
    tasks: Number(loadavg.split(' ')[3]?.split('/')[1] ?? NaN),
    netns: netns.length,
    mounts: mountinfo.split('\n').filter(Boolean).length,
    loops: loops.reduce<number>((a, b) => a + b, 0),
    memcgs: Number(memcgLine?.split('\t')[2] ?? NaN),
    memAvailable: Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? NaN) * 1024,
  };
}

export async function hostLimits(): Promise<HostLimits> {
  const limits = await readText('/proc/self/limits');
  const nofile = Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1] ?? Infinity);
  const [pidMax, threadsMax, netnsMax, mountMax, memTotal] = await Promise.all([
    readNumber('/proc/sys/kernel/pid_max'),
    readNumber('/proc/sys/kernel/threads-max'),
    readNumber('/proc/sys/user/max_net_namespaces'),
    readNumber('/proc/sys/fs/mount-max'),
    readText('/proc/meminfo').then((m) => Number(/^MemTotal:\s+(\d+)/m.exec(m)?.[1] ?? NaN) * 1024),
  ]);
  return {
    fds: nofile,
    tasks: Math.min(pidMax, threadsMax),
    netns: netnsMax,
    mounts: mountMax,
    loops: 1 << 20, // minor numbers; LOOP_CTL_GET_FREE makes devices on demand
    memcgs: 65535,
    memAvailable: memTotal,
  };
}

/** Pure: headroom per resource, the first limit first. Memory counts down (MemAvailable shrinks). */
export function headroom(before: HostUsage, after: HostUsage, count: number, limits: HostLimits): Headroom[] {
  const rows = (Object.keys(before) as Array<keyof HostUsage>).map((resource) => {
    const down = resource === 'memAvailable';
    const perVps = (down ? before[resource] - after[resource] : after[resource] - before[resource]) / count;
    const left = down ? after[resource] : limits[resource] - after[resource];
    return { resource, perVps, used: after[resource], limit: limits[resource], moreVps: perVps > 0 ? Math.floor(left / perVps) : Infinity };
  });
  return rows.sort((a, b) => a.moreVps - b.moreVps);
}
