import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpoint, restore } from '../../runtime/checkpoint/checkpoint.js';
import { resolveTemplate, type TemplateRef } from '../../runtime/templates/store.js';
import { TEMPLATES_DIR, testEngine, type TestEngine } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';
import { evaluateBpf, type BpfInsn } from './seccomp-bpf.js';
import { AGENT_SECCOMP_ENV, readCachedFilter, seccompCacheFile, seccompCacheKey, writeCachedFilter } from '../../runtime/oci/seccomp-bpf.js';

/**
 * Root inside a VPS tries one syscall of every dangerous family (test/security/seccomp-probe.c,
 * compiled here, written into the VPS); each must be refused with the profile's errno and the VPS
 * must carry on. Then the filter the kernel actually holds is read back from a VPS process and
 * evaluated for the ABIs this host cannot execute (x86 32-bit, x32). Then real userlands run.
 */

const run = promisify(execFile);
const EPERM = 1, ENOSYS = 38, EAFNOSUPPORT = 97;

let t: TestEngine;
let tmp: string;
let probeBin: string;
let probe: Buffer;
let results: Map<string, number>;
let transcript: string;
let exitCode: number | null;
/** config.json of the engine's first VPS (runc compiled its profile: nothing was cached yet). */
let firstConfig: OciConfig;

interface OciConfig {
  process: { env: string[] };
  linux: { seccomp?: unknown };
}

const vpsConfig = async (engine: TestEngine, id: string): Promise<OciConfig> =>
  JSON.parse(await fs.readFile(engine.engine.layout.vps(id).config, 'utf8')) as OciConfig;
const agentInstalls = (c: OciConfig): boolean => c.linux.seccomp === undefined && c.process.env.some((e) => e.startsWith(`${AGENT_SECCOMP_ENV}=`));

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-seccomp-'));
  probeBin = path.join(tmp, 'probe-seccomp');
  await run('gcc', ['-static', '-O1', '-o', probeBin, path.join(import.meta.dirname, 'seccomp-probe.c'), '-lpthread'], { timeout: 120_000 });
  t = await testEngine('seccomp');
  probe = await fs.readFile(probeBin);
  const r = await t.run(['/probe-seccomp'], {
    inside: async (vps) => {
      firstConfig = await vpsConfig(t, vps.id);
      await vps.writeFile('/probe-seccomp', probe, 0o755);
    },
  });
  exitCode = r.exitCode;
  transcript = r.stdout + r.stderr;
  results = parseProbe(r.stdout);
});

function parseProbe(stdout: string): Map<string, number> {
  const map = new Map<string, number>();
  for (const line of stdout.split('\n')) {
    const m = /^(\S+) (-?\d+)$/.exec(line);
    if (m) map.set(m[1]!, Number(m[2]));
  }
  return map;
}

/** The BPF program of a host process's seccomp filter, as the kernel holds it. */
async function dumpFilter(pid: number | undefined): Promise<BpfInsn[]> {
  expect(pid, 'the VPS has a known init pid').toBeTypeOf('number');
  const { stdout } = await run(probeBin, ['dump-filter', String(pid)], { timeout: 30_000 });
  return stdout.trim().split('\n').map((l) => {
    const [code, jt, jf, k] = l.split(' ').map(Number) as [number, number, number, number];
    return { code, jt, jf, k };
  });
}

