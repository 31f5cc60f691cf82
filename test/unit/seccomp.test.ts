import { describe, it, expect } from 'vitest';
import {
  ALLOWED, CLONE_NAMESPACE_FLAGS, DENIED, EAFNOSUPPORT, ENOSYS, EPERM, PERSONALITIES, SOCKET_FAMILIES,
  rangeBlocks, vpsSeccompProfile, type SeccompArg, type SeccompProfile,
} from '../../runtime/oci/seccomp.js';

const profile = vpsSeccompProfile();

function matches(a: SeccompArg, args: bigint[]): boolean {
  const x = BigInt.asUintN(64, args[a.index] ?? 0n);
  const v = BigInt(a.value);
  switch (a.op) {
    case 'SCMP_CMP_EQ': return x === v;
    case 'SCMP_CMP_NE': return x !== v;
    case 'SCMP_CMP_GT': return x > v;
    case 'SCMP_CMP_MASKED_EQ': return (x & v) === BigInt(a.valueTwo ?? 0);
  }
}

/**
 * libseccomp's semantics as runc drives it: a syscall with an unconditional rule ignores every
 * other rule for it; otherwise the conditional rules that match must agree (the profile never
 * relies on overlap precedence), and no match means the default action.
 */
function evaluate(p: SeccompProfile, name: string, args: bigint[] = []): string {
  const rules = p.syscalls.filter((r) => r.names.includes(name));
  const show = (r: (typeof rules)[number]) => (r.action === 'SCMP_ACT_ERRNO' ? `errno ${r.errnoRet}` : 'allow');
  const unconditional = rules.find((r) => !r.args?.length);
  if (unconditional) return show(unconditional);
  const hits = [...new Set(rules.filter((r) => r.args!.every((a) => matches(a, args))).map(show))];
  expect(hits.length, `${name}(${args.join(', ')}) matches rules with different actions: ${hits.join(' / ')}`).toBeLessThanOrEqual(1);
  return hits[0] ?? `errno ${p.defaultErrnoRet}`;
}

