import os from 'node:os';
import { resolveOciRuntime, type OciRuntimePreference } from '../oci/runtime-choice.js';
import { execFile } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { idmapProbe } from '../native/sys.js';
import { PIPE_MAX_SIZE_NEEDED } from '../checkpoint/lazy.js';
import { CAP_SYS_RESOURCE, hasCapability } from './caps.js';

/**
 * `runbox doctor`: probes what this host offers a runbox worker (namespaces, cgroups, overlayfs,
 * runc, CRIU, ...) and says what to do about anything missing. Probes never throw: a failed probe
 * is a failed check.
 */
export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
  /** Not required for runbox to work (a missing optional feature only costs speed or features). */
  optional?: boolean;
}

export interface DoctorOptions {
  criuPath: string;
  stateDir: string;
  agentPath: string;
  /** RUNBOX_RUNTIME and the binaries (default: auto, runc on PATH, setup's crun). */
  runtime?: OciRuntimePreference;
  runcPath?: string;
  crunPath?: string;
  /** RUNBOX_USERNS (default auto). */
  userns?: 'auto' | 'on' | 'off';
}

interface RunResult {
  ok: boolean;
  out: string;
}

const PROBE_TIMEOUT_MS = 5000;

/** Runs a command with a timeout; resolves with exit success and stdout+stderr, never rejects. */
function run(file: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    try {
      execFile(file, args, { timeout: PROBE_TIMEOUT_MS, encoding: 'utf8', maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
        const out = `${stdout ?? ''}${stderr ?? ''}`.trim();
        if (!err) return resolve({ ok: true, out });
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        const why = e.code === 'ENOENT' ? `${file}: not found` : e.killed ? `${file}: timed out after ${PROBE_TIMEOUT_MS / 1000} s` : e.message;
        resolve({ ok: false, out: out || why });
      });
    } catch (err) {
      resolve({ ok: false, out: String(err) });
    }
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function firstLine(s: string): string {
  return s.split('\n')[0]?.trim() ?? '';
}

/** Major version number in a line like "Version: 4.1.1", or null. */
export function parseCriuMajor(out: string): number | null {
  const m = /Version:\s*(\d+)/.exec(out);
  return m?.[1] ? Number(m[1]) : null;
}

const V1_CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids', 'freezer'];
const V2_CONTROLLERS = ['memory', 'cpu', 'pids'];

async function cgroupChecks(): Promise<DoctorCheck[]> {
  const base = '/sys/fs/cgroup';
  const v2 = await readFile(join(base, 'cgroup.controllers'), 'utf8').catch(() => null);
  if (v2 !== null) {
    const have = v2.trim().split(/\s+/);
    const missing = V2_CONTROLLERS.filter((c) => !have.includes(c));
    return [
      { name: 'cgroup layout', ok: true, detail: 'v2 unified' },
      {
        name: 'cgroup controllers',
        ok: missing.length === 0,
        detail: missing.length === 0 ? `have ${V2_CONTROLLERS.join(', ')}` : `missing ${missing.join(', ')} (have: ${have.join(' ') || 'none'})`,
        fix: missing.length ? 'enable the controllers in the root cgroup (kernel config / boot parameters)' : undefined,
      },
    ];
  }
  const found: string[] = [];
  for (const c of V1_CONTROLLERS) if (await exists(join(base, c, 'cgroup.procs'))) found.push(c);
  const missing = V1_CONTROLLERS.filter((c) => !found.includes(c));
  const hybrid = await exists(join(base, 'unified', 'cgroup.procs'));
  const layout = found.length === 0 ? null : hybrid ? 'v1 hybrid' : 'v1 legacy';
  return [
    {
      name: 'cgroup layout',
      ok: layout !== null,
      detail: layout ?? `no cgroup v1 controllers and no cgroup2 at ${base}`,
      fix: layout ? undefined : `mount cgroup2 at ${base} (or the v1 hierarchies under it)`,
    },
    {
      name: 'cgroup controllers',
      ok: missing.length === 0,
      detail: missing.length === 0 ? `v1 hierarchies ${V1_CONTROLLERS.join(', ')}` : `missing v1 hierarchies: ${missing.join(', ')}`,
      fix: missing.length ? `mount them, e.g. mkdir -p ${base}/pids && mount -t cgroup -o pids cgroup ${base}/pids` : undefined,
    },
  ];
}

async function criuChecks(criu: string): Promise<DoctorCheck[]> {
  const fix = 'run scripts/setup.sh (installs CRIU >= 4.2 under /opt/runbox/criu)';
  const ver = await run(criu, ['--version']);
  const major = parseCriuMajor(ver.out);
  const checks: DoctorCheck[] = [
    {
      name: 'criu version',
      ok: ver.ok && major !== null && major >= 4,
      detail: ver.ok ? `${firstLine(ver.out).replace(/^Version:\s*/, 'CRIU ')} (${criu})` : firstLine(ver.out),
      fix: ver.ok && major !== null && major >= 4 ? undefined : fix,
    },
  ];
  if (!ver.ok) return checks;
  const [check, dirty, uffd] = await Promise.all([
    run(criu, ['check']),
    run(criu, ['check', '--feature', 'mem_dirty_track']),
    run(criu, ['check', '--feature', 'uffd-noncoop']),
  ]);
  const good = check.ok && check.out.includes('Looks good');
  checks.push({
    name: 'criu check',
    ok: good,
    detail: good ? 'Looks good' : firstLine(check.out.split('\n').reverse().join('\n')) || 'failed',
    fix: good ? undefined : `run '${criu} check' to see why; ${fix}`,
  });
  const dirtyOk = dirty.ok && !/OFF/.test(dirty.out);
  checks.push({
    name: 'criu memory dirty tracking',
    ok: dirtyOk,
    optional: true,
    // runbox has no pre-dump path yet (this development kernel lacks the feature, so it could not be tested).
    detail: dirtyOk
      ? 'supported by the kernel, not used by runbox yet: memory checkpoints are full ones, live migration uses post-copy or stop-and-copy'
      : 'not available: every memory checkpoint is a full one and live migration cannot pre-copy (post-copy or stop-and-copy instead); filesystem changes are incremental either way',
    fix: dirtyOk ? undefined : 'a kernel with CONFIG_MEM_SOFT_DIRTY=y has it (runbox does not use it yet)',
  });
  // Post-copy also needs room for CRIU's 4 MiB page-server pipe (runtime/checkpoint/lazy.ts); the
  // worker raises fs.pipe-max-size at start, so a low value here is only a note.
  const pipeMax = Number((await readFile('/proc/sys/fs/pipe-max-size', 'utf8').catch(() => '0')).trim());
  checks.push({
    name: 'post-copy migration (userfaultfd, lazy pages)',
    ok: uffd.ok,
    optional: true,
    detail: uffd.ok
      ? `supported: live migrations resume on the target at once and pull memory from the source (fs.pipe-max-size ${pipeMax}${pipeMax < PIPE_MAX_SIZE_NEEDED ? `; a worker raises it to ${PIPE_MAX_SIZE_NEEDED} at start` : ''})`
      : `${firstLine(uffd.out) || 'not supported'}: live migrations use stop-and-copy`,
    fix: uffd.ok ? undefined : 'a kernel with CONFIG_USERFAULTFD=y (and vm.unprivileged_userfaultfd or root) enables it',
  });
  // Kernels >= 6.16 refuse SO_PASSCRED on TCP sockets, which CRIU < 4.2 treats as fatal.
  const [kmaj = 0, kmin = 0] = os.release().split('.').map(Number);
  const criuMinor = Number(/Version:\s*\d+\.(\d+)/.exec(ver.out)?.[1] ?? 0);
  const tcpOk = kmaj < 6 || (kmaj === 6 && kmin < 16) || (major ?? 0) > 4 || criuMinor >= 2;
  checks.push({
    name: 'checkpoints with TCP sockets',
    ok: tcpOk,
    optional: true,
    detail: tcpOk ? 'supported' : `kernel ${os.release()} with CRIU 4.${criuMinor}: VPSs holding an INET socket cannot be checkpointed or migrated (they keep running)`,
    fix: tcpOk ? undefined : 'a CRIU release that tolerates EOPNOTSUPP for SO_PASSCRED (4.2 or later)',
  });
  return checks;
}

async function versionCheck(name: string, file: string, args: string[], fix: string): Promise<DoctorCheck> {
  const r = await run(file, args);
  return { name, ok: r.ok, detail: firstLine(r.out) || (r.ok ? 'present' : 'failed'), fix: r.ok ? undefined : fix };
}

async function stateDirCheck(dir: string): Promise<DoctorCheck> {
  const probe = join(dir, `.doctor-${process.pid}`);
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(probe, 'ok');
    await rm(probe, { force: true });
    return { name: 'state dir writable', ok: true, detail: dir };
  } catch (err) {
    return { name: 'state dir writable', ok: false, detail: `${dir}: ${(err as Error).message}`, fix: `make ${dir} writable by root (or set RUNBOX_STATE_DIR)` };
  }
}

