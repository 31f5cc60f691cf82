import { describe, expect, it } from 'vitest';
import { Places } from '../../worker/places.js';

describe('places', () => {
  it('gives at most `size` at once; waiters get freed places in order; tryTake never waits; giving back twice counts once', async () => {
    const p = new Places(2);
    const a = await p.take();
    const b = p.tryTake()!;
    expect(p.tryTake()).toBeUndefined();
    const order: string[] = [];
    const c = p.take().then((free) => (order.push('c'), free));
    const d = p.take().then((free) => (order.push('d'), free));
    await new Promise((r) => setTimeout(r, 10));
    expect(order).toEqual([]);
    a();
    a();
    expect((await c)).toBeTypeOf('function');
    expect(p.inUse).toBe(2);
    b();
    await d;
    expect(order).toEqual(['c', 'd']);
  });
});
