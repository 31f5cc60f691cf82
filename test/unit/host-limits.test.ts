import { describe, expect, it } from 'vitest';
import { headroom, type HostUsage } from '../../bench/host-limits.js';

const usage = (o: Partial<HostUsage>): HostUsage => ({ fds: 10, tasks: 100, netns: 0, mounts: 50, loops: 0, memcgs: 100, memAvailable: 10_000, ...o });

describe('headroom', () => {
  it('divides what is left of each limit by the use per VPS, the first limit first', () => {
    const before = usage({});
    const after = usage({ fds: 310, tasks: 200, netns: 100, mounts: 250, memcgs: 200, memAvailable: 9_000 });
    const rows = headroom(before, after, 100, { fds: 1000, tasks: 1200, netns: 100_000, mounts: 100_000, loops: 1 << 20, memcgs: 65535, memAvailable: 20_000 });
    expect(rows[0]).toEqual({ resource: 'fds', perVps: 3, used: 310, limit: 1000, moreVps: 230 });
    expect(rows.find((r) => r.resource === 'memAvailable')).toMatchObject({ perVps: 10, moreVps: 900 });
    expect(rows.find((r) => r.resource === 'tasks')).toMatchObject({ perVps: 1, moreVps: 1000 });
    expect(rows.at(-1)).toMatchObject({ resource: 'loops', moreVps: Infinity });
  });

  it('a resource that did not grow never limits', () => {
    const rows = headroom(usage({ mounts: 60 }), usage({ mounts: 55 }), 10, { fds: 1, tasks: 1, netns: 1, mounts: 1, loops: 1, memcgs: 1, memAvailable: 1 });
    expect(rows.find((r) => r.resource === 'mounts')!.moreVps).toBe(Infinity);
  });
});
