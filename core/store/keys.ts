/** Redis key names, all under one prefix so several runbox instances can share a Redis. */
export class Keys {
  constructor(readonly prefix: string) {}
  job = (id: string) => `${this.prefix}job:${id}`;
  request = (id: string) => `${this.prefix}job:${id}:req`;
  history = (id: string) => `${this.prefix}job:${id}:hist`;
  tenantJobs = (tenant: string) => `${this.prefix}jobs:${tenant}`;
  /** Job keys of every live (starting … migrating) job. */
  liveJobs = () => `${this.prefix}live-jobs`;
  idempotency = (tenant: string, key: string) => `${this.prefix}idem:${tenant}:${key}`;
  log = (id: string) => `${this.prefix}log:${id}`;
  artifacts = (id: string) => `${this.prefix}art:${id}`;
  host = (id: string) => `${this.prefix}host:${id}`;
  hosts = () => `${this.prefix}hosts`;
  /** Set while a host is drained (survives its restarts). */
  draining = (id: string) => `${this.prefix}host:${id}:draining`;
  tenantActive = (tenant: string) => `${this.prefix}active:${tenant}`;
  /** Quota of queued work: job key → bytes of its stored request, `#` → their total. */
  tenantQueued = (tenant: string) => `${this.prefix}queued:${tenant}`;
  /** Artifact budget: job id → artifact bytes held in Redis, `#` → their total. */
  tenantArtifactBytes = (tenant: string) => `${this.prefix}artbytes:${tenant}`;
  /** When to check next whether a job's artifacts still exist (score: ms since the epoch). */
  tenantArtifactCheck = (tenant: string) => `${this.prefix}artcheck:${tenant}`;
  /** Set for RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC after a checkpoint request: the floor between two. */
  checkpointRequested = (jobId: string) => `${this.prefix}ckpt-req:${jobId}`;
  /** Which worker process (instance) holds a live job: the fence against two live copies. */
  lease = (jobId: string) => `${this.prefix}lease:${jobId}`;
  /** Ids of the jobs one worker instance holds leases on. */
  leasesOf = (instance: string) => `${this.prefix}leases:${instance}`;
  statusCounts = () => `${this.prefix}stats:status`;
  histogram = (name: string) => `${this.prefix}stats:hist:${name}`;
  rate = (tenant: string, window: number) => `${this.prefix}rate:${tenant}:${window}`;
  eventsChannel = () => `${this.prefix}events`;
  cancelChannel = () => `${this.prefix}cancel`;
  /** Commands for one host (e.g. "checkpoint job X"); answers go to a reply list. */
  hostCommands = (hostId: string) => `${this.prefix}cmd:${hostId}`;
  reply = (id: string) => `${this.prefix}reply:${id}`;
  bullPrefix = () => `${this.prefix}bull`;
}
