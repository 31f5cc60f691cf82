/**
 * The VPS seccomp profile: an allow list. Any syscall not named here gets ENOSYS, so a syscall the
 * kernel adds later is closed until it is reviewed, and libcs and runtimes fall back as they do on
 * an older kernel (glibc's clone3 → clone, fchmodat2 → fchmodat).
 * Families that reach past the VPS get EPERM, the kernel's own answer to a missing capability.
 *
 * Derived from Docker's default profile (moby profiles/seccomp/default.json) for a container with
 * runbox's capabilities (no SYS_ADMIN, SYS_PTRACE, SYS_TIME, SYS_MODULE, SYS_BOOT, SYS_RAWIO,
 * SYS_NICE, SYSLOG, BPF, PERFMON, DAC_READ_SEARCH; SYS_CHROOT yes), with its argument rules
 * (clone flags, personality, socket families), plus runbox's own refusals (io_uring, which Docker
 * allowed until 2023). What the agent (runtime/agent/agent.c) and CRIU need is on the list: CRIU's
 * parasite runs with the filter suspended (PTRACE_O_SUSPEND_SECCOMP) during a dump, and a restore
 * reinstalls each task's filter from its images as the last step, so neither adds syscalls.
 */

/** Allowed whatever the arguments. x86 32-bit names (`*32`, `*64`, `ipc`) included. */
export const ALLOWED: readonly string[] = [
  // files and directories
  'access', 'chdir', 'chmod', 'chown', 'chown32', 'chroot', 'close', 'close_range', 'copy_file_range', 'creat',
  'dup', 'dup2', 'dup3', 'faccessat', 'faccessat2', 'fadvise64', 'fadvise64_64', 'fallocate', 'fchdir', 'fchmod',
  'fchmodat', 'fchmodat2', 'fchown', 'fchown32', 'fchownat', 'fcntl', 'fcntl64', 'fdatasync', 'fgetxattr',
  'flistxattr', 'flock', 'fremovexattr', 'fsetxattr', 'fstat', 'fstat64', 'fstatat64', 'fstatfs', 'fstatfs64',
  'fsync', 'ftruncate', 'ftruncate64', 'futimesat', 'getcwd', 'getdents', 'getdents64', 'getxattr', 'getxattrat',
  'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch', 'fanotify_mark', 'ioctl', 'lchown',
  'lchown32', 'lgetxattr', 'link', 'linkat', 'listxattr', 'listxattrat', 'llistxattr', '_llseek', 'lremovexattr',
  'lseek', 'lsetxattr', 'lstat', 'lstat64', 'mkdir', 'mkdirat', 'mknod', 'mknodat', 'name_to_handle_at',
  'newfstatat', 'open', 'openat', 'openat2', 'pread64', 'preadv', 'preadv2', 'pwrite64', 'pwritev', 'pwritev2',
  'read', 'readahead', 'readlink', 'readlinkat', 'readv', 'removexattr', 'removexattrat', 'rename', 'renameat',
  'renameat2', 'rmdir', 'sendfile', 'sendfile64', 'setxattr', 'setxattrat', 'splice', 'stat', 'stat64', 'statfs',
  'statfs64', 'statx', 'symlink', 'symlinkat', 'sync', 'sync_file_range', 'syncfs', 'tee', 'truncate',
  'truncate64', 'umask', 'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64', 'utimes', 'vmsplice',
  'write', 'writev', 'cachestat',
  // polling and event fds
  'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait', 'epoll_pwait2', 'epoll_wait',
  'epoll_wait_old', 'eventfd', 'eventfd2', 'pipe', 'pipe2', 'poll', 'ppoll', 'ppoll_time64', 'pselect6',
  'pselect6_time64', 'select', '_newselect', 'signalfd', 'signalfd4', 'timerfd_create', 'timerfd_gettime',
  'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64',
  // Linux AIO (not io_uring)
  'io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'io_setup', 'io_submit',
  // memory
  'brk', 'madvise', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore', 'mlock', 'mlock2', 'mlockall', 'mmap',
  'mmap2', 'mprotect', 'mremap', 'mseal', 'msync', 'munlock', 'munlockall', 'munmap', 'pkey_alloc', 'pkey_free',
  'pkey_mprotect', 'remap_file_pages', 'map_shadow_stack',
  // processes, threads, signals (clone: see cloneRules; clone3: ENOSYS)
  'execve', 'execveat', 'exit', 'exit_group', 'fork', 'vfork', 'wait4', 'waitid', 'waitpid', 'kill', 'tkill', 'tgkill',
  'pidfd_open', 'pidfd_send_signal', 'process_mrelease', 'pause', 'restart_syscall', 'rt_sigaction',
  'rt_sigpending', 'rt_sigprocmask', 'rt_sigqueueinfo', 'rt_sigreturn', 'rt_sigsuspend', 'rt_sigtimedwait',
  'rt_sigtimedwait_time64', 'rt_tgsigqueueinfo', 'sigaltstack', 'sigprocmask', 'sigreturn', 'set_tid_address',
  'set_robust_list', 'get_robust_list', 'rseq', 'futex', 'futex_time64', 'futex_waitv', 'futex_wait', 'futex_wake',
  'futex_requeue', 'prctl', 'arch_prctl', 'get_thread_area', 'set_thread_area', 'modify_ldt', 'seccomp',
  'landlock_add_rule', 'landlock_create_ruleset', 'landlock_restrict_self', 'uretprobe',
  // ptrace of the VPS's own processes (gdb, strace, sanitizers): see the DENIED comment
  'ptrace', 'process_vm_readv', 'process_vm_writev',
  // credentials, limits, scheduling
  'capget', 'capset', 'getegid', 'getegid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32', 'getgroups',
  'getgroups32', 'getpgid', 'getpgrp', 'getpid', 'getppid', 'getpriority', 'getresgid', 'getresgid32', 'getresuid',
  'getresuid32', 'getrlimit', 'getrusage', 'getsid', 'gettid', 'getuid', 'getuid32', 'setfsgid', 'setfsgid32',
  'setfsuid', 'setfsuid32', 'setgid', 'setgid32', 'setgroups', 'setgroups32', 'setpgid', 'setpriority', 'setregid',
  'setregid32', 'setresgid', 'setresgid32', 'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setrlimit',
  'setsid', 'setuid', 'setuid32', 'prlimit64', 'ugetrlimit', 'ioprio_get', 'ioprio_set', 'getcpu',
  'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_get_priority_max', 'sched_get_priority_min',
  'sched_getscheduler', 'sched_rr_get_interval', 'sched_rr_get_interval_time64', 'sched_setaffinity',
  'sched_setattr', 'sched_setparam', 'sched_setscheduler', 'sched_yield',
  // time (reading; setting the clock is denied; adjtimex/clock_adjtime change nothing without CAP_SYS_TIME and
  // glibc implements adjtimex and ntp_gettime with them)
  'adjtimex', 'alarm', 'clock_adjtime', 'clock_adjtime64', 'clock_getres', 'clock_getres_time64', 'clock_gettime',
  'clock_gettime64', 'clock_nanosleep', 'clock_nanosleep_time64', 'getitimer', 'gettimeofday', 'nanosleep',
  'setitimer', 'time', 'times', 'timer_create', 'timer_delete', 'timer_getoverrun', 'timer_gettime',
  'timer_gettime64', 'timer_settime', 'timer_settime64',
  // sockets (socket and socketpair: see socketRules; socketcall: see DENIED)
  'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen', 'recv', 'recvfrom',
  'recvmmsg', 'recvmmsg_time64', 'recvmsg', 'send', 'sendmmsg', 'sendmsg', 'sendto', 'setsockopt', 'shutdown',
  // System V and POSIX IPC (the VPS has its own IPC namespace)
  'ipc', 'msgctl', 'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop', 'semtimedop', 'semtimedop_time64',
  'shmat', 'shmctl', 'shmdt', 'shmget', 'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive',
  'mq_timedreceive_time64', 'mq_timedsend', 'mq_timedsend_time64', 'mq_unlink',
  // system information
  'getrandom', 'sysinfo', 'uname',
];

