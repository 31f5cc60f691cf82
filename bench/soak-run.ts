import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isTerminal, type Job } from '../core/job.js';
import { createLogger } from '../core/log.js';
import { Layout } from '../runtime/layout.js';
import { usernsPostCopyRefusal } from '../runtime/checkpoint/lazy.js';
import { ensureTemplate } from '../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../runtime/templates/recipes.js';
import { TestCluster } from '../test/helpers/cluster-proc.js';
import { TEMPLATES_DIR } from './lib.js';
import { expectedLog, jobFor, KINDS, type Kind } from './soak-workloads.js';

/**
 * The soak: a cluster of `hosts` (runbox cluster up), `jobs` long jobs of every kind
 * (soak-workloads.ts) with checkpoints every 5 s, then as many live moves as it can make (mixed
 * modes, random targets, `parallel` at a time) until `moves` or the time runs out, a drain and a
 * resume, and one host killed in the middle. Afterwards every job must have succeeded with its
 * output exactly once and in order and its own checks intact, and no host may keep anything.
 */
export interface SoakOptions {
  hosts: number;
  jobs: number;
  /** How long each job runs (its own work, pauses not counted). */
  jobSec: number;
  moves: number;
  parallel: number;
  /** Kill one host (the last) halfway. */
  kill: boolean;
  /** Progress lines (stderr). */
  say?: (line: string) => void;
}

export interface SoakReport {
  jobs: number;
  succeeded: number;
  /** Jobs that ended otherwise, or whose log or own checks were wrong: what and why. */
  bad: Array<{ id: string; kind: Kind; status: string; why: string }>;
  /** Jobs still live when they should have ended long ago. */
  stuck: string[];
  moves: { attempted: number; ok: number; failed: Record<string, number>; perMin: number };
  /** The move modes tried (post-copy only where the hosts can). */
  modes: string[];
  frozenMs: { count: number; p50: number; p99: number; max: number; byMode: Record<string, { p50: number; p99: number; count: number }> };
  restoredAfterKill: number;
  /** Anything of the cluster's instances left on the machine after `cluster down`. */
  leaks: string[];
  wallSec: number;
}

