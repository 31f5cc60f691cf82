import os from 'node:os';
import { isIPv4 } from 'node:net';
import { Worker } from 'bullmq';
import { connectRedis, connectSubscriber } from '../core/redis.js';
import type { ServiceConfig } from '../core/config.js';
import type { Logger } from '../core/log.js';
import { QUEUE_NAME } from '../core/queue.js';
import { ObjectArtifactStore } from '../core/objects/artifacts.js';
import { ArtifactStore } from '../core/store/artifacts.js';
import { ArtifactSweeper } from './artifact-sweeper.js';
import { HostRegistry } from '../core/store/hosts.js';
import { JobStore } from '../core/store/jobs.js';
import { Keys } from '../core/store/keys.js';
import { LogStore } from '../core/store/logs.js';
import { TenantSlots } from '../core/store/slots.js';
import { gc } from '../runtime/gc.js';
import { VpsPool } from '../runtime/pool.js';
import { RuncEngine } from '../runtime/runc-engine.js';
import { resolveTemplate } from '../runtime/templates/store.js';
import { Heartbeat, primaryAddress } from './host.js';
import { JobCheckpointer } from './checkpoints.js';
import { HostCommands } from './commands.js';
import { openCheckpointStore } from './object-checkpoints.js';
import { createProcessor } from './processors/run-job.js';
import { RunningJobs } from './running.js';
import type { JobDeps } from './job/deps.js';
import { adoptJob } from './job/adopt.js';
import { recoverJob } from './job/recover.js';
import { Reaper } from './job/reaper.js';
import { Reconciler } from './job/reconcile.js';
import { LeaseStore } from '../core/store/leases.js';
import { CAP_SYS_RESOURCE, hasCapability } from '../runtime/host/caps.js';
import { ensurePrivateDirs } from '../runtime/host/private-dirs.js';
import { newId } from '../core/ids.js';
import { FileSender, labelFaults, loadCredentials, MigrationServer, NoFaults, type MigrationDeps } from './migration/index.js';
import { postCopySupport } from '../runtime/checkpoint/lazy.js';
import { RunboxError } from '../core/errors.js';
import { JobQueue } from '../core/queue.js';

export interface WorkerOptions {
  config: ServiceConfig;
  redisUrl: string;
  log: Logger;
  /** BullMQ lock settings; shorter in tests so a killed worker's job is recovered quickly. */
  lockDurationMs?: number;
  stalledIntervalMs?: number;
  templatesDir?: string;
  /** Wait until pools hold their minimum idle VPSs before taking jobs. */
  warmBeforeStart?: boolean;
}

export interface WorkerHandle {
  hostId: string;
  engine: RuncEngine;
  pools: VpsPool[];
  running: RunningJobs;
  /** Graceful: stop taking jobs, let running ones finish up to the grace period, destroy all VPSs. */
  close(): Promise<void>;
}

/**
 * Composition root of a worker host: Redis → runtime engine (gc of a previous crash first) →
 * warm pools → BullMQ worker → heartbeat + cancel listener. Closed in reverse order.
 */