async function agentCheck(path: string): Promise<DoctorCheck> {
  try {
    const st = await stat(path);
    await access(path, fsc.X_OK);
    return { name: 'agent binary', ok: st.isFile(), detail: `${path} (${st.size} bytes)` };
  } catch {
    return { name: 'agent binary', ok: false, detail: `${path} is missing or not executable`, fix: 'run scripts/setup.sh (compiles runtime/agent/agent.c)' };
  }
}

async function nofileCheck(): Promise<DoctorCheck> {
  const limits = await readFile('/proc/self/limits', 'utf8').catch(() => '');
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  if (!m) return { name: 'RLIMIT_NOFILE', ok: true, optional: true, detail: 'unknown (no /proc/self/limits)' };
  const hard = m[2] === 'unlimited' ? Infinity : Number(m[2]);
  return {
    name: 'RLIMIT_NOFILE',
    ok: hard >= 4096,
    optional: true,
    detail: `soft ${m[1]}, hard ${m[2]}: VPS rlimits must stay at or below the hard limit`,
    fix: hard >= 4096 ? undefined : 'raise the hard open-files limit (ulimit -Hn / systemd LimitNOFILE)',
  };
}

export async function runDoctor(opts: DoctorOptions): Promise<DoctorCheck[]> {
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  const kernel = release();
  const kmajor = Number(kernel.split('.')[0]);
  const nsArgs = ['--fork', '--pid', '--mount', '--uts', '--ipc', '--net', '--cgroup', 'true'];

  const [ns, userns, idmap, cgroups, filesystems, loop, criu, runc, nft, ip, agent, state, nofile, openssl, setpriv] = await Promise.all([
    run('unshare', nsArgs),
    run('unshare', ['--user', '--map-root-user', 'true']),
    idmapProbe(os.tmpdir()),
    cgroupChecks(),
    readFile('/proc/filesystems', 'utf8').catch(() => ''),
    exists('/dev/loop-control'),
    criuChecks(opts.criuPath),
    versionCheck('runc', 'runc', ['--version'], 'apt-get install runc (or run scripts/setup.sh)'),
    versionCheck('nftables', 'nft', ['--version'], 'apt-get install nftables'),
    versionCheck('iproute2', 'ip', ['-V'], 'apt-get install iproute2'),
    agentCheck(opts.agentPath),
    stateDirCheck(opts.stateDir),
    nofileCheck(),
    versionCheck('openssl (migration channel certificates)', 'openssl', ['version'], 'apt-get install openssl'),
    // Saved firewall rules of a moved VPS are replayed by a sandboxed nft (runtime/host/sandbox.ts).
    versionCheck('setpriv (sandboxed replay of a VPS firewall)', 'setpriv', ['--version'], 'apt-get install util-linux'),
  ]);
  const overlay = /\boverlay\b/.test(filesystems);

  return [
    { name: 'running as root', ok: uid === 0, detail: uid === 0 ? 'uid 0' : `uid ${uid}`, fix: uid === 0 ? undefined : 'run runbox as root' },
    { name: 'kernel', ok: kmajor >= 5, detail: `Linux ${kernel}`, fix: kmajor >= 5 ? undefined : 'use Linux 5.x or newer' },
    {
      name: 'namespaces (pid, mount, uts, ipc, net, cgroup)',
      ok: ns.ok,
      detail: ns.ok ? 'can be created' : firstLine(ns.out),
      fix: ns.ok ? undefined : 'needs root with CAP_SYS_ADMIN and a kernel with these namespaces (is this itself a restricted container?)',
    },
    usernsCheck(opts.userns ?? 'auto', userns.ok ? undefined : firstLine(userns.out), idmap),
    ...cgroups,
    { name: 'overlayfs', ok: overlay, detail: overlay ? 'in /proc/filesystems' : 'not in /proc/filesystems', fix: overlay ? undefined : 'modprobe overlay' },
    { name: 'loop devices', ok: loop, detail: loop ? '/dev/loop-control present' : '/dev/loop-control missing', fix: loop ? undefined : 'modprobe loop' },
    runc,
    ociRuntimeCheck(opts),
    ...criu,
    nonRootCheckpointCheck(hasCapability(CAP_SYS_RESOURCE), (opts.userns ?? 'auto') !== 'off' && userns.ok && !idmap),
    nft,
    ip,
    agent,
    state,
    nofile,
    openssl,
    setpriv,
  ];
}

