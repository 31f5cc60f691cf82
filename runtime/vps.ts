import type { NetworkMode, VpsNetwork } from './net/network.js';
import type { TemplateRef } from './templates/store.js';
import type { VpsState } from './state.js';
import type { CgroupUsage } from './cgroups/stats.js';

export type VpsId = string;

/** What a VPS is made of; fixed at creation. */
export interface VpsSpec {
  template: TemplateRef;
  hostname: string;
  network: NetworkMode;
  /** Creation-time limits; a job may tighten or loosen them (within host maximums) when it starts. */
  memoryMb: number;
  cpus: number;
  pids: number;
  diskMb: number;
}

export interface JobRun {
  argv: string[];
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  stdin?: Buffer;
  timeoutSec: number;
  /** Captured stdout+stderr beyond this many bytes is discarded (and reported). */
  outputBytes: number;
  /** Live output; `offset` is the byte offset of `data` in the combined captured output. */
  onOutput?: (stream: 'stdout' | 'stderr', data: Buffer, offset: number) => void;
  signal?: AbortSignal;
}

export interface RunResult {
  exitCode: number | null;
  signal: number | null;
  oomKilled: boolean;
  timedOut: boolean;
  canceled: boolean;
  outputTruncated: boolean;
  outputBytes: number;
  /** The job moved on to another host (live migration): this VPS's part is over, the job is not. */
  migrated?: boolean;
  /** Set when the job did not run to an exit status of its own (could not start, VPS died). */
  error?: { code: 'start_failed' | 'vps_lost'; message: string };
  usage: { cpuMs: number; memoryPeakBytes: number; wallMs: number };
  startedAt: string;
  finishedAt: string;
}

export interface VpsInfo {
  id: VpsId;
  state: VpsState;
  spec: VpsSpec;
  network: VpsNetwork;
  createdAt: string;
}

export interface Vps {
  readonly id: VpsId;
  readonly state: VpsState;
  info(): VpsInfo;
  /** Runs the one job this VPS will ever run. Rejects `conflict` if a job already ran. */
  run(job: JobRun): Promise<RunResult>;
  /** Writes a file inside the VPS through the agent (never follows a planted final symlink). */
  writeFile(path: string, content: Buffer, mode?: number, owner?: string): Promise<void>;
  usage(): Promise<CgroupUsage>;
}

export interface VpsEngine {
  /** Creates a ready VPS (agent running, no job). Rejects `conflict` if the id exists. */
  create(id: VpsId, spec: VpsSpec): Promise<Vps>;
  /** Idempotent: destroying an unknown or already-gone VPS resolves. */
  destroy(id: VpsId): Promise<void>;
  /** VPS ids this engine has on disk. */
  list(): Promise<VpsId[]>;
}
