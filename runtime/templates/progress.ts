/**
 * Build progress: which step a build is in and how many bytes it has downloaded and installed.
 * Parsed from the tools' own output (debootstrap's "I: Retrieving" lines, apt's "Get:" lines with
 * sizes, "Need to get", "Unpacking"/"Setting up") and from the growth of the rootfs, sampled.
 */
export interface BuildProgress {
  template: string;
  hash: string;
  /** e.g. "waiting", "debootstrap", "apt-get update", "apt-get install", "cleanup", "smoke", "done". */
  step: string;
  message?: string;
  /** Packages fetched so far in this step / expected (when the tool says). */
  packages?: number;
  downloadedBytes?: number;
  downloadTotalBytes?: number;
  /** Size of the rootfs being built, sampled. */
  rootfsBytes?: number;
}

export type ProgressFn = (p: BuildProgress) => void;

const UNIT: Record<string, number> = { B: 1, kB: 1e3, KB: 1e3, MB: 1e6, GB: 1e9, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** "12.6 MB" → 12600000 (apt prints SI units; "12,6 MB" in some locales). */
export function parseSize(s: string): number | undefined {
  const m = /^([\d.,]+)\s*([kKMG]?i?B)$/.exec(s.trim());
  if (!m) return undefined;
  const n = Number(m[1]!.replace(',', '.'));
  const u = UNIT[m[2]!];
  return Number.isFinite(n) && u ? Math.round(n * u) : undefined;
}

/** What one line of apt-get output says, if anything. */
export type AptEvent =
  | { kind: 'get'; bytes: number; pkg?: string }
  | { kind: 'need'; bytes: number }
  | { kind: 'unpack'; pkg: string }
  | { kind: 'setup'; pkg: string };

export function parseAptLine(line: string): AptEvent | undefined {
  let m = /^Get:\d+\s+\S+\s+\S+\s+(?:\S+\s+)?(\S+)\s+\S+\s+\S+\s+\[([^\]]+)\]$/.exec(line);
  if (m) {
    const bytes = parseSize(m[2]!);
    return bytes === undefined ? undefined : { kind: 'get', bytes, pkg: m[1] };
  }
  m = /^Get:\d+ .*\[([^\]]+)\]$/.exec(line);
  if (m) {
    const bytes = parseSize(m[1]!);
    return bytes === undefined ? undefined : { kind: 'get', bytes };
  }
  m = /^Need to get ([\d.,]+ [kMG]?B)(?:\/[\d.,]+ [kMG]?B)? of archives/.exec(line);
  if (m) {
    const bytes = parseSize(m[1]!);
    return bytes === undefined ? undefined : { kind: 'need', bytes };
  }
  m = /^Unpacking (\S+)/.exec(line);
  if (m) return { kind: 'unpack', pkg: m[1]! };
  m = /^Setting up (\S+)/.exec(line);
  if (m) return { kind: 'setup', pkg: m[1]! };
  return undefined;
}

/** debootstrap: "I: Retrieving libc6 2.36-9", "I: Validating ...", "I: Installing core packages...". */
export type DebootstrapEvent = { kind: 'retrieve'; pkg: string } | { kind: 'phase'; message: string } | { kind: 'error'; message: string };

export function parseDebootstrapLine(line: string): DebootstrapEvent | undefined {
  let m = /^I: Retrieving (\S+) \S+/.exec(line);
  if (m) return { kind: 'retrieve', pkg: m[1]! };
  m = /^I: ((?:Installing|Unpacking|Configuring) (?:core|required|base|the base) .*|Base system installed.*)$/.exec(line);
  if (m) return { kind: 'phase', message: m[1]! };
  m = /^E: (.*)$/.exec(line);
  if (m) return { kind: 'error', message: m[1]! };
  return undefined;
}

/** Human-readable bytes for progress lines: 1.2 MB, 340 kB. */
export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${Math.round(n / 1e3)} kB`;
  return `${n} B`;
}

/** One line for the CLI and logs. */
export function formatProgress(p: BuildProgress): string {
  const parts: string[] = [];
  if (p.message) parts.push(p.message);
  if (p.packages !== undefined) parts.push(`${p.packages} packages`);
  if (p.downloadedBytes !== undefined) {
    parts.push(`${formatBytes(p.downloadedBytes)}${p.downloadTotalBytes ? ` of ${formatBytes(p.downloadTotalBytes)}` : ''} downloaded`);
  }
  if (p.rootfsBytes !== undefined) parts.push(`rootfs ${formatBytes(p.rootfsBytes)}`);
  return `[${p.template} ${p.hash}] ${p.step}${parts.length ? `: ${parts.join(', ')}` : ''}`;
}
