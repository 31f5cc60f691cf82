import { note, report, type Benchmark } from './lib.js';
import { runSoak } from './soak-run.js';

const NAME = 'soak';

/**
 * `npm run bench -- soak`: moves, drains and a host crash under a mixed load (bench/soak-run.ts),
 * reported as numbers; fails (exit 1) when any job was lost, stuck, or ended with wrong output or
 * broken checks, or when anything was left on the machine.
 */
export const soak: Benchmark = {
  name: NAME,
  description: 'mixed long jobs on a runbox cluster, hundreds of live moves, a drain, a host killed: nothing lost or left',
  options: {
    hosts: { default: 3, min: 2, help: 'cluster hosts' },
    jobs: { default: 32, min: 4, help: 'concurrent jobs (counters, SQLite-over-TCP, memory, files)' },
    'job-sec': { default: 420, min: 20, help: 'seconds each job works' },
    moves: { default: 360, min: 1, help: 'live moves to attempt' },
    parallel: { default: 3, min: 1, help: 'moves at a time' },
    kill: { default: 1, min: 0, help: '1: kill a host halfway' },
  },
  async run(_ctx, o) {
    const r = await runSoak({ hosts: o.hosts!, jobs: o.jobs!, jobSec: o['job-sec']!, moves: o.moves!, parallel: o.parallel!, kill: o.kill === 1, say: note });
    const put = (metric: string, value: number, unit: string) => report(NAME, { metric, value, unit });
    put('jobs', r.jobs, 'jobs');
    put('jobs_succeeded_intact', r.succeeded, 'jobs');
    put('jobs_bad', r.bad.length, 'jobs');
    put('jobs_stuck', r.stuck.length, 'jobs');
    put('moves_attempted', r.moves.attempted, 'moves');
    put('moves_ok', r.moves.ok, 'moves');
    put('moves_per_min', r.moves.perMin, 'moves/min');
    put('frozen_p50', r.frozenMs.p50, 'ms');
    put('frozen_p99', r.frozenMs.p99, 'ms');
    put('frozen_max', r.frozenMs.max, 'ms');
    for (const [mode, s] of Object.entries(r.frozenMs.byMode)) {
      put(`frozen_p50.${mode}`, s.p50, 'ms');
      put(`frozen_p99.${mode}`, s.p99, 'ms');
      put(`moves.${mode}`, s.count, 'moves');
    }
    put('restored_after_host_kill', r.restoredAfterKill, 'jobs');
    put('leaks', r.leaks.length, 'items');
    put('wall', r.wallSec, 's');
    for (const [cause, n] of Object.entries(r.moves.failed)) note(`move failed ${n}×: ${cause}`);
    for (const b of r.bad) note(`BAD job ${b.id} (${b.kind}) ${b.status}: ${b.why}`);
    for (const s of r.stuck) note(`STUCK job ${s}`);
    for (const l of r.leaks) note(`LEAK ${l}`);
    if (r.bad.length || r.stuck.length || r.leaks.length) throw new Error(`soak: ${r.bad.length} bad, ${r.stuck.length} stuck, ${r.leaks.length} leaks`);
  },
};
