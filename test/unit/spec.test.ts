import { describe, it, expect } from 'vitest';
import { AGENT_KEEP_NET_ADMIN, AGENT_ONLY_CAPABILITIES, AGENT_PATH_IN_VPS, buildSpec, MASKED_PATHS, READONLY_PATHS, VPS_CAPABILITIES, type SpecInput } from '../../runtime/oci/spec.js';
import { vpsSeccompProfile } from '../../runtime/oci/seccomp.js';

interface Mount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}
interface Spec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<'bounding' | 'effective' | 'permitted' | 'inheritable' | 'ambient', string[]>;
    rlimits: Array<{ type: string; hard: number; soft: number }>;
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: Mount[];
  linux: {
    namespaces: Array<{ type: string; path?: string }>;
    cgroupsPath: string;
    devices?: unknown[];
    resources: {
      devices: unknown[];
      memory: { limit: number };
      cpu: { quota: number; period: number };
      pids: { limit: number };
    };
    maskedPaths: string[];
    readonlyPaths: string[];
    seccomp: unknown;
  };
}

const INPUT: SpecInput = {
  rootfs: '/var/lib/runbox/vps/abcd1234/bundle/rootfs',
  hostname: 'vps-abcd1234',
  agentHostPath: '/opt/runbox/build/runbox-agent',
  cgroupsPath: '/runbox-ab12cd/abcd1234',
  memoryBytes: 268_435_456,
  cpus: 1,
  pids: 256,
  nofile: 1024,
  emptyDir: '/var/lib/runbox/empty',
  sysDirsHidden: ['/sys/firmware'],
};

const spec = (over: Partial<SpecInput> = {}) => buildSpec({ ...INPUT, ...over }) as unknown as Spec;
const mount = (s: Spec, dest: string) => {
  const found = s.mounts.filter((m) => m.destination === dest);
  expect(found).toHaveLength(1);
  return found[0]!;
};

