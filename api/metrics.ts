import { JOB_STATUSES } from '../core/job.js';
import type { Host } from '../core/store/hosts.js';
import { HISTOGRAM_BOUNDS, HISTOGRAMS, type HistogramData, type HistogramName } from '../core/store/metrics.js';

/** Prometheus text exposition format 0.0.4, rendered by hand from a snapshot. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export interface MetricsSnapshot {
  queue: { waiting: number; active: number; delayed: number };
  statusCounts: Record<string, number>;
  hosts: Host[];
  histograms: Record<HistogramName, HistogramData>;
}

type Labels = Record<string, string>;

const escapeLabel = (v: string): string => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

function series(name: string, labels: Labels, value: number): string {
  const l = Object.entries(labels)
    .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
    .join(',');
  return `${name}${l ? `{${l}}` : ''} ${formatValue(value)}`;
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function family(name: string, type: 'gauge' | 'counter' | 'histogram', help: string, lines: string[]): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines];
}

export function renderMetrics(m: MetricsSnapshot): string {
  const out: string[] = [];
  out.push(
    ...family(
      'runbox_queue_jobs',
      'gauge',
      'jobs in the queue by state',
      (['waiting', 'active', 'delayed'] as const).map((s) => series('runbox_queue_jobs', { state: s }, m.queue[s])),
    ),
  );
  const statuses = [...new Set([...JOB_STATUSES, ...Object.keys(m.statusCounts)])];
  out.push(...family('runbox_jobs', 'gauge', 'jobs by status', statuses.map((s) => series('runbox_jobs', { status: s }, Math.max(0, m.statusCounts[s] ?? 0)))));
  out.push(...family('runbox_hosts', 'gauge', 'worker hosts with a live heartbeat', [series('runbox_hosts', {}, m.hosts.length)]));
  out.push(...family('runbox_host_running_jobs', 'gauge', 'jobs running on a host', m.hosts.map((h) => series('runbox_host_running_jobs', { host: h.id }, h.running))));
  out.push(...family('runbox_host_capacity', 'gauge', 'jobs a host runs at once', m.hosts.map((h) => series('runbox_host_capacity', { host: h.id }, h.capacity))));
  out.push(...family('runbox_host_draining', 'gauge', '1 while a host is draining', m.hosts.map((h) => series('runbox_host_draining', { host: h.id }, h.draining ? 1 : 0))));

  const pools = m.hosts.flatMap((h) => h.pools.map((p) => ({ host: h.id, p })));
  const poolLines: string[] = [];
  for (const { host, p } of pools) {
    const l = { host, template: p.template, network: p.network };
    poolLines.push(series('runbox_pool_vps', { ...l, state: 'idle' }, p.idle));
    poolLines.push(series('runbox_pool_vps', { ...l, state: 'creating' }, p.creating));
    poolLines.push(series('runbox_pool_vps', { ...l, state: 'in_use' }, p.inUse));
  }
  out.push(...family('runbox_pool_vps', 'gauge', 'VPSs of a warm pool by state', poolLines));
  out.push(
    ...family(
      'runbox_vps_create_ms_avg',
      'gauge',
      'average time to create a pool VPS, in milliseconds',
      pools.map(({ host, p }) => series('runbox_vps_create_ms_avg', { host, template: p.template, network: p.network }, p.createMsAvg)),
    ),
  );
  out.push(
    ...family(
      'runbox_vps_created_total',
      'counter',
      'VPSs created by a pool since its host started',
      pools.map(({ host, p }) => series('runbox_vps_created_total', { host, template: p.template, network: p.network }, p.created)),
    ),
  );

  for (const name of Object.keys(HISTOGRAMS) as HistogramName[]) {
    const h = m.histograms[name];
    const metric = `runbox_${name}`;
    const lines = HISTOGRAM_BOUNDS.map((b, i) => series(`${metric}_bucket`, { le: String(b) }, h.buckets[i] ?? 0));
    lines.push(series(`${metric}_bucket`, { le: '+Inf' }, h.count));
    lines.push(series(`${metric}_sum`, {}, h.sum));
    lines.push(series(`${metric}_count`, {}, h.count));
    out.push(...family(metric, 'histogram', HISTOGRAMS[name], lines));
  }
  return `${out.join('\n')}\n`;
}
