import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { RuncEngine } from '../../runtime/runc-engine.js';

/**
 * Counts of every host object a VPS can leave behind, for before/after leak checks.
 * Scoped to runbox names so unrelated activity on the machine does not disturb the counts.
 */
export interface HostSnapshot {
  mounts: number;
  /** User namespace id ranges the instance holds. */
  usernsSlots: number;
  netns: number;
  links: number;
  runcContainers: number;
  cgroups: number;
  loopDevices: number;
}

export async function hostSnapshot(engine: RuncEngine): Promise<HostSnapshot> {
  const { stateDir, instance } = engine.layout;
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const netns = await fs.readdir('/run/netns').catch(() => [] as string[]);
  const links = execFileSync('ip', ['-o', 'link', 'show']).toString().split('\n').filter((l) => l.includes(`master ${engine.net.bridge}`));
  const { runc: bin, root } = engine.runc;
  const runc = JSON.parse(execFileSync(bin, ['--root', root, 'list', '--format', 'json']).toString() || 'null') as unknown[] | null;
  const cgroups = await countCgroups(engine.layout.cgroupParent);
  const loops = execFileSync('losetup', ['--list', '--noheadings']).toString().split('\n').filter((l) => l.includes(stateDir));
  return {
    mounts: mountinfo.split('\n').filter((l) => l.includes(stateDir) || l.includes(`${engine.layout.rootsDir}/`)).length,
    usernsSlots: (await engine.usernsRanges.held()).length,
    netns: netns.filter((n) => n.startsWith(`rb${instance}-`)).length,
    links: links.length,
    runcContainers: runc?.length ?? 0,
    cgroups,
    loopDevices: loops.length,
  };
}

/** VPS cgroups of one instance, in every hierarchy (v1) or the unified one (v2). */
async function countCgroups(parent: string): Promise<number> {
  let n = 0;
  // Every mounted hierarchy (hybrid: v1 ones, hugetlb where setup moved it, "unified"), or v2's root.
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers');
  const hierarchies = v2 ? [''] : (await fs.readdir('/sys/fs/cgroup', { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  for (const ctrl of hierarchies) {
    const dir = ctrl ? `/sys/fs/cgroup/${ctrl}${parent}` : `/sys/fs/cgroup${parent}`;
    const kids = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
    n += kids.filter((k) => k.isDirectory()).length;
  }
  return n;
}

export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = `${d}/${e.name}`;
      out.push(p);
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out.sort();
}
