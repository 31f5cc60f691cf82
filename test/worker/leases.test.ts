import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { instanceHost, LeaseStore } from '../../core/store/leases.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describe('job leases', () => {
  it('a claim is a compare-and-set: of two claimers expecting the same holder, one wins', async () => {
    const leases = new LeaseStore(redis.client(), redis.prefix());
    expect(await leases.claim('job1', '', 'h1~a')).toEqual({ ok: true, previous: '' });
    // A move's target and a recovering host both expect h1~a: only the first gets it.
    const [target, recovery] = await Promise.all([leases.claim('job1', 'h1~a', 'h2~b'), leases.claim('job1', 'h1~a', 'h3~c')]);
    expect([target.ok, recovery.ok].sort()).toEqual([false, true]);
    const winner = target.ok ? 'h2~b' : 'h3~c';
    expect((await leases.get('job1'))?.holder).toBe(winner);
    expect(await leases.heldBy('h1~a')).toEqual([]);
    expect(await leases.heldBy(winner)).toEqual(['job1']);
    // Taking back one's own lease (a source restoring its job after a failed move) fails once it moved.
    expect((await leases.claim('job1', 'h1~a', 'h1~a')).ok).toBe(false);
    expect(await leases.claim('job1', winner, winner)).toEqual({ ok: true, previous: winner });
  });

  it('release only by the holder (or by anyone with *); "*" claims whatever the holder', async () => {
    const leases = new LeaseStore(redis.client(), redis.prefix());
    await leases.claim('j', '', 'h1~a');
    expect(await leases.release('j', 'h2~b')).toBe(false);
    expect((await leases.get('j'))?.holder).toBe('h1~a');
    expect(await leases.claim('j', '*', 'h2~b')).toEqual({ ok: true, previous: 'h1~a' });
    expect(await leases.release('j', '*')).toBe(true);
    expect(await leases.get('j')).toBeNull();
    expect(await leases.heldBy('h2~b')).toEqual([]);
    expect((await leases.claim('j', 'h2~b', 'h3~c')).ok).toBe(false); // nobody holds it: '' expected
  });

  it('names the host of an instance', () => {
    expect(instanceHost('h1~0a1b')).toBe('h1');
    expect(instanceHost('my.host-1~ff')).toBe('my.host-1');
    expect(instanceHost('nohost')).toBe('');
  });
});