describe('vpsSeccompProfile: an allow list', () => {
  it('answers anything not listed with ENOSYS, on x86-64, x86 and x32', () => {
    expect(profile.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(profile.defaultErrnoRet).toBe(ENOSYS);
    expect(profile.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  });

  it.each([
    'read', 'write', 'openat', 'close', 'execve', 'fork', 'vfork', 'wait4', 'mmap', 'mprotect', 'brk', 'futex',
    'epoll_pwait', 'signalfd4', 'timerfd_create', 'eventfd2', 'pipe2', 'connect', 'bind', 'sendmsg', 'chroot',
    'mknod', 'ptrace', 'process_vm_readv', 'seccomp', 'prctl', 'close_range', 'statx', 'getrandom', 'rseq',
    'io_submit', 'memfd_create', 'setuid', 'setgroups', 'clock_gettime', 'adjtimex', 'ipc', 'arch_prctl',
  ])('allows %s whatever the arguments', (name) => {
    expect(evaluate(profile, name, [0xdeadn, 1n])).toBe('allow');
  });

  it.each([
    'kcmp', 'pidfd_getfd', 'process_madvise', 'mbind', 'set_mempolicy', 'get_mempolicy', 'migrate_pages', 'move_pages',
    'listmount', 'statmount', 'lsm_get_self_attr', 'name_that_does_not_exist',
  ])('answers %s (not on the list) with ENOSYS', (name) => {
    expect(evaluate(profile, name)).toBe(`errno ${ENOSYS}`);
  });

  it.each(Object.entries(DENIED).flatMap(([family, names]) => names.map((n) => [family, n] as const)))(
    'refuses %s: %s with EPERM, unconditionally',
    (_family, name) => {
      expect(evaluate(profile, name, [0n])).toBe(`errno ${EPERM}`);
    },
  );

  it.each([
    ['namespaces', 'unshare'], ['namespaces', 'setns'], ['mount', 'fsopen'], ['mount', 'open_tree'], ['mount', 'move_mount'],
    ['mount', 'mount_setattr'], ['mount', 'pivot_root'], ['io_uring', 'io_uring_setup'], ['userfaultfd', 'userfaultfd'],
    ['bpf', 'bpf'], ['perf', 'perf_event_open'], ['keyring', 'keyctl'], ['kexec', 'kexec_file_load'],
    ['modules', 'finit_module'], ['handles', 'open_by_handle_at'], ['clock', 'clock_settime'], ['socketcall', 'socketcall'],
  ])('keeps runbox refusals: %s has %s', (family, name) => {
    expect(DENIED[family]).toContain(name);
  });

  it('lists no syscall both as allowed and refused, nor twice', () => {
    const denied = Object.values(DENIED).flat();
    expect(ALLOWED.filter((n) => denied.includes(n))).toEqual([]);
    expect(new Set(ALLOWED).size).toBe(ALLOWED.length);
    expect(new Set(denied).size).toBe(denied.length);
  });

  it('never gives a syscall an unconditional rule and conditional ones (libseccomp would drop the latter)', () => {
    const unconditional = new Set(profile.syscalls.filter((r) => !r.args?.length).flatMap((r) => r.names));
    const conditional = profile.syscalls.filter((r) => r.args?.length).flatMap((r) => r.names);
    expect(conditional.filter((n) => unconditional.has(n))).toEqual([]);
    for (const name of ['clone', 'socket', 'socketpair', 'personality']) expect(conditional).toContain(name);
  });

  it('puts the unconditional socketcall refusal before every socket rule (libseccomp maps socket rules onto socketcall on x86)', () => {
    const socketcall = profile.syscalls.findIndex((r) => r.names.includes('socketcall'));
    const socket = profile.syscalls.findIndex((r) => r.names.includes('socket'));
    expect(socketcall).toBeGreaterThanOrEqual(0);
    expect(socketcall).toBeLessThan(socket);
    expect(profile.syscalls[socketcall]!.args).toBeUndefined();
  });

  it('writes only numbers that survive JSON into Go uint64 (integers below 2^53)', () => {
    for (const r of profile.syscalls) {
      for (const a of r.args ?? []) {
        for (const v of [a.value, a.valueTwo ?? 0]) expect(Number.isSafeInteger(v) && v >= 0, JSON.stringify(a)).toBe(true);
      }
    }
  });

  it('returns a fresh document each call', () => {
    const a = vpsSeccompProfile();
    a.syscalls[0]!.names.push('kexec_load');
    expect(vpsSeccompProfile()).toEqual(profile);
  });
});

describe('clone: no namespace flags', () => {
  const { CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET } = CLONE_NAMESPACE_FLAGS;

  it.each([
    ['fork-like (SIGCHLD)', 0x11],
    ['glibc fork', 0x01200011],
    ['pthread_create', 0x003d0f00],
    ['vfork-like', 0x4111],
    ['posix_spawn (CLONE_VM | CLONE_VFORK)', 0x4111 | 0x100],
  ])('allows clone for %s', (_what, flags) => {
    expect(evaluate(profile, 'clone', [BigInt(flags)])).toBe('allow');
  });

  it.each(Object.entries(CLONE_NAMESPACE_FLAGS))('refuses clone with %s with EPERM', (_name, flag) => {
    expect(evaluate(profile, 'clone', [BigInt(flag | 0x11)])).toBe(`errno ${EPERM}`);
    expect(evaluate(profile, 'clone', [BigInt(flag | 0x003d0f00)])).toBe(`errno ${EPERM}`);
  });

  it.each([
    ['user + SIGCHLD', CLONE_NEWUSER | 0x11],
    ['net + mount', CLONE_NEWNET | CLONE_NEWNS],
    ['all namespaces', CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET],
  ])('refuses clone with %s', (_what, flags) => {
    expect(evaluate(profile, 'clone', [BigInt(flags)])).toBe(`errno ${EPERM}`);
  });

  it('answers clone3 with ENOSYS so libc falls back to clone', () => {
    expect(evaluate(profile, 'clone3')).toBe(`errno ${ENOSYS}`);
  });
});

describe('socket and socketpair: allowed families only', () => {
  const allowed = new Set<number>(Object.values(SOCKET_FAMILIES));

  it('allows AF_UNIX, AF_INET, AF_INET6, AF_NETLINK and AF_PACKET', () => {
    expect([...allowed].sort((a, b) => a - b)).toEqual([1, 2, 10, 16, 17]);
  });

  it.each(['socket', 'socketpair'])('%s: every family 0..63 is either allowed or EAFNOSUPPORT, never the default', (name) => {
    for (let f = 0; f < 64; f++) {
      expect(evaluate(profile, name, [BigInt(f), 1n, 0n]), `family ${f}`).toBe(allowed.has(f) ? 'allow' : `errno ${EAFNOSUPPORT}`);
    }
  });

  it.each([
    ['AF_VSOCK', 40n], ['AF_ALG', 38n], ['AF_XDP', 44n], ['AF_BLUETOOTH', 31n], ['AF_KEY', 15n], ['AF_TIPC', 30n],
    ['AF_VSOCK with junk in the upper half', 0x1_0000_0028n], ['AF_INET with junk in the upper half', 0xffff_ffff_0000_0002n],
    ['negative', -1n],
  ])('refuses %s', (_what, family) => {
    expect(evaluate(profile, 'socket', [family, 1n, 0n])).toBe(`errno ${EAFNOSUPPORT}`);
  });
});

describe('personality: Docker\'s values only', () => {
  it.each(PERSONALITIES.map((p) => [p]))('allows 0x%s', (p) => {
    expect(evaluate(profile, 'personality', [BigInt(p)])).toBe('allow');
  });

  it.each([
    ['ADDR_NO_RANDOMIZE', 0x0040000n], ['READ_IMPLIES_EXEC', 0x0400000n], ['MMAP_PAGE_ZERO', 0x0100000n],
    ['PER_BSD', 0x6n], ['query with junk in the upper half', 0x1_ffff_ffffn],
  ])('answers %s with ENOSYS', (_what, p) => {
    expect(evaluate(profile, 'personality', [p])).toBe(`errno ${ENOSYS}`);
  });
});

describe('rangeBlocks', () => {
  const cover = (lo: number, hi: number) => {
    const blocks = rangeBlocks(lo, hi);
    const hit = (x: number) => blocks.filter((b) => matches(b, [BigInt(x)])).length;
    return { blocks, hit };
  };

  it.each([
    [0, 0, [{ index: 0, value: 0, op: 'SCMP_CMP_EQ' }]],
    [3, 9, [
      { index: 0, value: 3, op: 'SCMP_CMP_EQ' },
      { index: 0, value: 0xfffffffc, valueTwo: 4, op: 'SCMP_CMP_MASKED_EQ' },
      { index: 0, value: 0xfffffffe, valueTwo: 8, op: 'SCMP_CMP_MASKED_EQ' },
    ]],
    [11, 15, [{ index: 0, value: 11, op: 'SCMP_CMP_EQ' }, { index: 0, value: 0xfffffffc, valueTwo: 12, op: 'SCMP_CMP_MASKED_EQ' }]],
  ])('[%i, %i] → aligned blocks', (lo, hi, expected) => {
    expect(rangeBlocks(lo, hi)).toEqual(expected);
  });

  it.each([[0, 0], [3, 9], [11, 15], [1, 1000], [17, 4096], [5, 6]])('[%i, %i] is covered exactly once, nothing around it', (lo, hi) => {
    const { hit } = cover(lo, hi);
    for (let x = Math.max(0, lo - 20); x <= hi + 20; x++) expect(hit(x), `value ${x}`).toBe(x >= lo && x <= hi ? 1 : 0);
  });
});