export async function startWorker(o: WorkerOptions): Promise<WorkerHandle> {
  const { config, log } = o;
  const hostId = config.hostId;
  // This process's name as a holder of job leases: a restart of the host is a new instance.
  const instance = `${hostId}~${newId(8)}`;
  const hlog = log.child({ hostId });
  await ensurePrivateDirs([config.stateDir, o.templatesDir ?? config.templatesDir, config.checkpointDir], { log: hlog }); // runtime/host/private-dirs.ts
  const redis = connectRedis(o.redisUrl);
  const sub = connectSubscriber(o.redisUrl);
  const keys = new Keys(config.redisPrefix);
  const jobs = new JobStore(redis, config.redisPrefix);

  const engine = new RuncEngine({
    stateDir: config.stateDir,
    templatesDir: o.templatesDir ?? config.templatesDir,
    runcPath: config.runcPath,
    crunPath: config.crunPath,
    runtime: config.runtime,
    userns: config.userns,
    criuPath: config.criuPath,
    agentPath: config.agentPath,
    netCidr: config.netCidr,
    log: hlog,
    egressAllow: config.egressAllow, vpsTun: config.vpsTun,
  });
  hlog.info({ runtime: engine.ociRuntime.kind, path: engine.ociRuntime.path, reason: engine.ociRuntime.reason }, 'OCI runtime');
  hlog.info({ userns: await engine.usernsEnabled(), setting: config.userns }, 'user namespaces');
  const cleaned = await gc(engine);
  if (cleaned.vps.length) hlog.info({ vps: cleaned.vps.length }, 'cleaned up VPSs left by a previous run');

  const pools: VpsPool[] = [];
  for (const p of config.pools) {
    const template = await resolveTemplate(engine.layout.templatesDir, p.template).catch((e: unknown) => {
      hlog.warn({ err: e, template: p.template }, 'pool template not built; no pool for it');
      return undefined;
    });
    if (!template) continue;
    pools.push(
      new VpsPool(
        {
          template,
          network: p.network,
          diskMb: config.defaultLimits.diskMb,
          memoryMb: config.maxLimits.memoryMb,
          cpus: config.maxLimits.cpus,
          pids: config.maxLimits.pids,
          minIdle: config.poolMinIdle,
          maxSize: config.poolMax,
        },
        engine,
        hlog,
      ),
    );
  }
  if (o.warmBeforeStart) await Promise.all(pools.map((p) => p.warm()));
  else for (const p of pools) p.refill();

  const running = new RunningJobs();
  const { store: checkpoints, objects } = await openCheckpointStore(config.objectStore, config.checkpointDir, hlog);
  // CRIU can dump non-root processes only where root has CAP_SYS_RESOURCE (core/checkpointable.ts).
  // And in user namespaces anywhere: host root, their owner, holds every capability over their ids.
  const checkpointNonRoot = hasCapability(CAP_SYS_RESOURCE) || (await engine.usernsEnabled());
  // With an object store, artifacts go there (nothing in Redis, so no tenant budget of Redis bytes).
  const objectArtifacts = objects && new ObjectArtifactStore(objects);
  const checkpointer = new JobCheckpointer({ engine, store: checkpoints, jobs, hostId, keep: config.checkpointKeep, log: hlog, checkpointNonRoot });
  const runDeps: JobDeps = {
      hostId,
      instance,
      engine,
      leases: new LeaseStore(redis, config.redisPrefix),
      pools,
      jobs,
      logs: new LogStore(redis, config.redisPrefix),
      artifacts: objectArtifacts ?? new ArtifactStore(redis, config.redisPrefix, { tenantMaxBytes: config.tenantMaxArtifactBytes }),
      slots: new TenantSlots(redis, config.redisPrefix),
      redis,
      tenantConcurrency: config.tenantConcurrency,
      resultTtlSec: config.resultTtlSec,
      maxArtifactBytes: config.maxArtifactBytes,
      recipesDir: config.recipesDir,
      checkpointer,
      checkpoints,
      checkpointAfterSec: config.checkpointAfterSec,
      hosts: new HostRegistry(redis, config.redisPrefix),
      log: hlog,
    };
  const processor = createProcessor(runDeps, running);
  const bullConnection = connectRedis(o.redisUrl);
  const worker = new Worker(QUEUE_NAME, processor, {
    connection: bullConnection,
    prefix: keys.bullPrefix(),
    concurrency: config.workerConcurrency,
    lockDuration: o.lockDurationMs ?? config.jobLockMs,
    stalledInterval: o.stalledIntervalMs ?? Math.max(500, Math.round(config.jobLockMs / 2)),
    // Our processor decides what a re-delivered job means (host_lost); BullMQ must not fail it first.
    maxStalledCount: 100,
  });
  worker.on('error', (e) => hlog.error({ err: e }, 'queue worker error'));

  // Cancellation: a message names the job; whichever worker runs it aborts it. The record's
  // cancelRequested flag is polled too, in case a message was missed (pub/sub is fire-and-forget).
  // Live migration: a receiver for jobs moving here, and the commands that move jobs away.
  const registry = new HostRegistry(redis, config.redisPrefix);
  // This host's key and certificate on the migration channel (made on first start unless configured).
  const migrationAddress = config.migrationAddress ?? primaryAddress();
  const credentials = await loadCredentials({ stateDir: config.stateDir, hostId, files: config.migrationTls, log: hlog });
  // Post-copy where this host can do it (and fs.pipe-max-size raised for CRIU's page server).
  const postCopy = config.migrationMode === 'stop-and-copy' ? { ok: false, detail: 'off (RUNBOX_MIGRATION_MODE=stop-and-copy)' } : await postCopySupport(engine.runc.criu, true, { userns: await engine.usernsEnabled() });
  if (config.migrationMode === 'post-copy' && !postCopy.ok) throw new RunboxError('host_unsupported', `RUNBOX_MIGRATION_MODE=post-copy, but this host cannot: ${postCopy.detail}`);
  hlog.info({ postCopy: postCopy.ok, detail: postCopy.detail }, 'live migration modes');
  const migrationDeps: MigrationDeps = {
    hostId,
    engine,
    jobs,
    redis,
    keys,
    running,
    leases: runDeps.leases,
    instance,
    log: hlog,
    recipesDir: config.recipesDir,
    postCopy: postCopy.ok,
    checkpointNonRoot,
    address: migrationAddress,
    credentials,
    hosts: registry,
    sender: new FileSender({ log: hlog }),
    faults: config.faultInjection ? labelFaults(jobs) : NoFaults,
    adopt: (jobId, vps, note, gate) => adoptJob(runDeps, running, jobId, vps, note, gate).catch((e) => hlog.error({ err: e, jobId }, 'adopted job failed')),
    recover: async (jobId, why) => {
      // Its supervision here must have ended first (it let go with handOver).
      for (const deadline = Date.now() + 10_000; running.byId.has(jobId) && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
      const stored = await jobs.get(jobId);
      if (!stored) return;
      await recoverJob(runDeps, running, stored.job, stored.tenant, hlog.child({ jobId, tenant: stored.tenant }), { why, orphanOf: instance, code: 'restore_failed' });
    },
  };
  const migrationServer = new MigrationServer(migrationDeps);
  const migrationPort = await migrationServer.listen(config.migrationPort);
  let heartbeatRef: Heartbeat | undefined;
  const drain = {
    setDraining: async (on: boolean) => {
      if (on) {
        await redis.set(keys.draining(hostId), '1');
        await worker.pause(true);
      } else {
        await redis.del(keys.draining(hostId));
        worker.resume();
      }
      if (heartbeatRef) {
        heartbeatRef.draining = on;
        await heartbeatRef.beat();
      }
    },
  };
  await sub.subscribe(keys.cancelChannel(), keys.hostCommands(hostId));
  const commands = new HostCommands(redis, keys, running, checkpointer, registry, migrationDeps, drain, hlog);
  sub.on('message', (ch: string, msg: string) => {
    if (ch === keys.cancelChannel()) running.cancel(msg);
    else void commands.handle(msg);
  });
  const cancelPoll = setInterval(() => {
    void (async () => {
      for (const id of running.byId.keys()) {
        const v = await redis.hget(keys.job(id), 'cancelRequested');
        if (v === 'true') running.cancel(id);
      }
    })().catch(() => undefined);
  }, 500);
  cancelPoll.unref();

  const heartbeat = new Heartbeat(
    registry,
    { id: hostId, instance, checkpointNonRoot, address: migrationAddress, capacity: config.workerConcurrency, templatesDir: engine.layout.templatesDir, version: '0.1.0', migrationPort, migrationFingerprint: credentials.fingerprint, runtime: engine.ociRuntime.kind, userns: await engine.usernsEnabled() },
    pools,
    running,
  );
  heartbeatRef = heartbeat;
  const recoveryQueue = new JobQueue(redis, config.redisPrefix);
  const reaper = new Reaper(runDeps, recoveryQueue);
  reaper.start();
  const artifactSweeper = objectArtifacts && new ArtifactSweeper({ store: objectArtifacts, jobs, redis, instance, log: hlog });
  artifactSweeper?.start();
  // What Redis says this host holds against what it runs (orphans recovered, fenced copies killed).
  const reconciler = new Reconciler(runDeps, running);
  const reconcileTimer = setInterval(() => void reconciler.tick().catch((e) => hlog.warn({ err: e }, 'reconciling held jobs failed')), 2000);
  reconcileTimer.unref();
  // Egress VPSs never reach the other runbox hosts (migration ports, page servers) nor a Redis
  // on the network: the peer set follows the registry (addresses written by other hosts: only
  // well-formed IPv4 addresses are taken).
  const redisHost = (() => {
    try {
      return new URL(o.redisUrl).hostname;
    } catch {
      return '';
    }
  })();
  const syncPeerHosts = async () => {
    const addresses = (await registry.list()).map((h) => h.address ?? '');
    await engine.net.setPeerHosts([...addresses, redisHost].filter((a) => isIPv4(a) && !a.startsWith('127.')));
  };
  await syncPeerHosts().catch((e: unknown) => hlog.warn({ err: e }, 'setting the peer hosts egress VPSs may not reach failed'));
  const peerTimer = setInterval(() => void syncPeerHosts().catch((e: unknown) => hlog.warn({ err: e }, 'updating the peer hosts failed')), 5000);
  peerTimer.unref();
  // A host drained before a restart stays drained.
  if (await redis.get(keys.draining(hostId))) await drain.setDraining(true);
  heartbeat.start((e) => hlog.warn({ err: e }, 'heartbeat failed'));
  hlog.info({ pools: pools.map((p) => `${p.opts.template.name}:${p.opts.network}`), concurrency: config.workerConcurrency }, 'worker started');

  let closing: Promise<void> | undefined;
  return {
    hostId,
    engine,
    pools,
    running,
    close: () =>
      (closing ??= (async () => {
        hlog.info({ running: running.byId.size }, 'worker stopping');
        const graceful = worker.close();
        const deadline = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), config.shutdownGraceSec * 1000).unref());
        if ((await Promise.race([graceful.then(() => 'done' as const), deadline])) === 'timeout') {
          hlog.warn({ running: running.byId.size }, 'grace period over: canceling running jobs');
          for (const id of running.byId.keys()) running.cancel(id);
          await graceful;
        }
        clearInterval(cancelPoll);
        clearInterval(reconcileTimer);
        clearInterval(peerTimer);
        reaper.stop();
        artifactSweeper?.stop();
        await recoveryQueue.close();
        await migrationServer.close();
        await migrationDeps.sender?.close();
        await Promise.all(pools.map((p) => p.close()));
        await heartbeat.stop().catch(() => undefined);
        // Whatever is left (VPSs being destroyed in the background) goes now.
        await engine.destroyAll();
        await sub.quit().catch(() => undefined);
        await redis.quit().catch(() => undefined);
        bullConnection.disconnect(); // BullMQ does not close a connection it was given
        objects?.close();
        hlog.info('worker stopped');
      })()),
  };
}

export const defaultHostId = (): string => os.hostname();
