import { describe, it, expect } from 'vitest';
import { can, next, VPS_OPS, VPS_STATES, type VpsOp, type VpsState } from '../../runtime/state.js';
import { RunboxError } from '../../core/errors.js';

/** The whole expected transition table: op -> (from state -> resulting state). Absent = not allowed. */
const EXPECTED: Record<VpsOp, Partial<Record<VpsState, VpsState>>> = {
  markReady: { creating: 'ready' },
  run: { ready: 'running' },
  markExited: { running: 'exited' },
  writeFile: { ready: 'ready', running: 'running', exited: 'exited' },
  checkpoint: { ready: 'ready', running: 'running' },
  destroy: { creating: 'destroying', ready: 'destroying', running: 'destroying', exited: 'destroying', destroying: 'destroying' },
  markDestroyed: { destroying: 'destroyed' },
};

const PAIRS = VPS_OPS.flatMap((op) => VPS_STATES.map((state) => [op, state, EXPECTED[op][state] ?? null] as const));

describe('VPS state machine', () => {
  it('has exactly these states and ops', () => {
    expect([...VPS_STATES]).toEqual(['creating', 'ready', 'running', 'exited', 'destroying', 'destroyed']);
    expect([...VPS_OPS]).toEqual(['markReady', 'run', 'markExited', 'writeFile', 'checkpoint', 'destroy', 'markDestroyed']);
    expect(PAIRS).toHaveLength(42);
  });

  it.each(PAIRS)('%s from %s -> %s', (op, state, expected) => {
    expect(can(op, state)).toBe(expected !== null);
    if (expected !== null) {
      expect(next(op, state)).toBe(expected);
    } else {
      let err: unknown;
      try {
        next(op, state);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RunboxError);
      expect((err as RunboxError).code).toBe('conflict');
      expect((err as RunboxError).message).toBe(`cannot ${op} a VPS that is ${state}`);
    }
  });

  it('allows exactly 14 (op, state) pairs', () => {
    expect(PAIRS.filter(([op, state]) => can(op, state))).toHaveLength(14);
  });

  it('destroyed is terminal', () => {
    expect(VPS_OPS.filter((op) => can(op, 'destroyed'))).toEqual([]);
  });

  it('destroy is possible from every live state', () => {
    expect(VPS_STATES.filter((s) => can('destroy', s))).toEqual(['creating', 'ready', 'running', 'exited', 'destroying']);
  });

  it('walks the happy path', () => {
    const ops: VpsOp[] = ['markReady', 'writeFile', 'checkpoint', 'run', 'checkpoint', 'writeFile', 'markExited', 'writeFile', 'destroy', 'destroy', 'markDestroyed'];
    const seen: VpsState[] = [];
    let s: VpsState = 'creating';
    for (const op of ops) seen.push((s = next(op, s)));
    expect(seen).toEqual(['ready', 'ready', 'ready', 'running', 'running', 'running', 'exited', 'exited', 'destroying', 'destroying', 'destroyed']);
  });

  it('cannot run twice or run after exit', () => {
    expect(() => next('run', next('run', 'ready'))).toThrow('cannot run a VPS that is running');
    expect(() => next('run', 'exited')).toThrow('cannot run a VPS that is exited');
  });
});
