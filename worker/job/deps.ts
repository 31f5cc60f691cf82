import type { Redis } from 'ioredis';
import type { Logger } from '../../core/log.js';
import type { ArtifactStorage } from '../../core/store/artifacts.js';
import type { HostRegistry } from '../../core/store/hosts.js';
import type { JobStore } from '../../core/store/jobs.js';
import type { LeaseStore } from '../../core/store/leases.js';
import type { LogStore } from '../../core/store/logs.js';
import type { TenantSlots } from '../../core/store/slots.js';
import type { CheckpointStore } from '../../runtime/checkpoint/store.js';
import type { VpsPool } from '../../runtime/pool.js';
import type { RuncEngine } from '../../runtime/runc-engine.js';
import type { JobCheckpointer } from '../checkpoints.js';

/** What a host needs to run jobs: its runtime, the stores, its identity. */
export interface JobDeps {
  hostId: string;
  /** This worker process: `<hostId>~<random>`, the holder name of its job leases. */
  instance: string;
  engine: RuncEngine;
  pools: VpsPool[];
  jobs: JobStore;
  leases: LeaseStore;
  logs: LogStore;
  artifacts: ArtifactStorage;
  slots: TenantSlots;
  redis: Redis;
  tenantConcurrency: number;
  resultTtlSec: number;
  maxArtifactBytes: number;
  /** Template recipes for on-demand builds (default: templates/ of this checkout). */
  recipesDir?: string;
  checkpointer: JobCheckpointer;
  checkpoints: CheckpointStore;
  /** Host policy: checkpoint jobs running longer than this, every this many seconds (0: off). */
  checkpointAfterSec: number;
  hosts: HostRegistry;
  log: Logger;
}

/**
 * How many times one job may be brought back from a checkpoint after its VPS was lost (a host
 * crash, a restore or adoption that failed, a VPS that died without an exit status). A job whose
 * checkpoint itself is what kills it must end, not loop.
 */
export const MAX_RESTORES = 3;

/** History notes of restores start with this (counted against MAX_RESTORES). */
export const RESTORE_NOTE = 'restore:';
