import { describe, expect, it } from 'vitest';
import { renderMetrics, type MetricsSnapshot } from '../../api/metrics.js';
import { HISTOGRAM_BOUNDS } from '../../core/store/metrics.js';
import { host } from './harness.js';

const empty = { buckets: HISTOGRAM_BOUNDS.map(() => 0), sum: 0, count: 0 };

function snapshot(over: Partial<MetricsSnapshot> = {}): MetricsSnapshot {
  return {
    queue: { waiting: 3, active: 1, delayed: 0 },
    statusCounts: { queued: 3, running: 1, succeeded: 10 },
    hosts: [],
    histograms: { job_queue_seconds: empty, job_run_seconds: empty },
    ...over,
  };
}

describe('renderMetrics', () => {
  it('renders every family with HELP and TYPE, and zero series for unseen statuses', () => {
    const text = renderMetrics(snapshot());
    expect(text.endsWith('\n')).toBe(true);
    expect(text).toContain('# HELP runbox_queue_jobs jobs in the queue by state\n# TYPE runbox_queue_jobs gauge\nrunbox_queue_jobs{state="waiting"} 3\nrunbox_queue_jobs{state="active"} 1\nrunbox_queue_jobs{state="delayed"} 0\n');
    expect(text).toMatch(/^runbox_jobs\{status="timed_out"\} 0$/m);
    expect(text).toMatch(/^runbox_jobs\{status="succeeded"\} 10$/m);
    expect(text).toMatch(/^runbox_hosts 0$/m);
    // Each family's TYPE line appears exactly once.
    const types = text.split('\n').filter((l) => l.startsWith('# TYPE'));
    expect(new Set(types).size).toBe(types.length);
  });

  it('renders pools per host, template and network, escaping label values', () => {
    const h = host('rack"1\\a\nb', { pools: [{ template: 'base', network: 'private', diskMb: 256, idle: 4, creating: 0, inUse: 2, minIdle: 2, maxSize: 8, created: 9, createMsAvg: 12.25 }] });
    const text = renderMetrics(snapshot({ hosts: [h] }));
    const labels = 'host="rack\\"1\\\\a\\nb",template="base",network="private"';
    expect(text).toContain(`runbox_pool_vps{${labels},state="idle"} 4\n`);
    expect(text).toContain(`runbox_pool_vps{${labels},state="creating"} 0\n`);
    expect(text).toContain(`runbox_pool_vps{${labels},state="in_use"} 2\n`);
    expect(text).toContain(`runbox_vps_create_ms_avg{${labels}} 12.25\n`);
    expect(text).toContain(`runbox_vps_created_total{${labels}} 9\n`);
    expect(text).toMatch(/^runbox_hosts 1$/m);
  });

  it('renders histograms with cumulative buckets, +Inf = count, sum and count', () => {
    const buckets = HISTOGRAM_BOUNDS.map((b) => (b >= 1 ? 5 : b >= 0.1 ? 2 : 0));
    const text = renderMetrics(snapshot({ histograms: { job_queue_seconds: empty, job_run_seconds: { buckets, sum: 7.5, count: 6 } } }));
    expect(text).toContain('# TYPE runbox_job_run_seconds histogram\n');
    expect(text).toContain('runbox_job_run_seconds_bucket{le="0.05"} 0\nrunbox_job_run_seconds_bucket{le="0.1"} 2\n');
    expect(text).toContain('runbox_job_run_seconds_bucket{le="3600"} 5\nrunbox_job_run_seconds_bucket{le="+Inf"} 6\nrunbox_job_run_seconds_sum 7.5\nrunbox_job_run_seconds_count 6\n');
  });
});
