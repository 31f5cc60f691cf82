import { describe, it, expect } from 'vitest';
import { parseKeyValues, parseLimit } from '../../runtime/cgroups/stats.js';

const V1_OOM_CONTROL = 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n';

const V2_MEMORY_EVENTS = 'low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n';

const V2_CPU_STAT = [
  'usage_usec 1234567',
  'user_usec 1000000',
  'system_usec 234567',
  'core_sched.force_idle_usec 0',
  'nr_periods 120',
  'nr_throttled 7',
  'throttled_usec 45000',
  'nr_bursts 0',
  'burst_usec 0',
  '',
].join('\n');

const V1_MEMORY_STAT = [
  'cache 1081344',
  'rss 3338240',
  'rss_huge 0',
  'mapped_file 0',
  'hierarchical_memory_limit 9223372036854771712',
  'total_rss 3338240',
  '',
].join('\n');

describe('parseKeyValues', () => {
  it('parses cgroup v1 memory.oom_control', () => {
    expect(parseKeyValues(V1_OOM_CONTROL)).toEqual({ oom_kill_disable: 0, under_oom: 0, oom_kill: 3 });
  });

  it('parses cgroup v2 memory.events', () => {
    expect(parseKeyValues(V2_MEMORY_EVENTS)).toEqual({ low: 0, high: 0, max: 17, oom: 2, oom_kill: 1, oom_group_kill: 0 });
  });

  it('parses cgroup v2 cpu.stat', () => {
    expect(parseKeyValues(V2_CPU_STAT)).toEqual({
      usage_usec: 1_234_567,
      user_usec: 1_000_000,
      system_usec: 234_567,
      'core_sched.force_idle_usec': 0,
      nr_periods: 120,
      nr_throttled: 7,
      throttled_usec: 45_000,
      nr_bursts: 0,
      burst_usec: 0,
    });
  });

  it('parses cgroup v1 memory.stat, including a near-2^63 limit', () => {
    const kv = parseKeyValues(V1_MEMORY_STAT);
    expect(kv.rss).toBe(3_338_240);
    expect(kv.cache).toBe(1_081_344);
    expect(kv.hierarchical_memory_limit).toBe(9223372036854771712);
    expect(Object.keys(kv)).toHaveLength(6);
  });

  it.each<[string, string, Record<string, number>]>([
    ['empty text', '', {}],
    ['blank lines and padding', '\n  a 1  \n\n\tb\t2\n', { a: 1, b: 2 }],
    ['CRLF line ends', 'a 1\r\nb 2\r\n', { a: 1, b: 2 }],
    ['negative numbers', 'x -1\n', { x: -1 }],
    ['non-numeric values skipped', 'a max\nb 1.5\nc 12k\nd 4\n', { d: 4 }],
    ['key without value skipped', 'lonely\nk 1\n', { k: 1 }],
    ['extra columns ignored', 'k 1 2 3\n', { k: 1 }],
    ['last duplicate wins', 'k 1\nk 2\n', { k: 2 }],
    ['no trailing newline', 'oom_kill 5', { oom_kill: 5 }],
  ])('%s', (_what, text, expected) => {
    expect(parseKeyValues(text)).toEqual(expected);
  });
});

describe('parseLimit', () => {
  it.each<[string, number | 'max']>([
    ['max\n', 'max'],
    ['max', 'max'],
    ['  max  ', 'max'],
    ['536870912\n', 536_870_912],
    ['256\n', 256],
    ['0\n', 0],
    ['9223372036854771712\n', 9223372036854771712],
  ])('%j -> %j', (text, expected) => {
    expect(parseLimit(text)).toBe(expected);
  });
});
