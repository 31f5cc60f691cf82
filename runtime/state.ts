import { RunboxError } from '../core/errors.js';

/**
 * VPS lifecycle: creating → ready → running → exited → destroyed, with destroy possible from any
 * state (a failure mid-way must still clean up) and checkpoint from ready/running.
 */
export const VPS_STATES = ['creating', 'ready', 'running', 'exited', 'destroying', 'destroyed'] as const;
export type VpsState = (typeof VPS_STATES)[number];

export const VPS_OPS = ['markReady', 'run', 'markExited', 'writeFile', 'checkpoint', 'destroy', 'markDestroyed'] as const;
export type VpsOp = (typeof VPS_OPS)[number];

const TABLE: Record<VpsOp, { from: readonly VpsState[]; to?: VpsState }> = {
  markReady: { from: ['creating'], to: 'ready' },
  run: { from: ['ready'], to: 'running' },
  markExited: { from: ['running'], to: 'exited' },
  writeFile: { from: ['ready', 'running', 'exited'] },
  checkpoint: { from: ['ready', 'running'] },
  destroy: { from: ['creating', 'ready', 'running', 'exited', 'destroying'], to: 'destroying' },
  markDestroyed: { from: ['destroying'], to: 'destroyed' },
};

export function can(op: VpsOp, state: VpsState): boolean {
  return TABLE[op].from.includes(state);
}

/** The state after `op`, or a `conflict` error naming both. */
export function next(op: VpsOp, state: VpsState): VpsState {
  if (!can(op, state)) throw new RunboxError('conflict', `cannot ${op} a VPS that is ${state}`);
  return TABLE[op].to ?? state;
}
