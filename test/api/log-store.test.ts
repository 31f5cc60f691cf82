import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { LogStore } from '../../core/store/logs.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/** The log store against a real redis-server: offsets as ids, and the cut-back after a restore. */
let redis: TestRedis;
let conn: Redis;
beforeAll(async () => {
  redis = await startRedis();
  conn = redis.client();
});
afterAll(async () => {
  conn?.disconnect();
  await redis?.stop();
});

const chunk = (offset: number, text: string) => ({ stream: 'stdout' as const, data: Buffer.from(text), offset });
const text = async (logs: LogStore, id: string) => (await logs.read(id, 0, 1000)).map((c) => c.data.toString()).join('');

describe('LogStore.truncate (restore from an older checkpoint)', () => {
  it('drops every chunk from the cut on, then takes the restored output from there; a chunk before the cut is not written twice', async () => {
    const logs = new LogStore(conn, redis.prefix());
    await logs.append('j1', [chunk(0, 'aaaaa'), chunk(5, 'bbbbb'), chunk(10, 'ccccc')]);
    await logs.truncate('j1', 10);
    expect(await text(logs, 'j1')).toBe('aaaaabbbbb');
    await logs.append('j1', [chunk(5, 'XXXXX'), chunk(10, 'ddddd')]); // 5: already there, ignored
    expect(await text(logs, 'j1')).toBe('aaaaabbbbbddddd');
  });

  it('shortens the chunk that reaches past the cut (merged frames), so nothing is repeated after it', async () => {
    const logs = new LogStore(conn, redis.prefix());
    await logs.append('j2', [chunk(0, 'aaaaa'), { stream: 'stderr', data: Buffer.from('bbbbb'), offset: 5 }]);
    await logs.truncate('j2', 7);
    expect(await logs.read('j2', 0, 10)).toEqual([chunk(0, 'aaaaa'), { stream: 'stderr', data: Buffer.from('bb'), offset: 5 }]);
    await logs.append('j2', [chunk(7, 'ccc')]);
    expect(await text(logs, 'j2')).toBe('aaaaabbccc');
    await logs.truncate('j2', 0);
    expect(await text(logs, 'j2')).toBe('');
    await logs.append('j2', [chunk(0, 'again')]);
    expect(await text(logs, 'j2')).toBe('again');
  });

  it('does nothing to a job without output', async () => {
    const logs = new LogStore(conn, redis.prefix());
    await logs.truncate('none', 10);
    expect(await logs.read('none', 0, 10)).toEqual([]);
  });
});
