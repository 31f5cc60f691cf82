import { deviceRules, TUN_NODE } from './devices.js';
import { vpsSeccompProfile } from './seccomp.js';
import { AGENT_SECCOMP_ENV } from './seccomp-bpf.js';

/** Where the agent binary appears inside every VPS (bind-mounted read-only from the host). */
export const AGENT_PATH_IN_VPS = '/.runbox/agent';

/**
 * Capabilities of root inside a VPS: Docker's default set. Not NET_ADMIN (nf_tables, xfrm, tc,
 * module autoload: the kernel surface of most recent container escapes; docs/SECURITY.md), nor
 * SYS_ADMIN, SYS_MODULE, SYS_BOOT, SYS_RAWIO, SYS_PTRACE, SYS_TIME, DAC_READ_SEARCH
 * (open_by_handle_at), BPF, PERFMON. NET_RAW stays (ping, traceroute, tcpdump of the VPS's own
 * traffic): what it could forge, the host's bridge drops (runtime/net/firewall.ts, the pins).
 */
export const VPS_CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_NET_RAW', 'CAP_SYS_CHROOT', 'CAP_MKNOD', 'CAP_AUDIT_WRITE', 'CAP_SETFCAP',
];

/**
 * Granted to the agent (PID 1) only: it brings loopback up with it and then drops it from every
 * set, bounding set included, before any job process exists (agent.c drop_net_admin). With
 * `tun` it keeps it (AGENT_KEEP_NET_ADMIN): creating a tun/tap device needs it.
 */
export const AGENT_ONLY_CAPABILITIES = ['CAP_NET_ADMIN'];
export const AGENT_KEEP_NET_ADMIN = 'RUNBOX_AGENT_KEEP_NET_ADMIN=1';

/**
 * Kernel interfaces hidden from a VPS. runc masks a file with a bind of /dev/null, but a directory
 * with a tmpfs of its own, and CRIU archives every tmpfs with `tar | gzip` on each dump and
 * unpacks it on each restore (~10 ms each way, all of it inside the job's pause). So directories
 * are not masked by runc: those under /proc become read-only (runc refuses bind mounts inside
 * /proc), those under /sys are covered by a read-only bind of an empty host directory.
 */
export const MASKED_PATHS = ['/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug'];

/** Directories under /proc that runc's defaults mask: read-only here (their writes reach hardware). */
export const PROC_DIRS_READONLY = ['/proc/acpi', '/proc/asound', '/proc/scsi'];

/** Directories under /sys hidden behind an empty directory (firmware tables, RAPL energy counters). */
export const SYS_DIRS_HIDDEN = ['/sys/firmware', '/sys/devices/virtual/powercap'];

export const READONLY_PATHS = [...PROC_DIRS_READONLY, '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export interface SpecInput {
  /** Absolute path of the mounted root filesystem (the overlay). */
  rootfs: string;
  hostname: string;
  agentHostPath: string;
  /** cgroupfs path relative to each hierarchy root, e.g. "/runbox-ab12cd/3f9a...". */
  cgroupsPath: string;
  /** Path of a prepared network namespace; undefined means a fresh one with loopback only. */
  netnsPath?: string;
  memoryBytes: number;
  cpus: number;
  pids: number;
  /** RLIMIT_NOFILE; must not exceed the host's own hard limit (no CAP_SYS_RESOURCE here). */
  nofile: number;
  /** An empty, read-only host directory: bound over SYS_DIRS_HIDDEN. */
  emptyDir: string;
  /** Those of SYS_DIRS_HIDDEN that exist on this host (a bind needs its mount point). */
  sysDirsHidden: readonly string[];
  /** CRIU configuration file for this VPS's dumps and restores (see checkpoint/criu-config.ts). */
  criuConfig?: string;
  /** RUNBOX_VPS_TUN: /dev/net/tun exists and is allowed, and jobs keep CAP_NET_ADMIN to use it. */
  tun?: boolean;
  /**
   * The seccomp program runc compiled from the profile once (oci/seccomp-bpf.ts), as hex: the agent
   * installs it itself, and runc is given no profile to compile. Absent: runc compiles the profile.
   */
  agentSeccomp?: string;
  /**
   * The VPS's own user namespace (the file `path`, made with its netns): root inside is host uid
   * (and gid) `hostId`, ids 0..count-1 inside are hostId..hostId+count-1 outside. Absent: root
   * inside is host root.
   */
  userns?: { hostId: number; count: number };
  /**
   * With `userns`: name the standard devices as bind mounts (crun, which tells CRIU only about the
   * bind mounts of the config; runc names its device binds to CRIU itself and fails when they are
   * in the config as well).
   */
  deviceMounts?: boolean;
}

