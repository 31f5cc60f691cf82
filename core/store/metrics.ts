import type { Redis } from 'ioredis';
import type { Keys } from './keys.js';

/**
 * Latency histograms shared by every process: one Redis hash per histogram at
 * `Keys.histogram(name)`, with Prometheus-style cumulative bucket counts in fields `le:<bound>`,
 * plus `sum` (seconds) and `count`. The worker records, the API renders them in /metrics.
 */
export const HISTOGRAM_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600] as const;

export const HISTOGRAMS = {
  job_queue_seconds: 'time from a job being accepted to its process starting in a VPS',
  job_run_seconds: 'time from a job process starting to the job ending',
} as const;
export type HistogramName = keyof typeof HISTOGRAMS;

export interface HistogramData {
  /** Cumulative counts, one per HISTOGRAM_BOUNDS entry, in the same order. */
  buckets: number[];
  sum: number;
  count: number;
}

/** Adds one observation atomically (every bucket at or above the value, sum and count). */
export async function recordHistogram(redis: Redis, keys: Keys, name: HistogramName, valueSec: number): Promise<void> {
  const key = keys.histogram(name);
  const m = redis.multi();
  for (const b of HISTOGRAM_BOUNDS) if (valueSec <= b) m.hincrby(key, `le:${b}`, 1);
  m.hincrbyfloat(key, 'sum', valueSec).hincrby(key, 'count', 1);
  await m.exec();
}

export async function readHistogram(redis: Redis, keys: Keys, name: HistogramName): Promise<HistogramData> {
  const h = await redis.hgetall(keys.histogram(name));
  return {
    buckets: HISTOGRAM_BOUNDS.map((b) => Number(h[`le:${b}`] ?? 0)),
    sum: Number(h.sum ?? 0),
    count: Number(h.count ?? 0),
  };
}