interface Tracked {
  id: string;
  kind: Kind;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]! : NaN;
};

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const say = o.say ?? (() => undefined);
  const t0 = Date.now();
  // The Python jobs need their template on every host (the hosts share one templates dir).
  await ensureTemplate('python', { recipesDir: DEFAULT_RECIPES_DIR, templatesDir: TEMPLATES_DIR, log: createLogger('warn') });
  const c = await TestCluster.start(o.hosts, {
    RUNBOX_RATE_LIMIT_PER_SEC: '100000',
    RUNBOX_JOB_LOCK_MS: '3000',
    RUNBOX_WORKER_CONCURRENCY: String(Math.max(8, o.jobs)),
    RUNBOX_TENANT_CONCURRENCY: String(Math.max(8, o.jobs)),
    RUNBOX_LOG_LEVEL: process.env.RUNBOX_SOAK_LOG ?? 'warn',
  });
  const instances = Array.from({ length: o.hosts }, (_, i) => new Layout(path.join(c.stateDir, 'cluster', 'hosts', `h${i + 1}`)).instance);
  const report: SoakReport = {
    jobs: o.jobs,
    succeeded: 0,
    bad: [],
    stuck: [],
    moves: { attempted: 0, ok: 0, failed: {}, perMin: 0 },
    modes: [],
    frozenMs: { count: 0, p50: NaN, p99: NaN, max: NaN, byMode: {} },
    restoredAfterKill: 0,
    leaks: [],
    wallSec: 0,
  };
  const ticks = o.jobSec * 10;
  let stopped = false;
  try {
    const tracked: Tracked[] = [];
    for (let i = 0; i < o.jobs; i++) {
      const kind = KINDS[i % KINDS.length]!;
      tracked.push({ id: (await c.json<Job>('/v1/jobs', { body: jobFor(kind, ticks) })).id, kind });
    }
    await Promise.all(tracked.map((t) => c.waitStatus(t.id, (j) => j.status === 'running', `job ${t.id} (${t.kind}) to run`, 180_000)));
    say(`soak: ${o.jobs} jobs running on ${o.hosts} hosts`);

    // The disruptions, on the clock of the move phase.
    const phaseMs = o.jobSec * 1000 * 0.8;
    const phaseStart = Date.now();
    let killed: string | undefined;
    const events = (async () => {
      await sleepUntil(phaseStart + phaseMs * 0.25);
      say('soak: draining h2');
      await c.call('/v1/hosts/h2/drain', { method: 'POST' }).then((r) => r.text());
      await sleepUntil(phaseStart + phaseMs * 0.4);
      await c.call('/v1/hosts/h2/resume', { method: 'POST' }).then((r) => r.text());
      if (o.kill) {
        await sleepUntil(phaseStart + phaseMs * 0.55);
        // The host with the most jobs: the crash must cost something.
        const { hosts } = await c.json<{ hosts: Array<{ id: string; running: number }> }>('/v1/hosts');
        killed = hosts.sort((a, b) => b.running - a.running)[0]!.id;
        say(`soak: killing ${killed} (${hosts[0]!.running} jobs)`);
        c.killHost(killed);
      }
    })();

    const frozen: Array<{ ms: number; mode: string }> = [];
    // Hosts whose VPSs have user namespaces move by stop-and-copy only where the kernel refuses
    // their lazy restore (runtime/checkpoint/lazy.ts).
    const { hosts: all } = await c.json<{ hosts: Array<{ userns?: boolean }> }>('/v1/hosts');
    const unprivileged = (await fs.readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').catch(() => '0')).trim();
    const modes = all.some((h) => h.userns) && usernsPostCopyRefusal(unprivileged) ? ['stop-and-copy'] : ['post-copy', 'stop-and-copy'];
    report.modes = modes;
    const mover = async () => {
      while (!stopped && report.moves.attempted < o.moves && Date.now() - phaseStart < phaseMs) {
        const { hosts } = await c.json<{ hosts: Array<{ id: string; draining: boolean }> }>('/v1/hosts');
        const pick = tracked[Math.floor(Math.random() * tracked.length)]!;
        const job = await c.job(pick.id);
        if (job.status !== 'running') {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        const targets = hosts.filter((h) => h.id !== job.host && !h.draining && h.id !== killed);
        if (targets.length === 0) {
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
        const to = targets[Math.floor(Math.random() * targets.length)]!.id;
        const mode = modes[Math.floor(Math.random() * modes.length)]!;
        report.moves.attempted++;
        const r = await c.call(`/v1/jobs/${pick.id}/migrate`, { body: { host: to, mode } });
        const body = (await r.json().catch(() => ({}))) as { code?: string; detail?: string };
        if (r.ok) report.moves.ok++;
        else {
          const cause = `${r.status} ${body.code ?? '?'}: ${(body.detail ?? '').replace(/[0-9a-f]{12,}/g, 'ID').replace(/\d+/g, 'N').slice(0, 120)}`;
          report.moves.failed[cause] = (report.moves.failed[cause] ?? 0) + 1;
        }
      }
    };
    // Awaited after the moves; until then a failure of the events must not end the process (unhandled).
    events.catch(() => undefined);
    await Promise.all(Array.from({ length: o.parallel }, mover));
    await events;
    const moveMin = (Date.now() - phaseStart) / 60_000;
    report.moves.perMin = report.moves.ok / moveMin;
    say(`soak: ${report.moves.ok}/${report.moves.attempted} moves in ${(moveMin * 60).toFixed(0)} s; waiting for the jobs to end`);

    // Every job ends on its own (its work is a fixed number of steps): give them their time plus margin.
    const endBy = Date.now() + o.jobSec * 1000 + 180_000;
    const finals = new Map<string, Job>();
    while (finals.size < tracked.length && Date.now() < endBy) {
      for (const t of tracked) {
        if (finals.has(t.id)) continue;
        const j = await c.job(t.id);
        if (isTerminal(j.status)) finals.set(t.id, j);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    for (const t of tracked) {
      const j = finals.get(t.id);
      if (!j) {
        report.stuck.push(t.id);
        continue;
      }
      for (const m of j.migrations) {
        frozen.push({ ms: m.frozenMs, mode: m.mode });
      }
      if (j.history.some((h) => h.note?.startsWith('restore:') && killed && h.note.includes(`(${killed})`))) report.restoredAfterKill++;
      const lines = (await (await c.call(`/v1/jobs/${t.id}/logs`)).text()).replace(/\n$/, '').split('\n');
      const wrong = j.status !== 'succeeded' ? `${j.error?.code ?? ''} ${j.error?.message ?? ''}`.trim() || `exit ${j.exitCode}` : expectedLog(t.kind, ticks)(lines);
      if (wrong) report.bad.push({ id: t.id, kind: t.kind, status: j.status, why: wrong });
      else report.succeeded++;
    }
    const ms = frozen.map((f) => f.ms);
    report.frozenMs = { count: ms.length, p50: pct(ms, 50), p99: pct(ms, 99), max: Math.max(...ms), byMode: {} };
    for (const mode of ['post-copy', 'stop-and-copy']) {
      const of = frozen.filter((f) => f.mode === mode).map((f) => f.ms);
      report.frozenMs.byMode[mode] = { count: of.length, p50: pct(of, 50), p99: pct(of, 99) };
    }
    // Live hosts hold nothing of the jobs any more (their pools' idle VPSs aside).
    // (Heartbeats come every 2 s: one taken just before the last job ended may still list it.)
    type HostView = { id: string; running: number; jobs?: string[] };
    const holding = async () => (await c.json<{ hosts: HostView[] }>('/v1/hosts')).hosts.filter((h) => h.running !== 0 || (h.jobs?.length ?? 0) !== 0);
    let held = await holding();
    for (const until = Date.now() + 10_000; held.length > 0 && Date.now() < until; held = await holding()) await new Promise((r) => setTimeout(r, 500));
    for (const h of held) report.leaks.push(`host ${h.id} still holds job(s) ${(h.jobs ?? []).join(' ')} (running ${h.running}) 10 s after every job ended`);
  } finally {
    stopped = true;
    await c.stop({ keepState: true });
    report.leaks.push(...(await leftovers(c.stateDir, instances)));
    await fs.rm(c.stateDir, { recursive: true, force: true }).catch((e: unknown) => report.leaks.push(`state dir: ${(e as Error).message}`));
    report.wallSec = (Date.now() - t0) / 1000;
  }
  return report;
}

/** What of the cluster's host instances is still on this machine: mounts, netns, cgroups, processes. */
async function leftovers(stateDir: string, instances: string[]): Promise<string[]> {
  const out: string[] = [];
  const mounts = await fs.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mounts.split('\n')) if (line.includes(stateDir)) out.push(`mount ${line.split(' ')[4]}`);
  for (const pid of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    if (cmd.includes(stateDir)) out.push(`process ${pid}: ${cmd.slice(0, 160)}`);
  }
  const netns = execFileSync('ip', ['netns', 'list']).toString();
  for (const i of instances) {
    for (const n of netns.split('\n')) if (n.startsWith(`rb${i}-`)) out.push(`netns ${n.split(' ')[0]}`);
    for (const ctrl of await fs.readdir('/sys/fs/cgroup').catch(() => [] as string[])) {
      const dir = path.join('/sys/fs/cgroup', ctrl, `runbox-${i}`);
      const kids = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const k of kids) if (k.isDirectory()) out.push(`cgroup ${path.join(dir, k.name)}`);
    }
  }
  return out;
}

function sleepUntil(at: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, at - Date.now())));
}
