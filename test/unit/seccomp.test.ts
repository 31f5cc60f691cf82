import { describe, it, expect } from 'vitest';
import { vpsSeccompProfile, type SeccompProfile } from '../../runtime/oci/seccomp.js';

const EPERM = 1;
const ENOSYS = 38;

const CLONE_NEWNS = 0x00020000;
const CLONE_NEWCGROUP = 0x02000000;
const CLONE_NEWUTS = 0x04000000;
const CLONE_NEWIPC = 0x08000000;
const CLONE_NEWUSER = 0x10000000;
const CLONE_NEWPID = 0x20000000;
const CLONE_NEWNET = 0x40000000;

/** Minimal libseccomp semantics: first matching rule wins, otherwise the default action. */
function evaluate(p: SeccompProfile, name: string, args: number[] = []): string {
  for (const rule of p.syscalls) {
    if (!rule.names.includes(name)) continue;
    const ok = (rule.args ?? []).every((a) => {
      expect(a.op).toBe('SCMP_CMP_MASKED_EQ');
      return (BigInt(args[a.index] ?? 0) & BigInt(a.value)) === BigInt(a.valueTwo);
    });
    if (ok) return rule.action === 'SCMP_ACT_ERRNO' ? `errno ${rule.errnoRet}` : rule.action;
  }
  return p.defaultAction;
}

const profile = vpsSeccompProfile();

describe('vpsSeccompProfile', () => {
  it('allows by default on x86 architectures', () => {
    expect(profile.defaultAction).toBe('SCMP_ACT_ALLOW');
    expect(profile.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  });

  it.each([
    'mount', 'umount', 'umount2', 'init_module', 'finit_module', 'delete_module', 'reboot', 'kexec_load', 'kexec_file_load',
    'open_by_handle_at', 'unshare', 'setns', 'bpf', 'pivot_root', 'keyctl', 'add_key', 'request_key', 'userfaultfd',
    'perf_event_open', 'io_uring_setup', 'io_uring_enter', 'fsopen', 'fsmount', 'move_mount', 'open_tree', 'swapon',
    'settimeofday', 'clock_settime', 'acct', 'syslog',
  ])('denies %s unconditionally with EPERM', (name) => {
    expect(evaluate(profile, name)).toBe(`errno ${EPERM}`);
    const rules = profile.syscalls.filter((r) => r.names.includes(name));
    expect(rules).toHaveLength(1);
    expect(rules[0]!.args).toBeUndefined();
    expect(rules[0]!.action).toBe('SCMP_ACT_ERRNO');
    expect(rules[0]!.errnoRet).toBe(EPERM);
  });

  it('answers clone3 with ENOSYS so libc falls back to clone', () => {
    const rules = profile.syscalls.filter((r) => r.names.includes('clone3'));
    expect(rules).toEqual([{ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS }]);
    expect(evaluate(profile, 'clone3')).toBe(`errno ${ENOSYS}`);
  });

  it.each(['read', 'write', 'openat', 'execve', 'fork', 'vfork', 'mmap', 'socket', 'chroot', 'mknod'])('allows %s', (name) => {
    expect(evaluate(profile, name)).toBe('SCMP_ACT_ALLOW');
  });

  it.each([
    ['CLONE_NEWNS', CLONE_NEWNS],
    ['CLONE_NEWCGROUP', CLONE_NEWCGROUP],
    ['CLONE_NEWUTS', CLONE_NEWUTS],
    ['CLONE_NEWIPC', CLONE_NEWIPC],
    ['CLONE_NEWUSER', CLONE_NEWUSER],
    ['CLONE_NEWPID', CLONE_NEWPID],
    ['CLONE_NEWNET', CLONE_NEWNET],
  ])('has one clone rule denying %s (0x%s)', (_name, flag) => {
    const rules = profile.syscalls.filter((r) => r.names.includes('clone') && r.args?.some((a) => a.value === flag));
    expect(rules).toEqual([
      { names: ['clone'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }] },
    ]);
    expect(evaluate(profile, 'clone', [flag | 17])).toBe(`errno ${EPERM}`);
  });

  it('uses CLONE_NEWUSER = 0x10000000', () => {
    expect(profile.syscalls.some((r) => r.names.includes('clone') && r.args?.[0]?.value === 0x10000000)).toBe(true);
  });

  it('has exactly the seven namespace rules for clone and no unconditional one', () => {
    const clone = profile.syscalls.filter((r) => r.names.includes('clone'));
    expect(clone).toHaveLength(7);
    expect(clone.every((r) => r.args?.length === 1)).toBe(true);
    expect(clone.map((r) => r.args![0]!.value).sort((a, b) => a - b)).toEqual(
      [CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET],
    );
  });

  it.each([
    ['fork-like (SIGCHLD)', 0x11],
    ['glibc fork', 0x01200011],
    ['pthread_create', 0x003d0f00],
    ['vfork-like', 0x4111],
  ])('allows clone for %s', (_what, flags) => {
    expect(evaluate(profile, 'clone', [flags])).toBe('SCMP_ACT_ALLOW');
  });

  it.each([
    ['user + SIGCHLD', CLONE_NEWUSER | 0x11],
    ['net + mount', CLONE_NEWNET | CLONE_NEWNS],
    ['all namespaces', CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET],
  ])('denies clone with %s', (_what, flags) => {
    expect(evaluate(profile, 'clone', [flags])).toBe(`errno ${EPERM}`);
  });

  it('returns a fresh document each call', () => {
    const a = vpsSeccompProfile();
    a.syscalls[0]!.names.push('read');
    expect(vpsSeccompProfile().syscalls[0]!.names).not.toContain('read');
    expect(vpsSeccompProfile()).toEqual(profile);
  });
});