/**
 * Refused with EPERM whatever the arguments, by family (the security test probes one of each).
 * ptrace is *allowed* (Docker does so on kernels >= 4.8, where seccomp is re-checked after a
 * tracer changes a syscall, so tracing cannot bypass the filter): without CAP_SYS_PTRACE it
 * reaches only the VPS's own processes, and gdb, strace and LeakSanitizer need it. The agent is
 * not a security boundary anyway (docs/SECURITY.md).
 */
export const DENIED: Readonly<Record<string, readonly string[]>> = {
  namespaces: ['unshare', 'setns'],
  mount: [
    'mount', 'umount', 'umount2', 'pivot_root', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'open_tree', 'open_tree_attr',
    'move_mount', 'mount_setattr',
  ],
  bpf: ['bpf'],
  perf: ['perf_event_open', 'lookup_dcookie'],
  keyring: ['add_key', 'keyctl', 'request_key'],
  userfaultfd: ['userfaultfd'],
  io_uring: ['io_uring_setup', 'io_uring_enter', 'io_uring_register'],
  kexec: ['kexec_load', 'kexec_file_load'],
  modules: ['init_module', 'finit_module', 'delete_module', 'create_module', 'query_module', 'get_kernel_syms'],
  reboot: ['reboot'],
  swap: ['swapon', 'swapoff'],
  accounting: ['acct', 'quotactl', 'quotactl_fd'],
  clock: ['settimeofday', 'stime', 'clock_settime', 'clock_settime64'],
  handles: ['open_by_handle_at'],
  hardware: ['iopl', 'ioperm', 'vm86', 'vm86old'],
  kernel_log: ['syslog'],
  host_identity: ['sethostname', 'setdomainname'], // the host sets the hostname (nsenter --uts)
  privileged: ['fanotify_init', 'vhangup'], // CAP_SYS_ADMIN, CAP_SYS_TTY_CONFIG
  obsolete: ['nfsservctl', 'sysfs', '_sysctl', 'uselib', 'ustat'],
  // x86 32-bit socket multiplexer, reachable with `int 0x80` from any x86-64 process where the host
  // has IA32 emulation: its arguments sit in memory, so a family rule cannot see them, and allowing
  // it (as Docker does) lets AF_VSOCK and every other family through. 32-bit programs keep the
  // direct socket syscalls (Linux >= 4.3), which socketRules filter. libseccomp turns socket rules
  // into socketcall rules on x86 and fails on their mixed actions ("file exists") unless this
  // unconditional rule comes first: vpsSeccompProfile keeps that order.
  socketcall: ['socketcall'],
};

