import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino, type Logger } from 'pino';
import { REPO_ROOT } from '../core/config.js';
import { errorMessage } from '../core/errors.js';
import { gc } from '../runtime/gc.js';
import { RuncEngine } from '../runtime/runc-engine.js';
import { resolveTemplate, type TemplateRef } from '../runtime/templates/store.js';
import type { VpsSpec } from '../runtime/vps.js';

/** Built once by setup; benchmarks only read it. */
export const TEMPLATES_DIR = process.env.RUNBOX_TEMPLATES_DIR ?? '/var/lib/runbox/templates';
export const RUNC = process.env.RUNBOX_RUNC ?? 'runc';
/** The OCI runtime of runbox's engines (RUNBOX_RUNTIME, as for a worker): A/B runs set it. The bare baselines stay runc. */
export const RUNTIME = (process.env.RUNBOX_RUNTIME ?? 'auto') as 'auto' | 'runc' | 'crun';
/** User namespaces for runbox's engines (RUNBOX_USERNS, as for a worker): A/B runs set it. */
export const USERNS = (process.env.RUNBOX_USERNS ?? 'auto') as 'auto' | 'on' | 'off';
export const AGENT = path.join(REPO_ROOT, 'build/runbox-agent');
export const RUNBOX_BIN = path.join(REPO_ROOT, 'bin/runbox');

// ---------------------------------------------------------------------------------------------
// Benchmark definition and output

export interface OptionDef {
  default: number;
  /** Smallest accepted value. */
  min: number;
  help: string;
}

export interface Benchmark {
  name: string;
  /** One line, shown by `npm run bench -- list`. */
  description: string;
  options: Record<string, OptionDef>;
  run(ctx: BenchContext, opts: Record<string, number>): Promise<void>;
}

export interface Measurement {
  metric: string;
  value: number;
  unit: string;
  baseline?: number;
}

const round = (x: number, digits: number) => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** One JSON object per line on stdout; ratio = value / baseline. */
export function report(bench: string, m: Measurement): void {
  const line: Record<string, unknown> = { bench, metric: m.metric, value: round(m.value, 3), unit: m.unit };
  if (m.baseline !== undefined) {
    line.baseline = round(m.baseline, 3);
    if (m.baseline !== 0) line.ratio = round(m.value / m.baseline, 3);
  }
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Progress and notes: stderr only, so stdout stays machine-readable. */
export function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------
// Statistics

/** Percentile with linear interpolation between closest ranks (p in [0, 100]); `sorted` ascending. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

export interface Stats {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  min: number;
  max: number;
}

export function stats(values: readonly number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length),
    min: s[0] ?? NaN,
    max: s[s.length - 1] ?? NaN,
  };
}

export function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

export const now = (): number => performance.now();
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Processes

export interface SpawnResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Spawns argv and waits for it to exit and close its stdio. No shell. */
export function run(
  argv: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; stdio?: StdioOptions; timeoutMs?: number } = {},
): Promise<SpawnResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { env: opts.env ?? process.env, stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export async function runOk(argv: readonly string[], opts: Parameters<typeof run>[1] = {}): Promise<SpawnResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
  return r;
}

/** /proc/meminfo, in bytes (the few fields given in pages or without unit are left as they are). */
export async function meminfo(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of (await fs.readFile('/proc/meminfo', 'utf8')).split('\n')) {
    const m = /^([\w()]+):\s+(\d+)( kB)?$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) * (m[3] ? 1024 : 1);
  }
  return out;
}

/** MemAvailable from /proc/meminfo, in bytes. */
export async function memAvailable(): Promise<number> {
  const v = (await meminfo()).MemAvailable;
  if (v === undefined) throw new Error('no MemAvailable in /proc/meminfo');
  return v;
}