/** Whether VPSs get user namespaces here (RUNBOX_USERNS), from whether user namespaces and idmapped mounts work. */
export function usernsCheck(mode: 'auto' | 'on' | 'off', usernsError: string | undefined, idmapError: string | undefined): DoctorCheck {
  const name = 'user namespaces (RUNBOX_USERNS)';
  if (mode === 'off') return { name, ok: true, optional: true, detail: 'off: root inside a VPS is host root' };
  const why = usernsError ?? idmapError;
  if (!why) return { name, ok: true, detail: `${mode}: each VPS in a user namespace of its own (root inside = an unprivileged host uid of its own range)` };
  return {
    name,
    ok: false,
    optional: mode === 'auto',
    detail: `${mode === 'auto' ? 'auto: VPSs run without user namespaces (root inside is host root)' : 'on: VPS creation fails'}, because ${usernsError ? 'user namespaces cannot be created' : 'idmapped mounts fail'}: ${why}`,
    fix: usernsError ? 'sysctl user.max_user_namespaces=15000' : 'a kernel with idmapped mounts for the state dir\'s file system and overlayfs (Linux 5.19 or newer)',
  };
}

/** Which OCI runtime VPSs get here, and why (a forced crun that cannot run fails the check). */
export function ociRuntimeCheck(opts: Pick<DoctorOptions, 'runtime' | 'runcPath' | 'crunPath'>): DoctorCheck {
  const name = 'OCI runtime (RUNBOX_RUNTIME)';
  try {
    const c = resolveOciRuntime(opts.runtime ?? 'auto', { runc: opts.runcPath ?? 'runc', crun: opts.crunPath });
    return { name, ok: true, detail: `${c.kind} (${c.path}): ${c.reason}` };
  } catch (e) {
    return { name, ok: false, detail: (e as Error).message, fix: 'run scripts/setup.sh with no VPS running, or set RUNBOX_RUNTIME=runc' };
  }
}