/** Namespace flags of clone(2); clone with any of them is refused (no nested namespaces). */
export const CLONE_NAMESPACE_FLAGS = {
  CLONE_NEWNS: 0x00020000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
} as const;

/** socket(2) families a VPS may open; any other family gets EAFNOSUPPORT, as if the kernel lacked it. */
export const SOCKET_FAMILIES = {
  // AF_NETLINK: routes, addresses and nftables of the VPS's own netns, glibc's getaddrinfo/getifaddrs.
  // AF_PACKET: tcpdump, arping, DHCP clients; needs CAP_NET_RAW and stays inside the VPS's netns.
  AF_UNIX: 1, AF_INET: 2, AF_INET6: 10, AF_NETLINK: 16, AF_PACKET: 17,
} as const;

/**
 * personality(2) values allowed (Docker's): PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
 * Others (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, foreign personas) get the default
 * ENOSYS: "any value but these" would take dozens of range rules to answer with EPERM.
 */
export const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff] as const;

export const EPERM = 1;
export const ENOSYS = 38;
export const EAFNOSUPPORT = 97;

export interface SeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: 'SCMP_CMP_EQ' | 'SCMP_CMP_NE' | 'SCMP_CMP_GT' | 'SCMP_CMP_MASKED_EQ';
}

export interface SeccompRule {
  names: string[];
  action: 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO';
  errnoRet?: number;
  args?: SeccompArg[];
}

export interface SeccompProfile {
  defaultAction: 'SCMP_ACT_ERRNO';
  defaultErrnoRet: number;
  architectures: string[];
  syscalls: SeccompRule[];
}