/** Median of `reads` MemAvailable samples taken `gapMs` apart (no cache dropping). */
export async function memAvailableMedian(reads = 3, gapMs = 200): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < reads; i++) {
    if (i > 0) await sleep(gapMs);
    xs.push(await memAvailable());
  }
  return median(xs);
}

/** "Field +x.xx MiB" per instance for the meminfo fields that moved, biggest first (for notes). */
export function meminfoDelta(before: Record<string, number>, after: Record<string, number>, per: number): string {
  const keys = [
    'MemTotal', 'MemFree', 'MemAvailable', 'Buffers', 'Cached', 'AnonPages', 'Shmem', 'Slab', 'SReclaimable', 'SUnreclaim',
    'KernelStack', 'PageTables', 'Percpu', 'VmallocUsed', 'Mapped',
  ];
  return keys
    .filter((k) => before[k] !== undefined && after[k] !== undefined)
    .map((k) => [k, (after[k]! - before[k]!) / per / MiB] as const)
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .map(([k, d]) => `${k} ${d >= 0 ? '+' : ''}${d.toFixed(3)}`)
    .join(', ');
}

export interface ProcessScan {
  /** Live processes that belong to this benchmark (see scanProcesses). */
  own: number;
  /** RssAnon of every other live process, bytes: what neighbours on a shared machine hold. */
  othersAnonBytes: number;
}

/**
 * Host processes, split into this benchmark's own (descendants of this process, and processes in
 * one of the given cgroup parents, e.g. a VPS's agent reparented away from runc) and everybody
 * else's. Neighbours on a shared machine do not count as ours, which a plain /proc count would do;
 * their anonymous memory is summed so a MemAvailable difference can be corrected for it.
 */