/** CRIU reads a dumped process's rlimits with prlimit(2): for another user's process that needs CAP_SYS_RESOURCE. */
export function nonRootCheckpointCheck(capable = hasCapability(CAP_SYS_RESOURCE), viaUserns = false): DoctorCheck {
  if (viaUserns && !capable) {
    return { name: 'checkpoints of non-root jobs', ok: true, optional: true, detail: "VPSs have user namespaces, whose ids host root controls: jobs that run as any user can be checkpointed and moved (root itself lacks CAP_SYS_RESOURCE)" };
  }
  return {
    name: 'checkpoints of non-root jobs',
    ok: capable,
    optional: true,
    detail: capable
      ? 'root has CAP_SYS_RESOURCE: jobs that run as any user can be checkpointed and moved'
      : 'root lacks CAP_SYS_RESOURCE: jobs running as a non-root user (e.g. templates python, node) cannot be checkpointed or moved here; the API refuses that with checkpoint_unsupported (409) and they keep running',
    fix: capable ? undefined : 'run the worker with CAP_SYS_RESOURCE (not possible inside some sandboxes), or run such jobs with "user": "root"',
  };
}

/** One line per check: "✓ name: detail", or "✗ name: detail (fix: ...)"; optional ones are marked. */
export function formatDoctor(checks: DoctorCheck[]): string {
  const lines = checks.map((c) => {
    const mark = c.ok ? '✓' : '✗';
    const opt = c.optional && !c.ok ? ' [optional]' : '';
    const fix = !c.ok && c.fix ? ` (fix: ${c.fix})` : '';
    return `${mark} ${c.name}: ${c.detail}${opt}${fix}`;
  });
  const failed = checks.filter((c) => !c.ok && !c.optional).length;
  const missingOptional = checks.filter((c) => !c.ok && c.optional).length;
  lines.push(
    failed === 0
      ? `All required checks passed${missingOptional ? ` (${missingOptional} optional feature${missingOptional > 1 ? 's' : ''} missing)` : ''}.`
      : `${failed} required check${failed > 1 ? 's' : ''} failed.`,
  );
  return lines.join('\n');
}
