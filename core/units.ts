import { RunboxError } from './errors.js';

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Parses "256m", "1g", "512k", "1048576" (bytes) into bytes. */
export function parseSize(input: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$/i.exec(input);
  if (!m) throw new RunboxError('invalid_argument', `invalid size "${input}" (examples: 256m, 1g, 512k)`);
  // Floor before the check: "0.5" (half a byte) must not slip through as 0.
  const value = Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isFinite(value) || value <= 0) {
    throw new RunboxError('invalid_argument', `invalid size "${input}": must be greater than zero`);
  }
  return value;
}

/** Parses "30s", "5m", "1h", "250ms", "90" (seconds) into seconds (may be fractional). */
export function parseDuration(input: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(input);
  if (!m) throw new RunboxError('invalid_argument', `invalid duration "${input}" (examples: 30s, 5m, 1h)`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 's').toLowerCase();
  const seconds = unit === 'ms' ? n / 1000 : unit === 'm' ? n * 60 : unit === 'h' ? n * 3600 : n;
  if (!(seconds > 0)) throw new RunboxError('invalid_argument', `invalid duration "${input}": must be greater than zero`);
  return seconds;
}

export const MiB = 1024 * 1024;