export async function scanProcesses(cgroupParents: string[]): Promise<ProcessScan> {
  const pids = (await fs.readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  const ppid = new Map<number, number>();
  const inCgroup = new Set<number>();
  const anon = new Map<number, number>();
  for (const pid of pids) {
    let stat: string;
    let cg: string;
    let status: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      cg = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      status = readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // A zombie is no running process (this host's init reaps orphans only every few seconds).
    if (fields[0] === 'Z') continue;
    ppid.set(pid, Number(fields[1]));
    anon.set(pid, Number(/^RssAnon:\s+(\d+) kB$/m.exec(status)?.[1] ?? 0) * 1024);
    for (const line of cg.split('\n')) {
      const cgPath = line.split(':').slice(2).join(':');
      if (cgroupParents.some((p) => cgPath.startsWith(`${p}/`))) {
        inCgroup.add(pid);
        break;
      }
    }
  }
  const descends = (pid: number) => {
    for (let p = ppid.get(pid), hops = 0; p !== undefined && p > 1 && hops < 64; p = ppid.get(p), hops++) {
      if (p === process.pid) return true;
    }
    return false;
  };
  let own = 0;
  let othersAnonBytes = 0;
  for (const pid of ppid.keys()) {
    if (pid === process.pid) continue;
    if (inCgroup.has(pid) || descends(pid)) own++;
    else othersAnonBytes += anon.get(pid) ?? 0;
  }
  return { own, othersAnonBytes };
}

export const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Interruption: the first SIGINT/SIGTERM asks the benchmark to stop at its next check (so cleanup
// runs in its `finally` with nothing in flight); a second one, or a stuck benchmark, forces cleanup.

let interruptedBy: NodeJS.Signals | undefined;

export class Interrupted extends Error {
  constructor() {
    super(`interrupted by ${interruptedBy ?? 'signal'}`);
  }
}

export function interrupted(): boolean {
  return interruptedBy !== undefined;
}

export function checkInterrupted(): void {
  if (interruptedBy) throw new Interrupted();
}

export function installSignalHandlers(forceCleanup: () => Promise<string[]>): void {
  const onSignal = (sig: NodeJS.Signals) => {
    if (!interruptedBy) {
      interruptedBy = sig;
      note(`${sig}: stopping after the current step, then cleaning up (send it again to clean up now)`);
      setTimeout(() => void force(), 60_000).unref();
      return;
    }
    void force();
  };
  let forcing = false;
  const force = async () => {
    if (forcing) return;
    forcing = true;
    note('cleaning up now');
    try {
      const problems = await forceCleanup();
      for (const p of problems) note(`LEAK/cleanup problem: ${p}`);
      if (problems.length === 0) note('cleanup done; leak check clean');
    } catch (e) {
      note(`cleanup failed: ${errorMessage(e)}`);
    }
    process.exit(130);
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
}

// ---------------------------------------------------------------------------------------------
// Bare runc baseline: a minimal OCI bundle (as `runc spec` writes it, non-interactive) whose root
// is the template's rootfs itself, read-only; no overlay, no disk image, no agent, no seccomp.

export function bareSpec(rootfs: string, args: string[], cgroupsPath: string): Record<string, unknown> {
  const caps = ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args,
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps, ambient: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: rootfs, readonly: true },
    hostname: 'bare',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
    ],
    linux: {
      cgroupsPath,
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'uts' }, { type: 'ipc' }, { type: 'network' }, { type: 'cgroup' }],
      maskedPaths: [
        '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Context: an engine with its own state dir, runc root, cgroup parent and address range, plus a
// runc root and cgroup parent for bare containers; all of it removed by cleanup().

export interface CreateTimes {
  /** performance.now() when `runc run --detach` returned (the engine's "runc started" trace). */
  runcStarted?: number;
}

export class BenchContext {
  private template?: TemplateRef;
  private cleaned?: Promise<string[]>;
  /** Cleanup steps of services a benchmark started (API, worker, Redis): run last-in first-out. */
  private readonly hooks: Array<{ what: string; fn: () => Promise<void> }> = [];
  /** Host processes a benchmark started (e.g. redis-server): each must be gone after cleanup. */
  private readonly children: Array<{ what: string; child: ChildProcess }> = [];

  private constructor(
    readonly name: string,
    readonly stateDir: string,
    readonly engine: RuncEngine,
    /** Per VPS id: timestamps taken from the engine's own log events. */
    readonly createTimes: Map<string, CreateTimes>,
    /** /run/netns entries before the benchmark (to see what it added). */
    private readonly netnsBefore: Set<string>,
  ) {}

  static async create(name: string, netCidr: string): Promise<BenchContext> {
    const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), `runbox-bench-${name}-`));
    const netnsBefore = new Set(await listNetns());
    const times = new Map<string, CreateTimes>();
    const engine = new RuncEngine({
      stateDir,
      templatesDir: TEMPLATES_DIR,
      runcPath: RUNC,
      runtime: RUNTIME,
      userns: USERNS,
      agentPath: AGENT,
      netCidr,
      log: eventLogger(times),
    });
    note(`${name}: runbox's VPSs run under ${engine.ociRuntime.kind} (${engine.ociRuntime.reason})`);
    return new BenchContext(name, stateDir, engine, times, netnsBefore);
  }

  /** Address range of this context's engine (services started by a benchmark share it). */
  get netCidr(): string {
    return this.engine.opts.netCidr;
  }

  /**
   * Registers a cleanup step for something the benchmark started (a worker, an API, a Redis).
   * Steps run in reverse order of registration, before the engine's gc and the leak checks; a
   * step that throws is reported as a cleanup problem.
   */
  defer(what: string, fn: () => Promise<void>): void {
    this.hooks.push({ what, fn });
  }

  /** Registers a host process the benchmark started; the leak check fails if it is still alive. */
  track(what: string, child: ChildProcess): void {
    this.children.push({ what, child });
  }

  get bareRunc(): string {
    return path.join(this.stateDir, 'bare-runc');
  }
  get bareBundles(): string {
    return path.join(this.stateDir, 'bare-bundles');
  }
  /** cgroup parent of bare containers, relative to each hierarchy root. */
  get bareCgroupParent(): string {
    return `/runbox-bench-${createHash('sha256').update(this.stateDir).digest('hex').slice(0, 6)}`;
  }

  async base(): Promise<TemplateRef> {
    return (this.template ??= await resolveTemplate(TEMPLATES_DIR, 'base'));
  }

  /** The default-ish VPS the benchmarks use. */
  async spec(id: string): Promise<VpsSpec> {
    return {
      template: await this.base(),
      hostname: `b-${id.slice(0, 8)}`,
      network: 'none',
      memoryMb: 256,
      cpus: 1,
      pids: 256,
      diskMb: 64,
    };
  }

  /** Writes a bare bundle for `id` and returns its directory. */
  async bareBundle(id: string, args: string[]): Promise<string> {
    const dir = path.join(this.bareBundles, id);
    await fs.mkdir(dir, { recursive: true });
    const rootfs = (await this.base()).rootfs;
    await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify(bareSpec(rootfs, args, `${this.bareCgroupParent}/${id}`)));
    return dir;
  }

  bareArgs(...args: string[]): string[] {
    return [RUNC, '--root', this.bareRunc, ...args];
  }

  /** Whether runc still has state for a bare container. */
  async bareExists(id: string): Promise<boolean> {
    return fs.access(path.join(this.bareRunc, id)).then(
      () => true,
      () => false,
    );
  }

  /** Kills and deletes one bare container; idempotent. */
  async bareRemove(id: string): Promise<void> {
    if (!(await this.bareExists(id))) return;
    await run(this.bareArgs('kill', id, 'KILL'));
    const r = await run(this.bareArgs('delete', '--force', id));
    if (r.code !== 0 && !/does not exist/.test(r.stderr)) throw new Error(`runc delete --force ${id}: ${r.stderr.trim()}`);
  }

  /**
   * Idempotent. Removes every bare container, gc's every VPS of the engine, removes the cgroup
   * parents, then checks that nothing is left (runc containers, netns, mounts, loop devices,
   * cgroups) and removes the state dir. Returns the leaks found (empty when clean).
   */
  cleanup(): Promise<string[]> {
    return (this.cleaned ??= this.doCleanup());
  }

  private async doCleanup(): Promise<string[]> {
    const problems: string[] = [];
    const step = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        problems.push(`${what}: ${errorMessage(e)}`);
      }
    };
    for (const h of this.hooks.splice(0).reverse()) await step(h.what, h.fn);
    await step('bare containers', async () => {
      for (const c of await runcList(this.bareArgs('list', '--format', 'json'))) await this.bareRemove(c);
    });
    await step('gc', () => gc(this.engine, { all: true }));
    await step('cgroups', async () => {
      // gc removes the engine's cgroup parent in the v1 controller hierarchies, but not in the
      // hybrid layout's "unified" (v2) hierarchy where runc also creates one: remove both here.
      for (const dir of await this.cgroupDirs()) {
        const ok = await fs.rmdir(dir).then(() => true, () => false);
        if (ok && dir.startsWith('/sys/fs/cgroup/unified/') && dir.endsWith(this.engine.layout.cgroupParent)) {
          note(`removed ${dir}, which gc(all) leaves behind (it skips the unified hierarchy)`);
        }
      }
    });

    // Leak checks.
    for (const { what, child } of this.children) {
      if (child.exitCode === null && child.signalCode === null) {
        problems.push(`${what} (pid ${child.pid}) still running; killing it`);
        child.kill('SIGKILL');
      }
    }
    await step('runc list (engine)', async () => {
      const left = await runcList([this.engine.runc.runc, '--root', this.engine.runc.root, 'list', '--format', 'json']);
      if (left.length) throw new Error(`containers left: ${left.join(', ')}`);
    });
    await step('runc list (bare)', async () => {
      const left = await runcList(this.bareArgs('list', '--format', 'json'));
      if (left.length) throw new Error(`containers left: ${left.join(', ')}`);
    });
    await step('netns', async () => {
      const added = (await listNetns()).filter((n) => !this.netnsBefore.has(n) && n.startsWith(`rb${this.engine.layout.instance}-`));
      if (added.length) throw new Error(`netns left: ${added.join(', ')}`);
    });
    const mounts = await this.mountsUnder();
    if (mounts.length) problems.push(`mounts left: ${mounts.join(', ')}`);
    await step('loop devices', async () => {
      const loops = (await runOk(['losetup', '--list', '--noheadings'])).stdout.split('\n').filter((l) => l.includes(this.stateDir));
      if (loops.length) throw new Error(`loop devices left: ${loops.join('; ')}`);
    });
    await step('cgroup dirs', async () => {
      const left = await this.cgroupDirs();
      if (left.length) throw new Error(`cgroup dirs left: ${left.join(', ')}`);
    });

    // Never rm -r through a mount (the overlay's lower dir is the shared template).
    if (mounts.length === 0) await step('state dir', () => fs.rm(this.stateDir, { recursive: true, force: true }));
    else problems.push(`kept ${this.stateDir} because mounts remain under it`);
    return problems;
  }

  private async mountsUnder(): Promise<string[]> {
    const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
    return info
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((mp) => mp === this.stateDir || mp.startsWith(`${this.stateDir}/`));
  }

  /** Existing cgroup dirs of this context's two parents, in every hierarchy. */
  private async cgroupDirs(): Promise<string[]> {
    const roots = (await fs.readdir('/sys/fs/cgroup', { withFileTypes: true }).catch(() => []))
      .filter((e) => e.isDirectory())
      .map((e) => path.join('/sys/fs/cgroup', e.name));
    // cgroup v2 (unified at /sys/fs/cgroup) or v1 hierarchies below it.
    const candidates = [...roots, '/sys/fs/cgroup'];
    const out: string[] = [];
    for (const root of candidates) {
      for (const parent of [this.engine.layout.cgroupParent, this.bareCgroupParent]) {
        const dir = path.join(root, parent);
        const st = await fs.stat(dir).catch(() => undefined);
        if (!st?.isDirectory()) continue;
        // Children first (a bare container's cgroup that runc did not remove).
        for (const k of await fs.readdir(dir, { withFileTypes: true })) {
          if (k.isDirectory()) out.push(path.join(dir, k.name));
        }
        out.push(dir);
      }
    }
    return out;
  }
}