const CFS_PERIOD_US = 100_000;

/**
 * The standard device nodes. In a user namespace the runtime cannot make nodes (mknod) and binds
 * the host's instead; named here as mounts so that the runtime tells CRIU they are external bind
 * mounts (CRIU refuses to dump a bind of a host file it was not told about).
 */
export const STANDARD_DEVICES = ['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', '/dev/tty'];

/** Builds the OCI runtime config.json for one VPS. Pure: same input, same document. */
export function buildSpec(input: SpecInput): Record<string, unknown> {
  const caps = [...VPS_CAPABILITIES, ...AGENT_ONLY_CAPABILITIES];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [AGENT_PATH_IN_VPS],
      // The agent's own environment (a job's is built from its spec).
      env: [
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        ...(input.tun ? [AGENT_KEEP_NET_ADMIN] : []),
        ...(input.agentSeccomp ? [`${AGENT_SECCOMP_ENV}=${input.agentSeccomp}`] : []),
      ],
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: input.nofile, soft: input.nofile }],
      noNewPrivileges: true,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.hostname,
    ...(input.criuConfig ? { annotations: { 'org.criu.config': input.criuConfig } } : {}),
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      // No tmpfs on /dev and /dev/shm (CRIU would archive them on every dump, see MASKED_PATHS):
      // runc then makes the device nodes in the VPS's own layer, and the agent makes /dev/shm there.
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      // Read-only cgroupfs: a writable one allows the release_agent escape (CVE-2022-0492).
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      ...input.sysDirsHidden.map((destination) => ({ destination, type: 'bind', source: input.emptyDir, options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'] })),
      { destination: AGENT_PATH_IN_VPS, type: 'bind', source: input.agentHostPath, options: ['bind', 'ro', 'nosuid', 'nodev'] },
      ...(input.userns && input.deviceMounts
        ? [...STANDARD_DEVICES, ...(input.tun ? [TUN_NODE.path] : [])].map((d) => ({ destination: d, type: 'bind', source: d, options: ['bind', 'nosuid', 'noexec'] }))
        : []),
    ],
    linux: {
      namespaces: [
        { type: 'pid' },
        { type: 'mount' },
        { type: 'uts' },
        { type: 'ipc' },
        { type: 'cgroup' },
        input.netnsPath ? { type: 'network', path: input.netnsPath } : { type: 'network' },
        // Made by the runtime with the others, which it then owns (CRIU needs that; net/network.ts).
        ...(input.userns ? [{ type: 'user' }] : []),
      ],
      ...(input.userns
        ? {
            uidMappings: [{ containerID: 0, hostID: input.userns.hostId, size: input.userns.count }],
            gidMappings: [{ containerID: 0, hostID: input.userns.hostId, size: input.userns.count }],
          }
        : {}),
      cgroupsPath: input.cgroupsPath,
      ...(input.tun ? { devices: [TUN_NODE] } : {}),
      resources: {
        devices: deviceRules(!!input.tun),
        memory: { limit: input.memoryBytes },
        cpu: { quota: Math.max(1000, Math.round(input.cpus * CFS_PERIOD_US)), period: CFS_PERIOD_US },
        pids: { limit: input.pids },
      },
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      ...(input.agentSeccomp ? {} : { seccomp: vpsSeccompProfile() }),
    },
  };
}