describe('buildSpec', () => {
  it('is pure: same input, same document', () => {
    expect(buildSpec(INPUT)).toEqual(buildSpec(INPUT));
    expect(JSON.parse(JSON.stringify(buildSpec(INPUT)))).toEqual(buildSpec(INPUT));
  });

  it('sets the basics from the input', () => {
    const s = spec();
    expect(s.ociVersion).toBe('1.0.2');
    expect(s.root).toEqual({ path: INPUT.rootfs, readonly: false });
    expect(s.hostname).toBe('vps-abcd1234');
    expect(s.linux.cgroupsPath).toBe('/runbox-ab12cd/abcd1234');
    expect(s.process.args).toEqual([AGENT_PATH_IN_VPS]);
    expect(AGENT_PATH_IN_VPS).toBe('/.runbox/agent');
    expect(s.process.user).toEqual({ uid: 0, gid: 0 });
    expect(s.process.terminal).toBe(false);
    expect(s.process.cwd).toBe('/');
  });

  it('creates fresh pid/mount/uts/ipc/cgroup/network namespaces and no user namespace', () => {
    const s = spec();
    expect(s.linux.namespaces).toEqual([{ type: 'pid' }, { type: 'mount' }, { type: 'uts' }, { type: 'ipc' }, { type: 'cgroup' }, { type: 'network' }]);
    expect(s.linux.namespaces.find((n) => n.type === 'network')).not.toHaveProperty('path');
  });

  it('joins a prepared network namespace by path', () => {
    const s = spec({ netnsPath: '/run/netns/rb-abcd1234' });
    expect(s.linux.namespaces.filter((n) => n.type === 'network')).toEqual([{ type: 'network', path: '/run/netns/rb-abcd1234' }]);
    expect(s.linux.namespaces.filter((n) => n.path !== undefined)).toHaveLength(1);
    expect(s.linux.namespaces.map((n) => n.type)).toEqual(['pid', 'mount', 'uts', 'ipc', 'cgroup', 'network']);
  });

  it('mounts cgroupfs and sysfs read-only', () => {
    const s = spec();
    const cg = mount(s, '/sys/fs/cgroup');
    expect(cg.type).toBe('cgroup');
    expect(cg.options).toContain('ro');
    expect(cg.options).not.toContain('rw');
    const sys = mount(s, '/sys');
    expect(sys.type).toBe('sysfs');
    expect(sys.options).toContain('ro');
  });

  it('bind-mounts the agent read-only, nosuid, nodev', () => {
    const m = mount(spec(), AGENT_PATH_IN_VPS);
    expect(m).toEqual({
      destination: '/.runbox/agent',
      type: 'bind',
      source: '/opt/runbox/build/runbox-agent',
      options: ['bind', 'ro', 'nosuid', 'nodev'],
    });
  });

  it('mounts /proc, /dev/pts, /dev/mqueue exactly once each, and no tmpfs (CRIU archives each one on every dump)', () => {
    const s = spec();
    expect(s.mounts.map((m) => m.destination)).toEqual([
      '/proc', '/dev/pts', '/dev/mqueue', '/sys', '/sys/fs/cgroup', '/sys/firmware', '/.runbox/agent',
    ]);
    expect(s.mounts.filter((m) => m.type === 'tmpfs')).toEqual([]);
    expect(mount(s, '/proc').options).toEqual(expect.arrayContaining(['nosuid', 'noexec', 'nodev']));
  });

  it.each(['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug', '/proc/latency_stats'])(
    'masks %s',
    (p) => {
      expect(spec().linux.maskedPaths).toContain(p);
    },
  );

  it.each(['/proc/acpi', '/proc/scsi', '/proc/asound'])('makes the directory %s read-only instead of a tmpfs mask', (p) => {
    expect(spec().linux.readonlyPaths).toContain(p);
    expect(spec().linux.maskedPaths).not.toContain(p);
  });

  it('hides the /sys directories present on the host behind a read-only bind of an empty directory', () => {
    const s = spec({ sysDirsHidden: ['/sys/firmware', '/sys/devices/virtual/powercap'] });
    for (const d of ['/sys/firmware', '/sys/devices/virtual/powercap']) {
      expect(mount(s, d)).toEqual({ destination: d, type: 'bind', source: '/var/lib/runbox/empty', options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'] });
    }
    expect(spec({ sysDirsHidden: [] }).mounts.some((m) => m.destination.startsWith('/sys/firmware'))).toBe(false);
  });

  it.each(['/proc/sys', '/proc/sysrq-trigger', '/proc/irq', '/proc/bus', '/proc/fs'])('makes %s read-only', (p) => {
    expect(spec().linux.readonlyPaths).toContain(p);
  });

  it("names runbox's CRIU configuration in the annotation runc hands to CRIU, and nothing without one", () => {
    const withConf = buildSpec({ ...INPUT, criuConfig: '/var/lib/runbox/criu.conf' }) as { annotations?: Record<string, string> };
    expect(withConf.annotations).toEqual({ 'org.criu.config': '/var/lib/runbox/criu.conf' });
    expect((buildSpec(INPUT) as { annotations?: unknown }).annotations).toBeUndefined();
  });

  it('uses the exported masked/readonly path lists', () => {
    const s = spec();
    expect(s.linux.maskedPaths).toEqual(MASKED_PATHS);
    expect(s.linux.readonlyPaths).toEqual(READONLY_PATHS);
  });

  it.each(['CAP_SYS_ADMIN', 'CAP_SYS_MODULE', 'CAP_SYS_PTRACE', 'CAP_SYS_BOOT', 'CAP_SYS_RAWIO', 'CAP_DAC_READ_SEARCH', 'CAP_SYS_TIME', 'CAP_BPF', 'CAP_PERFMON', 'CAP_SYS_RESOURCE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG'])(
    'does not grant %s in any set',
    (cap) => {
      const c = spec().process.capabilities;
      for (const set of ['bounding', 'effective', 'permitted', 'inheritable', 'ambient'] as const) expect(c[set]).not.toContain(cap);
      expect(VPS_CAPABILITIES).not.toContain(cap);
    },
  );

  it('grants the documented set plus NET_ADMIN for the agent (which drops it), nothing inheritable or ambient', () => {
    const c = spec().process.capabilities;
    const agentSet = [...VPS_CAPABILITIES, ...AGENT_ONLY_CAPABILITIES];
    expect(c.bounding).toEqual(agentSet);
    expect(c.effective).toEqual(agentSet);
    expect(c.permitted).toEqual(agentSet);
    expect(AGENT_ONLY_CAPABILITIES).toEqual(['CAP_NET_ADMIN']);
    expect(c.bounding).toContain('CAP_CHOWN');
    expect(c.inheritable).toEqual([]);
    expect(c.ambient).toEqual([]);
  });

  it('jobs get no NET_ADMIN (NET_RAW stays: the bridge pins make spoofing useless); the agent is told to keep NET_ADMIN only with tun', () => {
    expect(VPS_CAPABILITIES).not.toContain('CAP_NET_ADMIN');
    expect(VPS_CAPABILITIES).toContain('CAP_NET_RAW');
    expect(spec().process.env).not.toContain(AGENT_KEEP_NET_ADMIN);
    expect(spec({ tun: true }).process.env).toContain(AGENT_KEEP_NET_ADMIN);
    expect(AGENT_KEEP_NET_ADMIN).toBe('RUNBOX_AGENT_KEEP_NET_ADMIN=1');
  });

  it('denies /dev/net/tun (char 10:200) unless tun is on; with tun it is allowed and made', () => {
    const off = spec();
    expect(off.linux.resources.devices).toEqual([
      { allow: false, access: 'rwm' },
      { allow: false, type: 'c', major: 10, minor: 200, access: 'rwm' },
    ]);
    expect(off.linux.devices).toBeUndefined();
    const on = spec({ tun: true });
    expect(on.linux.resources.devices).toEqual([
      { allow: false, access: 'rwm' },
      { allow: true, type: 'c', major: 10, minor: 200, access: 'rwm' },
    ]);
    expect(on.linux.devices).toEqual([{ path: '/dev/net/tun', type: 'c', major: 10, minor: 200, fileMode: 0o666, uid: 0, gid: 0 }]);
  });

  it('sets noNewPrivileges', () => {
    expect(spec().process.noNewPrivileges).toBe(true);
  });

  it.each([
    [1, 100_000],
    [0.5, 50_000],
    [2, 200_000],
    [16, 1_600_000],
    [0.25, 25_000],
    [0.0123, 1230],
    [0.01, 1000],
    [0.009, 1000],
    [0.001, 1000],
    [0.0000001, 1000],
    [1 / 3, 33_333],
  ])('cpus %d -> quota %d per 100ms period', (cpus, quota) => {
    expect(spec({ cpus }).linux.resources.cpu).toEqual({ quota, period: 100_000 });
  });

  it.each([8 * 1024 * 1024, 268_435_456, 8_589_934_592])('memory limit is %d bytes as given', (memoryBytes) => {
    expect(spec({ memoryBytes }).linux.resources.memory).toEqual({ limit: memoryBytes });
  });

  it('sets the pids limit and denies all devices by default', () => {
    const r = spec({ pids: 77 }).linux.resources;
    expect(r.pids).toEqual({ limit: 77 });
    expect(r.devices[0]).toEqual({ allow: false, access: 'rwm' });
  });

  it('sets RLIMIT_NOFILE soft = hard = nofile', () => {
    expect(spec({ nofile: 4096 }).process.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }]);
  });

  it('embeds the VPS seccomp profile', () => {
    expect(spec().linux.seccomp).toEqual(vpsSeccompProfile());
  });
});