async function listNetns(): Promise<string[]> {
  return fs.readdir('/run/netns').catch(() => [] as string[]);
}

async function runcList(argv: string[]): Promise<string[]> {
  const r = await run(argv);
  if (r.code !== 0) {
    if (/no such file|does not exist/i.test(r.stderr)) return [];
    throw new Error(`${argv.join(' ')}: ${r.stderr.trim()}`);
  }
  const parsed = JSON.parse(r.stdout.trim() || 'null') as Array<{ id: string }> | null;
  return (parsed ?? []).map((c) => c.id);
}

/**
 * A silent-to-the-terminal logger that records when the engine reports "runc started" for a VPS
 * (logged at trace level right after `runc run --detach` returns), to split create in two.
 * Warnings and errors still reach stderr.
 */
function eventLogger(times: Map<string, CreateTimes>): Logger {
  const stream = {
    write(line: string) {
      const t = now();
      let o: { level?: number; msg?: string; vpsId?: string };
      try {
        o = JSON.parse(line) as typeof o;
      } catch {
        return;
      }
      if (o.msg === 'runc started' && o.vpsId) times.set(o.vpsId, { ...times.get(o.vpsId), runcStarted: t });
      if ((o.level ?? 0) >= 40) process.stderr.write(line);
    },
  };
  return pino({ name: 'runbox-bench', level: 'trace', base: null }, stream);
}
