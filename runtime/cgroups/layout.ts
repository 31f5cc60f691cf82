import fs from 'node:fs';
import path from 'node:path';

/**
 * Which cgroup hierarchy the host runs. Hosts like the development VMs run "hybrid" (v1
 * controllers under /sys/fs/cgroup/<ctrl>, an almost empty cgroup2 at /sys/fs/cgroup/unified);
 * production hosts usually run pure v2. runc handles both for creation; we read and write a few
 * files directly (limits on a warm VPS, usage, OOM counters) and need the paths.
 */
export type CgroupLayout =
  | { kind: 'v1'; root: string; controllers: Record<'memory' | 'cpu' | 'cpuacct' | 'pids' | 'freezer', string> }
  | { kind: 'v2'; root: string };

export function detectCgroupLayout(root = '/sys/fs/cgroup'): CgroupLayout {
  if (fs.existsSync(path.join(root, 'cgroup.controllers'))) return { kind: 'v2', root };
  const ctrl = (name: string) => {
    // Some distributions co-mount cpu,cpuacct; accept either spelling.
    for (const dir of [name, 'cpu,cpuacct', 'cpuacct,cpu']) {
      const p = path.join(root, dir);
      if ((dir === name || dir.split(',').includes(name)) && fs.existsSync(p)) return p;
    }
    throw new Error(`cgroup v1 controller "${name}" is not mounted under ${root}`);
  };
  return {
    kind: 'v1',
    root,
    controllers: {
      memory: ctrl('memory'),
      cpu: ctrl('cpu'),
      cpuacct: ctrl('cpuacct'),
      pids: ctrl('pids'),
      freezer: ctrl('freezer'),
    },
  };
}
