import { describe, expect, it } from 'vitest';
import { runSoak } from '../../bench/soak-run.js';

/**
 * The soak (bench/soak-run.ts, `npm run bench -- soak` at full size), short: a 3-host cluster,
 * jobs of every kind (busybox counters, SQLite over loopback TCP as root, a memory checksum, files
 * with a manifest) with checkpoints every 5 s, live moves (both modes where the hosts can), a drain, the busiest host
 * killed. Nothing may be lost, stuck, repeated, corrupted or left behind.
 */
describe('soak', () => {
  it('moves, a drain and a host crash under a mixed load lose nothing and leave nothing', async () => {
    const r = await runSoak({ hosts: 3, jobs: 8, jobSec: 45, moves: 30, parallel: 2, kill: true });
    expect({ bad: r.bad, stuck: r.stuck, leaks: r.leaks }).toEqual({ bad: [], stuck: [], leaks: [] });
    expect(r.succeeded).toBe(8);
    expect(r.moves.ok).toBeGreaterThanOrEqual(15);
    // Post-copy where the hosts can (not with user namespaces and vm.unprivileged_userfaultfd=0).
    if (r.modes.includes('post-copy')) expect(r.frozenMs.byMode['post-copy']!.count).toBeGreaterThan(0);
    expect(r.frozenMs.byMode['stop-and-copy']!.count).toBeGreaterThan(0);
    expect(r.restoredAfterKill).toBeGreaterThanOrEqual(1);
  }, 600_000);
});
