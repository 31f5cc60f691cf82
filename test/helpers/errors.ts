import { expect } from 'vitest';
import { RunboxError } from '../../core/errors.js';

/** The RunboxError `fn` throws (fails the test if it throws nothing or something else). */
export function thrown(fn: () => unknown): RunboxError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(RunboxError);
    return e as RunboxError;
  }
  throw new Error('expected a throw');
}