afterAll(async () => {
  await t?.cleanup();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

const answer = (name: string): number => {
  expect(results.has(name), `probe ${name} did not report:\n${transcript}`).toBe(true);
  return results.get(name)!;
};

describe('root in a VPS is refused every dangerous syscall family', () => {
  it('runs every probe to the end and the VPS survives', () => {
    expect(exitCode, transcript).toBe(0);
    expect(transcript).toMatch(/^done$/m);
    expect(transcript).not.toMatch(/died/);
  });

  it.each([
    // namespaces: no nested ones, in particular no user namespace
    ['unshare_user', EPERM], ['unshare_net', EPERM], ['setns', EPERM],
    ['clone_newns', EPERM], ['clone_newcgroup', EPERM], ['clone_newuts', EPERM], ['clone_newipc', EPERM],
    ['clone_newuser', EPERM], ['clone_newpid', EPERM], ['clone_newnet', EPERM],
    ['clone3', ENOSYS], // flags in memory, out of the filter's reach: libc falls back to clone
    // mount API, old and new
    ['mount', EPERM], ['umount2', EPERM], ['pivot_root', EPERM], ['fsopen', EPERM], ['open_tree', EPERM],
    ['move_mount', EPERM], ['mount_setattr', EPERM],
    // kernel attack surface and host-wide state
    ['bpf', EPERM], ['perf_event_open', EPERM], ['keyctl', EPERM], ['add_key', EPERM], ['request_key', EPERM],
    ['userfaultfd', EPERM], ['io_uring_setup', EPERM], ['kexec_load', EPERM], ['init_module', EPERM],
    ['finit_module', EPERM], ['reboot', EPERM], ['swapon', EPERM], ['acct', EPERM], ['settimeofday', EPERM],
    ['clock_settime', EPERM], ['open_by_handle_at', EPERM], ['sethostname', EPERM], ['syslog', EPERM],
    // argument rules: personalities beyond Docker's set, socket families beyond the allowed ones
    ['personality_addr_no_randomize', ENOSYS], ['personality_read_implies_exec', ENOSYS], ['personality_high_bits', ENOSYS],
    ['socket_vsock', EAFNOSUPPORT], ['socket_vsock_high_bits', EAFNOSUPPORT], ['socket_alg', EAFNOSUPPORT],
    ['socket_xdp', EAFNOSUPPORT], ['socket_zero', EAFNOSUPPORT], ['socketpair_vsock', EAFNOSUPPORT],
    // not on the allow list (existing syscalls Docker does not allow, newer ones, none at all)
    ['kcmp', ENOSYS], ['listmount', ENOSYS], ['lsm_list_modules', ENOSYS], ['syscall_1000', ENOSYS],
  ])('%s → errno %i', (name, errno) => {
    expect(answer(name), transcript).toBe(errno);
  });

  it('refuses open_tree_attr (Linux 6.15 mount API; EPERM where libseccomp knows its name, else ENOSYS)', () => {
    expect([EPERM, ENOSYS]).toContain(answer('open_tree_attr'));
  });
});

describe('what ordinary programs do still works', () => {
  it.each([
    'fork_exec', 'posix_spawn', 'vfork', 'fork_raw_clone', 'thread', 'epoll', 'signalfd', 'timerfd', 'eventfd', 'memfd',
    'mmap_mprotect', 'socket_inet', 'socket_inet6', 'socket_unix', 'socket_netlink', 'socketpair', 'personality_query',
    'personality_linux32', 'ptrace_traceme', 'process_vm_readv', 'chroot', 'getrandom',
  ])('%s', (name) => {
    expect(answer(name), transcript).toBe(0);
  });

  it('leaves AF_PACKET to the capability set (allowed by the filter; EPERM only without CAP_NET_RAW)', () => {
    expect([0, EPERM]).toContain(answer('socket_packet'));
  });
});

// AUDIT_ARCH_* values and syscall numbers per ABI (arch/x86/entry/syscalls/syscall_{64,32}.tbl).
const X86_64 = 0xc000003e, I386 = 0x40000003, AARCH64 = 0xc00000b7, X32 = 0x40000000;
const NR = {
  x86_64: { read: 0, socket: 41, clone: 56, personality: 135, mount: 165, unshare: 272, kcmp: 312, io_uring_setup: 425, clone3: 435 },
  i386: { read: 3, socketcall: 102, socket: 359, socketpair: 360, clone: 120, personality: 136, mount: 21, unshare: 310, open_by_handle_at: 342, io_uring_setup: 425, clone3: 435 },
};
const NEWUSER = 0x10000000n, THREAD_FLAGS = 0x3d0f00n, SIGCHLD = 17n;

describe('the filter the kernel holds covers x86-64, x86 (32-bit) and x32', () => {
  let filter: BpfInsn[];
  beforeAll(async () => {
    const vps = await t.create();
    try {
      filter = await dumpFilter(vps.initPid);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it.each([
    ['x86_64 read', 'allow', X86_64, NR.x86_64.read, []],
    ['x86_64 socket(AF_INET)', 'allow', X86_64, NR.x86_64.socket, [2n]],
    ['x86_64 socket(AF_VSOCK)', `errno ${EAFNOSUPPORT}`, X86_64, NR.x86_64.socket, [40n]],
    ['x86_64 socket(AF_VSOCK | junk << 32)', `errno ${EAFNOSUPPORT}`, X86_64, NR.x86_64.socket, [0x1_0000_0028n]],
    ['x86_64 clone(thread)', 'allow', X86_64, NR.x86_64.clone, [THREAD_FLAGS]],
    ['x86_64 clone(CLONE_NEWUSER)', `errno ${EPERM}`, X86_64, NR.x86_64.clone, [NEWUSER | SIGCHLD]],
    ['x86_64 clone3', `errno ${ENOSYS}`, X86_64, NR.x86_64.clone3, []],
    ['x86_64 unshare', `errno ${EPERM}`, X86_64, NR.x86_64.unshare, []],
    ['x86_64 mount', `errno ${EPERM}`, X86_64, NR.x86_64.mount, []],
    ['x86_64 personality(ADDR_NO_RANDOMIZE)', `errno ${ENOSYS}`, X86_64, NR.x86_64.personality, [0x40000n]],
    ['x86_64 kcmp', `errno ${ENOSYS}`, X86_64, NR.x86_64.kcmp, []],
    ['x86_64 syscall 1000', `errno ${ENOSYS}`, X86_64, 1000, []],
    ['x32 read', 'allow', X86_64, X32 | NR.x86_64.read, []],
    ['x32 socket(AF_VSOCK)', `errno ${EAFNOSUPPORT}`, X86_64, X32 | NR.x86_64.socket, [40n]],
    ['x32 clone(CLONE_NEWUSER)', `errno ${EPERM}`, X86_64, X32 | NR.x86_64.clone, [NEWUSER | SIGCHLD]],
    ['x32 unshare', `errno ${EPERM}`, X86_64, X32 | NR.x86_64.unshare, []],
    ['x32 mount', `errno ${EPERM}`, X86_64, X32 | NR.x86_64.mount, []],
    ['i386 read', 'allow', I386, NR.i386.read, []],
    ['i386 socket(AF_INET)', 'allow', I386, NR.i386.socket, [2n]],
    ['i386 socket(AF_VSOCK)', `errno ${EAFNOSUPPORT}`, I386, NR.i386.socket, [40n]],
    ['i386 clone(thread)', 'allow', I386, NR.i386.clone, [THREAD_FLAGS]],
    ['i386 clone(CLONE_NEWUSER)', `errno ${EPERM}`, I386, NR.i386.clone, [NEWUSER | SIGCHLD]],
    ['i386 clone3', `errno ${ENOSYS}`, I386, NR.i386.clone3, []],
    ['i386 unshare', `errno ${EPERM}`, I386, NR.i386.unshare, []],
    ['i386 mount', `errno ${EPERM}`, I386, NR.i386.mount, []],
    ['i386 open_by_handle_at', `errno ${EPERM}`, I386, NR.i386.open_by_handle_at, []],
    ['i386 io_uring_setup', `errno ${EPERM}`, I386, NR.i386.io_uring_setup, []],
    ['i386 personality(READ_IMPLIES_EXEC)', `errno ${ENOSYS}`, I386, NR.i386.personality, [0x400000n]],
    ['i386 socketpair(AF_VSOCK)', `errno ${EAFNOSUPPORT}`, I386, NR.i386.socketpair, [40n]],
    // socketcall's arguments are in memory: refused whole, or int 0x80 would smuggle any family past
    ['i386 socketcall(SYS_SOCKET)', `errno ${EPERM}`, I386, NR.i386.socketcall, [1n, 0x1000n]],
    ['i386 socketcall(SYS_CONNECT)', `errno ${EPERM}`, I386, NR.i386.socketcall, [3n, 0x1000n]],
    ['aarch64 read (an ABI not in the profile)', 'kill', AARCH64, 63, []],
  ] as const)('%s → %s', (_what, expected, arch, nr, args) => {
    expect(evaluateBpf(filter, { arch, nr, args: [...args] })).toBe(expected);
  });
});

describe('a checkpoint and restore keep the filter', () => {
  // CRIU dumps with the filter suspended (PTRACE_O_SUSPEND_SECCOMP) and reinstalls each task's
  // filter from its images as the last step of a restore: the restored VPS must hold the same
  // program and refuse the same calls.
  it('the restored job holds the same BPF program and is refused the same calls', async () => {
    const vps = await t.create();
    try {
      await vps.writeFile('/probe-seccomp', probe, 0o755);
      const before = await dumpFilter(vps.initPid);
      let out = '';
      const running = vps.run({
        argv: ['sh', '-c', 'echo waiting; while [ ! -e /tmp/go ]; do sleep 0.05; done; /probe-seccomp'],
        timeoutSec: 60,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => (out += d.toString()),
      });
      await waitFor(() => out.includes('waiting'), 'the job to start', 10_000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      await restore(t.engine, vps, cp.imagePath);
      expect(await dumpFilter(vps.initPid)).toEqual(before);
      await vps.writeFile('/tmp/go', Buffer.alloc(0));
      const r = await running;
      expect(r.exitCode, out).toBe(0);
      const after = parseProbe(out);
      expect(after.size, out).toBe(results.size);
      for (const [name, errno] of results) expect(after.get(name), `${name} after restore`).toBe(errno);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});

/** Where an engine caches the program for this host's runc (the key the engine computes). */
const cacheFileOf = async (e: TestEngine): Promise<string> =>
  seccompCacheFile(e.engine.layout.cacheDir, seccompCacheKey((await run(e.engine.runc.runc, ['--version'])).stdout));

const toInsns = (buf: Buffer): BpfInsn[] =>
  Array.from({ length: buf.length / 8 }, (_, i) => ({ code: buf.readUInt16LE(i * 8), jt: buf[i * 8 + 2]!, jf: buf[i * 8 + 3]!, k: buf.readUInt32LE(i * 8 + 4) }));

/**
 * Where two filters answer differently: every syscall number 0..599 of x86-64, x32, x86 and
 * aarch64, with the argument values the profile's rules look at (clone flags, socket families,
 * personalities) and without.
 */
function sameAnswers(a: BpfInsn[], b: BpfInsn[]): string[] {
  const argSets: bigint[][] = [[], [0n], [2n], [16n], [40n], [44n], [0x1_0000_0028n], [0x10000000n | 17n], [0x3d0f00n], [0x40000n], [0x8n], [0xffffffffn]];
  const differ: string[] = [];
  for (const [arch, base] of [[0xc000003e, 0], [0xc000003e, 0x40000000], [0x40000003, 0], [0xc00000b7, 0]] as const) {
    for (let nr = 0; nr < 600; nr++) {
      for (const args of argSets) {
        const d = { arch, nr: base | nr, args };
        if (evaluateBpf(a, d) !== evaluateBpf(b, d)) differ.push(`${arch.toString(16)} ${base | nr} ${args.join(',')}`);
      }
    }
  }
  return differ.slice(0, 20);
}

describe('the agent installs the program runc compiled once (runc compiles no profile per VPS)', () => {
  it('the first VPS was made by runc from the profile; the next ones by their agent, with the same program', async () => {
    expect(firstConfig.linux.seccomp, 'the first VPS: runc compiles').toBeDefined();
    expect(agentInstalls(firstConfig)).toBe(false);
    const byRunc = await testEngine('seccomp-runc', { seccomp: 'runc' });
    const ours = await t.create();
    try {
      const theirs = await byRunc.create();
      expect(agentInstalls(await vpsConfig(t, ours.id)), 'a later VPS: its agent installs the program').toBe(true);
      expect((await vpsConfig(byRunc, theirs.id)).linux.seccomp, "seccomp: 'runc' keeps runc compiling").toBeDefined();
      const program = await dumpFilter(ours.initPid);
      expect(program.length).toBeGreaterThan(100);
      // Exactly the cached program (the one runc gave back from the engine's first VPS)...
      const cached = await readCachedFilter(await cacheFileOf(t));
      expect(cached, 'the engine cached the program').toBeDefined();
      expect(program).toEqual(toInsns(cached!));
      // ...and the same answers as the program runc compiles for a VPS now. Not the same bytes:
      // runc orders the architectures' sections differently from one compile to the next.
      expect(sameAnswers(program, await dumpFilter(theirs.initPid))).toEqual([]);
      // The job, a child of the agent, runs under it too, and does not see the program's variable.
      let out = '';
      const r = await ours.run({
        argv: ['sh', '-c', 'grep -E "^Seccomp(_filters)?:" /proc/self/status; env'],
        timeoutSec: 30,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => (out += d.toString()),
      });
      expect(r.exitCode, out).toBe(0);
      expect(out).toMatch(/^Seccomp:\s+2$/m);
      expect(out).toMatch(/^Seccomp_filters:\s+1$/m);
      expect(out).not.toContain(AGENT_SECCOMP_ENV);
    } finally {
      await t.engine.destroy(ours.id);
      await byRunc.cleanup();
    }
  });

  it('every probe gets the same answer in a VPS whose agent installed the filter', async () => {
    let config: OciConfig | undefined;
    const r = await t.run(['/probe-seccomp'], {
      inside: async (vps) => {
        config = await vpsConfig(t, vps.id);
        await vps.writeFile('/probe-seccomp', probe, 0o755);
      },
    });
    expect(agentInstalls(config!)).toBe(true);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(parseProbe(r.stdout)).toEqual(results);
  });

  it('a damaged cached program is not used: runc compiles again and the cache is mended', async () => {
    const e = await testEngine('seccomp-damaged');
    try {
      const file = await cacheFileOf(e);
      await fs.mkdir(path.dirname(file), { recursive: true });
      const good = await readCachedFilter(await cacheFileOf(t));
      expect(good, "the first engine's cache holds the program").toBeDefined();
      const damaged = Buffer.concat([Buffer.alloc(32), good!]); // digest of zeros
      await fs.writeFile(file, damaged);
      const vps = await e.create();
      expect((await vpsConfig(e, vps.id)).linux.seccomp, 'runc compiled').toBeDefined();
      const mended = await readCachedFilter(file);
      expect(mended, 'the cache holds a program again').toBeDefined();
      expect(toInsns(mended!)).toEqual(await dumpFilter(vps.initPid));
      await e.engine.destroy(vps.id);
      const next = await e.create();
      expect(agentInstalls(await vpsConfig(e, next.id))).toBe(true);
    } finally {
      await e.cleanup();
    }
  });

  it('a program the kernel refuses fails that create (the agent never runs unfiltered), and the next VPS is made by runc', async () => {
    const e = await testEngine('seccomp-refused');
    try {
      const file = await cacheFileOf(e);
      // One instruction with an opcode classic BPF does not have: the kernel answers EINVAL.
      await writeCachedFilter(file, Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0]));
      await expect(e.create()).rejects.toThrow(/seccomp: cannot install the filter/);
      expect(await e.engine.list()).toEqual([]);
      expect(await readCachedFilter(file), 'the refused program is forgotten').toBeUndefined();
      const vps = await e.create();
      expect((await vpsConfig(e, vps.id)).linux.seccomp).toBeDefined();
      const r = await vps.run({ argv: ['true'], timeoutSec: 30, outputBytes: 1024 });
      expect(r.exitCode).toBe(0);
    } finally {
      await e.cleanup();
    }
  });
});

async function template(name: string): Promise<TemplateRef | undefined> {
  return resolveTemplate(TEMPLATES_DIR, name).catch(() => undefined);
}

describe('real userlands run under the profile', () => {
  it('busybox (base): processes, pipes, sockets, ps', async () => {
    const r = await t.sh('echo a | tr a b; (sleep 0.1 &) ; wait; ps | grep -c agent; nc -l -p 9 -w 1 </dev/null & sleep 0.1; echo x | nc -w 1 127.0.0.1 9; echo ok');
    expect(r.stdout + r.stderr).toMatch(/^b$/m);
    expect(r.stdout).toMatch(/ok$/m);
    expect(r.exitCode).toBe(0);
  });

  it.each([
    ['debian', ['sh', '-c', 'apt-get --version | head -1 && dpkg -s coreutils | grep -c Status && ls -la / >/dev/null && ip -br addr 2>/dev/null | head -1; echo ok'], 'root', [/^ok$/m]],
    [
      'python',
      ['python3', '-c', [
        'import asyncio, multiprocessing, os, socket, subprocess, threading, tempfile',
        'print(subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())',
        'th = threading.Thread(target=lambda: None); th.start(); th.join()',
        'with multiprocessing.Pool(2) as p: print(sum(p.map(abs, [-1, -2, 3])))',
        'async def main(): await asyncio.sleep(0.01); return "loop"',
        'print(asyncio.run(main()))',
        's = socket.socket(socket.AF_INET6); s.close(); print(len(socket.if_nameindex()) >= 1)',
        'print(os.posix_spawn("/bin/true", ["true"], {}) > 0)',
      ].join('\n')],
      'runbox',
      [/sub\n6\nloop\nTrue\nTrue/],
    ],
    [
      'node',
      ['node', '-e', [
        'const { execSync } = require("child_process"); const { Worker } = require("worker_threads"); const net = require("net");',
        'console.log(execSync("echo sub").toString().trim());',
        'new Worker("require(\'worker_threads\').parentPort.postMessage(6)", { eval: true }).on("message", (m) => console.log(m));',
        'const srv = net.createServer((c) => c.end("net")).listen(0, "127.0.0.1", () => {',
        '  net.connect(srv.address().port, "127.0.0.1").on("data", (d) => { console.log(d.toString()); srv.close(); });',
        '});',
        'require("fs").promises.readFile("/etc/hostname").then(() => console.log("fs"));',
        'require("dns").lookup("localhost", (e, a) => console.log(e ? e.code : "dns"));',
      ].join('\n')],
      'runbox',
      [/^sub$/m, /^6$/m, /^net$/m, /^fs$/m, /^dns$/m],
    ],
    [
      'build',
      ['sh', '-c', [
        'cd /tmp && printf "%s\\n" "#include <stdlib.h>" "#include <pthread.h>" "void *f(void *a) { return a; }"',
        '"int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); pthread_join(t, 0); malloc(64); return 0; }" > leak.c',
        '&& printf "all: leak\\nleak: leak.c\\n\\tgcc -g -Wno-unused-result -pthread -fsanitize=address -o leak leak.c\\n" > Makefile && make -s',
        '&& (./leak; echo "leak exit $?")',
      ].join(' ')],
      'root',
      // LeakSanitizer stops the process's threads with ptrace to scan them: it only reports a leak
      // when ptrace is allowed (otherwise "LeakSanitizer has encountered a fatal error").
      [/LeakSanitizer: detected memory leaks/, /leak exit [1-9]/],
    ],
  ] as const)('%s', async (name, argv, user, expected) => {
    const ref = await template(name);
    if (!ref) {
      console.warn(`template ${name} is not built here: skipped (./bin/runbox templates build ${name})`);
      return;
    }
    const r = await t.run([...argv], { user, spec: { template: ref, memoryMb: 1024, pids: 512, diskMb: 512 }, timeoutSec: 120 });
    for (const re of expected) expect(r.stdout + r.stderr, `${name}: ${r.stdout}${r.stderr}`).toMatch(re);
    expect(r.stdout + r.stderr).not.toMatch(/Function not implemented|Operation not permitted|Bad system call/);
  });
});
