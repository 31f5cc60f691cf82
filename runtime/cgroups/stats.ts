/** Pure parsers for cgroup files (v1 and v2), table-tested. */

/** "key value" lines (memory.oom_control, memory.events, cpu.stat, memory.stat) into a map. */
export function parseKeyValues(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && /^-?\d+$/.test(v)) out[k] = Number(v);
  }
  return out;
}

/** "max" or a number (v2 limit files). */
export function parseLimit(text: string): number | 'max' {
  const t = text.trim();
  return t === 'max' ? 'max' : Number(t);
}

export interface CgroupUsage {
  cpuMs: number;
  memoryPeakBytes: number;
  memoryCurrentBytes: number;
  oomKills: number;
  pidsCurrent: number;
}
