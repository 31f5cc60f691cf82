import type { Redis } from 'ioredis';
import type { Logger } from '../../core/log.js';
import type { Host } from '../../core/store/hosts.js';
import type { JobStore } from '../../core/store/jobs.js';
import type { Keys } from '../../core/store/keys.js';
import type { LeaseStore } from '../../core/store/leases.js';
import type { RuncEngine } from '../../runtime/runc-engine.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import type { RunningJobs } from '../running.js';
import type { MigrationCredentials } from './credentials.js';
import type { MigrationFaults } from './faults.js';
import type { FileSender } from './sender.js';
import type { MigrationMode } from './protocol.js';

/** What a caller asks for; `auto` is post-copy where both hosts can do it. */
export type MigrationPreference = 'auto' | MigrationMode;

export interface MigrationResult {
  from: string;
  to: string;
  startedAt: string;
  totalMs: number;
  frozenMs: number;
  mode: MigrationMode;
}

/** What both sides of a move need from their host (built by worker/main.ts). */
export interface MigrationDeps {
  hostId: string;
  engine: RuncEngine;
  jobs: JobStore;
  redis: Redis;
  keys: Keys;
  running: RunningJobs;
  /** Job leases (core/store/leases.ts) and this worker's holder name: a move hands the lease over. */
  leases: LeaseStore;
  instance: string;
  log: Logger;
  /** This host's key and certificate on the migration channel (credentials.ts). */
  credentials: MigrationCredentials;
  /** Live hosts: the certificates they publish are the only ones the channel accepts. */
  hosts: { list(): Promise<Host[]> };
  /** Sends a move's files from a thread of its own (sender.ts); absent: from this thread. */
  sender?: FileSender;
  /** Failure injection (faults.ts); absent: none. */
  faults?: MigrationFaults;
  /** Template recipes, to build the version an incoming job needs (default: templates/ of this checkout). */
  recipesDir?: string;
  /** This host can migrate with post-copy (criu lazy-pages, see runtime/checkpoint/lazy.ts). */
  postCopy: boolean;
  /** Whether this host can checkpoint processes of non-root users (core/checkpointable.ts). */
  checkpointNonRoot: boolean;
  /** This host's advertised address: the migration receiver and a post-copy source's page server listen there. */
  address: string | null;
  /** Runs a job that arrived here already running, to its end (the processor's supervision). */
  adopt(jobId: string, vps: RuncVps, note: string, gate?: Promise<boolean>): Promise<void>;
  /** A job whose processes are gone here without a result: resume it from its last checkpoint (or host_lost). */
  recover(jobId: string, why: string): Promise<void>;
}