const errno = (names: string[], errnoRet: number, args?: SeccompArg[]): SeccompRule =>
  ({ names, action: 'SCMP_ACT_ERRNO', errnoRet, ...(args ? { args } : {}) });
const allow = (names: string[], args?: SeccompArg[]): SeccompRule => ({ names, action: 'SCMP_ACT_ALLOW', ...(args ? { args } : {}) });

/**
 * clone: allowed when no namespace flag is set (one MASKED_EQ against all of them), refused with
 * EPERM when any is (one rule per flag: rules are OR-ed, and MASKED_EQ can only test equality).
 * The two never match the same call. clone3 passes its flags in memory, out of a filter's
 * reach: it gets ENOSYS so libc falls back to clone.
 */
export function cloneRules(): SeccompRule[] {
  const flags = Object.values(CLONE_NAMESPACE_FLAGS);
  const all = flags.reduce((a, f) => a | f, 0);
  return [
    allow(['clone'], [{ index: 0, value: all, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]),
    ...flags.map((f) => errno(['clone'], EPERM, [{ index: 0, value: f, valueTwo: f, op: 'SCMP_CMP_MASKED_EQ' }])),
    errno(['clone3'], ENOSYS),
  ];
}

/**
 * Aligned power-of-two blocks covering [lo, hi] exactly, each as MASKED_EQ over the low 32 bits.
 * A filter cannot say "not one of these values" in one rule (runc turns several conditions on one
 * argument into OR-ed rules), so the complement of an allowed set is spelled out as blocks.
 */
export function rangeBlocks(lo: number, hi: number, index = 0): SeccompArg[] {
  const out: SeccompArg[] = [];
  let x = lo;
  while (x <= hi) {
    let size = 1;
    while (x % (size * 2) === 0 && x + size * 2 - 1 <= hi) size *= 2;
    out.push(size === 1 ? { index, value: x, op: 'SCMP_CMP_EQ' } : { index, value: 0x1_0000_0000 - size, valueTwo: x, op: 'SCMP_CMP_MASKED_EQ' });
    x += size;
  }
  return out;
}

/** Both create sockets of the family in their first argument (socketpair too loads its module). */
const SOCKET_CALLS = ['socket', 'socketpair'] as const;

/**
 * socket, socketpair: each allowed family by exact value; every other value (holes below the
 * largest allowed family as blocks, anything above it with GT) gets EAFNOSUPPORT. The allow side
 * compares all 64 bits: the kernel keeps only the low 32 of an int argument, so Docker's
 * `family != 40` lets `socket(0x1_00000028)` open an AF_VSOCK socket; an exact match does not.
 */
export function socketRules(): SeccompRule[] {
  const families = [...new Set(Object.values(SOCKET_FAMILIES))].sort((a, b) => a - b);
  const holes: SeccompArg[] = [];
  let next = 0;
  for (const f of families) {
    if (f > next) holes.push(...rangeBlocks(next, f - 1));
    next = f + 1;
  }
  return [
    ...families.map((f) => allow([...SOCKET_CALLS], [{ index: 0, value: f, op: 'SCMP_CMP_EQ' }])),
    ...holes.map((a) => errno([...SOCKET_CALLS], EAFNOSUPPORT, [a])),
    errno([...SOCKET_CALLS], EAFNOSUPPORT, [{ index: 0, value: next - 1, op: 'SCMP_CMP_GT' }]),
  ];
}

export function personalityRules(): SeccompRule[] {
  return PERSONALITIES.map((p) => allow(['personality'], [{ index: 0, value: p, op: 'SCMP_CMP_EQ' }]));
}

/** Builds the profile for config.json's linux.seccomp. Pure: a fresh document on every call. */
export function vpsSeccompProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: ENOSYS,
    // x86-64 plus its 32-bit (int 0x80) and x32 ABIs, as Docker: every other ABI is killed by the
    // filter's bad-arch action. libseccomp applies each rule to all three, by name.
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls: [
      allow([...ALLOWED]),
      errno(Object.values(DENIED).flat(), EPERM), // before socketRules: see DENIED.socketcall
      ...cloneRules(),
      ...socketRules(),
      ...personalityRules(),
    ],
  };
}
