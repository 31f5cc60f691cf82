/**
 * The VPS seccomp profile: allow by default, deny the syscalls that reach past the VPS boundary.
 *
 * A deny list (like LXC's default) rather than Docker's allow list: VPSs run arbitrary userlands
 * (apt, compilers, language runtimes) and an allow list breaks new syscalls silently. What is denied:
 * kernel modules, kexec, reboot, swap, clock and time changes, accounting, quotactl, keyrings, bpf,
 * perf, userfaultfd, io_uring (large attack surface), the new mount API, mount/umount/pivot_root,
 * open_by_handle_at (the 2014 "shocker" container escape), setns/unshare and clone with namespace
 * flags (no nested namespaces, in particular no unprivileged user namespaces), and clone3 (answered
 * with ENOSYS so glibc falls back to clone, whose flags seccomp can inspect; clone3 passes them in
 * memory where a filter cannot see them).
 */
const DENIED = [
  'acct', 'add_key', 'bpf', 'clock_adjtime', 'clock_settime', 'create_module', 'delete_module',
  'finit_module', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'get_kernel_syms', 'init_module',
  'io_uring_enter', 'io_uring_register', 'io_uring_setup', 'ioperm', 'iopl', 'kexec_file_load',
  'kexec_load', 'keyctl', 'lookup_dcookie', 'mount', 'mount_setattr', 'move_mount', 'nfsservctl',
  'open_by_handle_at', 'open_tree', 'perf_event_open', 'pivot_root', 'quotactl', 'quotactl_fd',
  'reboot', 'request_key', 'setns', 'settimeofday', 'stime', 'swapoff', 'swapon', 'syslog', 'sysfs',
  '_sysctl', 'umount', 'umount2', 'unshare', 'uselib', 'userfaultfd', 'ustat', 'vm86', 'vm86old',
] as const;

const EPERM = 1;
const ENOSYS = 38;

// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
const CLONE_NS_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];

export interface SeccompProfile {
  defaultAction: string;
  architectures: string[];
  syscalls: Array<{
    names: string[];
    action: string;
    errnoRet?: number;
    args?: Array<{ index: number; value: number; valueTwo: number; op: string }>;
  }>;
}

export function vpsSeccompProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls: [
      { names: [...DENIED], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      // One rule per flag: rules for the same syscall are OR-ed, and MASKED_EQ can only test "== value".
      ...CLONE_NS_FLAGS.map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      })),
    ],
  };
}
