import { describe, it, expect } from 'vitest';
import { LIMIT_KEYS, LimitsSchema, resolveLimits, type Limits } from '../../core/limits.js';
import { thrown } from '../helpers/errors.js';

const DEFAULTS: Limits = { memoryMb: 256, cpus: 1, pids: 256, diskMb: 256, timeoutSec: 300, outputBytes: 16 * 1024 * 1024 };
const MAX: Limits = { memoryMb: 8192, cpus: 16, pids: 32768, diskMb: 65536, timeoutSec: 86400, outputBytes: 1024 * 1024 * 1024 };

describe('LIMIT_KEYS', () => {
  it('lists exactly the schema fields', () => {
    expect([...LIMIT_KEYS]).toEqual(['memoryMb', 'cpus', 'pids', 'diskMb', 'timeoutSec', 'outputBytes']);
    expect(Object.keys(LimitsSchema.shape).sort()).toEqual([...LIMIT_KEYS].sort());
  });
});

describe('LimitsSchema', () => {
  it('accepts an empty object (every field optional)', () => {
    expect(LimitsSchema.parse({})).toEqual({});
  });

  it('accepts a full valid object unchanged', () => {
    const full = { memoryMb: 512, cpus: 0.5, pids: 64, diskMb: 1024, timeoutSec: 1.5, outputBytes: 0 };
    expect(LimitsSchema.parse(full)).toEqual(full);
  });

  it.each([
    ['memoryMb', 8],
    ['cpus', 0.01],
    ['cpus', 1024],
    ['pids', 8],
    ['diskMb', 16],
    ['timeoutSec', 0.001],
    ['outputBytes', 0],
  ])('accepts %s = %d (at the boundary)', (key, value) => {
    const r = LimitsSchema.safeParse({ [key]: value });
    expect(r.success).toBe(true);
    expect(r.data).toEqual({ [key]: value });
  });

  it.each([
    ['memoryMb', 7],
    ['memoryMb', 8.5],
    ['memoryMb', 0],
    ['memoryMb', -256],
    ['cpus', 0.009],
    ['cpus', 0],
    ['cpus', 1024.5],
    ['pids', 7],
    ['pids', 8.5],
    ['diskMb', 15],
    ['diskMb', 16.5],
    ['timeoutSec', 0],
    ['timeoutSec', -1],
    ['outputBytes', -1],
    ['outputBytes', 1.5],
    ['memoryMb', '256'],
    ['cpus', '1'],
    ['memoryMb', null],
    ['cpus', Number.NaN],
  ])('rejects %s = %j, with the issue on that field', (key, value) => {
    const r = LimitsSchema.safeParse({ [key]: value });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.path.join('.'))).toEqual([key]);
  });

  it.each([{ memory: 256 }, { memoryMb: 256, gpus: 1 }, { timeout: 30 }])('rejects unknown keys (strict): %j', (input) => {
    const r = LimitsSchema.safeParse(input);
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]!.code).toBe('unrecognized_keys');
  });

  it.each([null, 'x', 42, []])('rejects a non-object %j', (input) => {
    expect(LimitsSchema.safeParse(input).success).toBe(false);
  });
});

describe('resolveLimits', () => {
  it('returns the defaults when nothing is requested', () => {
    expect(resolveLimits(undefined, DEFAULTS, MAX)).toEqual(DEFAULTS);
    expect(resolveLimits({}, DEFAULTS, MAX)).toEqual(DEFAULTS);
  });

  it('overrides only the requested fields', () => {
    expect(resolveLimits({ memoryMb: 1024, timeoutSec: 5 }, DEFAULTS, MAX)).toEqual({ ...DEFAULTS, memoryMb: 1024, timeoutSec: 5 });
  });

  it('does not let explicit undefined erase a default', () => {
    expect(resolveLimits({ memoryMb: undefined, cpus: 2 }, DEFAULTS, MAX)).toEqual({ ...DEFAULTS, cpus: 2 });
  });

  it('returns a new object and does not mutate its inputs', () => {
    const requested = { pids: 10 };
    const defaults = { ...DEFAULTS };
    const out = resolveLimits(requested, defaults, MAX);
    expect(out).not.toBe(defaults);
    expect(defaults).toEqual(DEFAULTS);
    expect(requested).toEqual({ pids: 10 });
  });

  it('accepts every field exactly at the maximum', () => {
    expect(resolveLimits({ ...MAX }, DEFAULTS, MAX)).toEqual(MAX);
  });

  it.each(LIMIT_KEYS.map((k) => [k]))('rejects %s above the maximum with limit_exceeded naming the field', (key) => {
    const over = key === 'cpus' || key === 'timeoutSec' ? MAX[key] + 0.5 : MAX[key] + 1;
    const e = thrown(() => resolveLimits({ [key]: over }, DEFAULTS, MAX));
    expect(e.code).toBe('limit_exceeded');
    expect(e.message).toBe(`limits.${key} = ${over} is above this host's maximum of ${MAX[key]}`);
    expect(e.meta).toEqual({ field: `limits.${key}`, max: MAX[key] });
  });

  it('checks defaults against the maximum too', () => {
    const e = thrown(() => resolveLimits({}, { ...DEFAULTS, pids: 100 }, { ...MAX, pids: 50 }));
    expect(e.code).toBe('limit_exceeded');
    expect(e.meta).toEqual({ field: 'limits.pids', max: 50 });
  });

  it('names the first offending field in LIMIT_KEYS order', () => {
    const e = thrown(() => resolveLimits({ outputBytes: MAX.outputBytes + 1, memoryMb: MAX.memoryMb + 1 }, DEFAULTS, MAX));
    expect(e.meta).toEqual({ field: 'limits.memoryMb', max: MAX.memoryMb });
  });
});
