import fs from 'node:fs/promises';
import path from 'node:path';
import type { CgroupLayout } from '../cgroups/layout.js';

/** /dev/net/tun (char 10:200) as an OCI device node, made by runc in the VPS's /dev when tun is allowed. */
export const TUN_NODE = { path: '/dev/net/tun', type: 'c', major: 10, minor: 200, fileMode: 0o666, uid: 0, gid: 0 } as const;

/**
 * Device cgroup rules of a VPS (pure): deny everything (runc adds the standard nodes), and tun
 * explicitly, unless allowed. The explicit deny is what runc >= 1.2 and crun need; runc 1.1
 * appends its own defaults *after* these rules, tun among them ("users cannot disable this
 * behaviour", libcontainer/specconv), which `denyTunAfterStart` undoes.
 */
export function deviceRules(tun: boolean): Array<Record<string, unknown>> {
  return [
    { allow: false, access: 'rwm' },
    { allow: tun, type: TUN_NODE.type, major: TUN_NODE.major, minor: TUN_NODE.minor, access: 'rwm' },
  ];
}

/**
 * Takes tun back out of a started VPS's device cgroup (v1: a write to its devices.deny; a cgroup
 * may always narrow itself). Runs after `runc run`/`runc restore`, which write runc's defaults,
 * before the host sends a job. cgroup v2 has no such file (runc attaches an eBPF program): there
 * tun stays openable with runc 1.1, but no VPS process can create a tun device without
 * CAP_NET_ADMIN (docs/SECURITY.md).
 */
export async function denyTunAfterStart(layout: CgroupLayout, relPath: string): Promise<void> {
  if (layout.kind !== 'v1') return;
  const hierarchy = path.join(layout.root, 'devices');
  try {
    await fs.writeFile(path.join(hierarchy, relPath, 'devices.deny'), `${TUN_NODE.type} ${TUN_NODE.major}:${TUN_NODE.minor} rwm`);
  } catch (e) {
    // No v1 devices controller at all: runc had nowhere to allow tun either.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !(await fs.stat(hierarchy).then(() => true, () => false))) return;
    throw e;
  }
}
