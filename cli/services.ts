import os from 'node:os';
import { serviceConfigFromEnv, type ServiceConfig } from '../core/config.js';
import { describeLocation } from '../core/objects/location.js';
import { RunboxError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/log.js';
import { ensurePrivateDirs, ensurePrivateFile } from '../runtime/host/private-dirs.js';
import { startWorker, type WorkerHandle } from '../worker/main.js';

/**
 * Long-running parts: `runbox worker`, `runbox api`, `runbox up`. Each is a composition root:
 * it parses the environment once, starts its parts in dependency order and, on SIGTERM/SIGINT,
 * stops them in reverse order before exiting.
 */
export function loadConfig(): ServiceConfig {
  return serviceConfigFromEnv(process.env, os.hostname());
}

export async function workerCommand(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', 'usage: runbox worker (configured by environment, see README)');
  const config = loadConfig();
  if (!config.redisUrl) throw new RunboxError('invalid_argument', 'runbox worker needs RUNBOX_REDIS_URL (the Redis shared with the API and other workers)');
  const log = createLogger(config.logLevel);
  const worker = await startWorker({ config, redisUrl: config.redisUrl, log, warmBeforeStart: false });
  return untilSignal(log, [() => worker.close()]);
}

/** Waits for SIGTERM/SIGINT, then runs the closers in order. A second signal exits at once. */
export function untilSignal(log: Logger, closers: Array<() => Promise<void>>): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (sig: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal: sig }, 'second signal: exiting now');
        process.exit(130);
      }
      stopping = true;
      log.info({ signal: sig }, 'shutting down');
      void (async () => {
        for (const c of closers) await c().catch((e: unknown) => log.error({ err: e }, 'error while shutting down'));
        resolve(0);
      })();
    };
    process.on('SIGTERM', stop).on('SIGINT', stop);
  });
}

export type { WorkerHandle };

/** Builds the API's dependencies on one Redis URL; returns them with a closer. */
export async function apiDeps(config: ServiceConfig, redisUrl: string, log: Logger, shutdown: AbortSignal) {
  const { connectRedis, connectSubscriber } = await import('../core/redis.js');
  const { JobStore } = await import('../core/store/jobs.js');
  const { LogStore } = await import('../core/store/logs.js');
  const { ArtifactStore } = await import('../core/store/artifacts.js');
  const { HostRegistry } = await import('../core/store/hosts.js');
  const { JobEvents } = await import('../core/store/events.js');
  const { JobQueue } = await import('../core/queue.js');
  const { TokenAuth } = await import('../api/auth.js');
  const { recipeNames } = await import('../runtime/templates/recipes.js');
  const redis = connectRedis(redisUrl);
  // Artifacts are read where the workers put them: the object store when one is configured.
  const objects = config.objectStore.kind === 's3' ? new (await import('../core/objects/s3.js')).S3ObjectStore(config.objectStore.location) : undefined;
  const { ObjectArtifactStore } = await import('../core/objects/artifacts.js');
  const events = new JobEvents(connectSubscriber(redisUrl), config.redisPrefix);
  const queue = new JobQueue(redis, config.redisPrefix);
  const hosts = new HostRegistry(redis, config.redisPrefix);
  const tokens = await TokenAuth.load({ apiTokens: config.apiTokens, tokenFile: config.tokenFile, metricsToken: config.metricsToken });
  if (tokens.size === 0) {
    throw new RunboxError('invalid_argument', `no API tokens: set RUNBOX_API_TOKENS (tenant=token,...) or write ${config.tokenFile}`);
  }
  if (tokens.admins === 0) {
    log.warn(
      { tokenFile: config.tokenFile },
      'no token has the admin role: nobody can drain or resume hosts, pick migration targets or see host addresses; give the operator one (tenant:admin=token in RUNBOX_API_TOKENS or the token file)',
    );
  }
  const deps = {
    config,
    jobs: new JobStore(redis, config.redisPrefix),
    logs: new LogStore(redis, config.redisPrefix),
    artifacts: objects ? new ObjectArtifactStore(objects) : new ArtifactStore(redis, config.redisPrefix),
    hosts,
    events,
    queue,
    tokens,
    redis,
    log,
    shutdown,
    knownTemplates: cached(2000, async () => {
      const built = (await hosts.list()).flatMap((h) => h.templates.map((t) => t.name));
      return [...new Set([...built, ...(await recipeNames())])].sort();
    }),
  };
  const close = async () => {
    await queue.close();
    await events.close();
    await redis.quit().catch(() => undefined);
    objects?.close();
  };
  return { deps, close };
}

/** Memoizes an async value for `ms` (job creation asks for the template list every time). */
function cached<T>(ms: number, fn: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  let at = 0;
  return () => {
    if (!value || Date.now() - at > ms) {
      at = Date.now();
      value = fn().catch((e: unknown) => {
        value = undefined;
        throw e;
      });
    }
    return value;
  };
}

export async function apiCommand(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', 'usage: runbox api (configured by environment, see README)');
  const config = loadConfig();
  if (!config.redisUrl) throw new RunboxError('invalid_argument', 'runbox api needs RUNBOX_REDIS_URL (the Redis shared with the workers)');
  const log = createLogger(config.logLevel);
  // The API may run where the state dir does not exist: tighten only what is there.
  await ensurePrivateDirs([config.stateDir], { log, create: false });
  await ensurePrivateFile(config.tokenFile, { log });
  const { startApi } = await import('../api/server.js');
  const stop = new AbortController();
  const { deps, close } = await apiDeps(config, config.redisUrl, log, stop.signal);
  const api = await startApi(deps, { host: config.apiHost, port: config.apiPort });
  log.info({ url: api.url }, 'API listening');
  return untilSignal(log, [async () => stop.abort(), () => api.close(), close]);
}

/**
 * Builds the templates RUNBOX_PREBUILD_TEMPLATES names (default: base, which takes seconds; a
 * Debian-based one takes a minute or more the first time and nothing after). Already built
 * versions cost a hash of their recipe. Templates not built here are built on demand by the worker.
 */
async function prebuildTemplates(config: ServiceConfig, log: Logger): Promise<void> {
  if (config.prebuildTemplates.length === 0) return;
  const { buildTemplate } = await import('../runtime/templates/builder.js');
  const { formatProgress } = await import('../runtime/templates/progress.js');
  for (const name of config.prebuildTemplates) {
    const info = await buildTemplate(name, {
      recipesDir: config.recipesDir,
      templatesDir: config.templatesDir,
      stateDirs: [config.stateDir],
      log,
      onProgress: (p) => p.step !== 'done' && process.stdout.write(`${formatProgress(p)}\n`),
    });
    if (info.fresh) process.stdout.write(`template ${name} ${info.hash} built\n`);
  }
}

/**
 * `runbox up` (= `npm start`): Redis (embedded unless RUNBOX_REDIS_URL), one worker, the API.
 * Prints the URL and a token; Ctrl-C stops everything, leaving no VPS behind.
 */
export async function upCommand(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', 'usage: runbox up (configured by environment, see README)');
  const config = loadConfig();
  const log = createLogger(config.logLevel);
  const { startEmbeddedRedis } = await import('./embedded-redis.js');
  const { ensureTokenFile } = await import('../api/auth.js');
  const { startApi } = await import('../api/server.js');
  // Private before anything is made in them (runtime/host/private-dirs.ts).
  await ensurePrivateDirs([config.stateDir, config.templatesDir, config.checkpointDir], { log });
  await ensurePrivateFile(config.tokenFile, { log });
  await prebuildTemplates(config, log); // RUNBOX_PREBUILD_TEMPLATES, before anything starts (the worker's pools need them)
  const redis = config.redisUrl ? { url: config.redisUrl, stop: async () => undefined } : await startEmbeddedRedis(config.stateDir, { log, maxmemoryBytes: config.redisMaxmemoryBytes });
  const token = config.apiTokens ? undefined : await ensureTokenFile(config.tokenFile, { log });
  const store = await embeddedObjectStore(config, log);
  const worker = await startWorker({ config: store.config, redisUrl: redis.url, log, warmBeforeStart: false });
  const stop = new AbortController();
  const { deps, close } = await apiDeps(store.config, redis.url, log, stop.signal);
  const api = await startApi(deps, { host: config.apiHost, port: config.apiPort });
  process.stdout.write(
    [
      `runbox is up.`,
      `  API:    ${api.url}   (docs: ${api.url}/docs)`,
      token ? `  token:  ${token.token}   (tenant "${token.tenant}", ${token.role}, stored in ${config.tokenFile})` : '  tokens: from RUNBOX_API_TOKENS',
      `  redis:  ${redis.url}`,
      `  store:  ${describeChoice(store.config.objectStore, config.checkpointDir)}`,
      `  try:    curl -s -H "Authorization: Bearer <token>" -d '{"command":["echo","hello"]}' '${api.url}/v1/jobs?wait=30'`,
      `          ./bin/runbox submit --wait 30 -- echo hello`,
      `Ctrl-C stops everything.`,
      '',
    ].join('\n'),
  );
  return untilSignal(log, [async () => stop.abort(), () => api.close(), close, () => worker.close(), () => store.stop(), () => redis.stop()]);
}

/**
 * RUNBOX_OBJECT_STORE=embedded: starts the embedded S3 server (loopback, or `address`) and
 * returns the configuration with its location; any other choice is returned as it is.
 */
export async function embeddedObjectStore(config: ServiceConfig, log: Logger, o: { address?: string; stateDir?: string } = {}): Promise<{ config: ServiceConfig; stop(): Promise<void> }> {
  if (config.objectStore.kind !== 'embedded') return { config, stop: async () => undefined };
  const { startEmbeddedS3 } = await import('./embedded-s3.js');
  const s3 = await startEmbeddedS3(o.stateDir ?? config.stateDir, { address: o.address, log });
  return { config: { ...config, objectStore: { kind: 's3', location: s3.location } }, stop: () => s3.stop() };
}

/** The checkpoint store as `runbox up` and doctor print it. */
export function describeChoice(choice: ServiceConfig['objectStore'], checkpointDir: string): string {
  if (choice.kind === 's3') return describeLocation(choice.location);
  if (choice.kind === 'embedded') return 'embedded S3 server (started by runbox up / cluster up)';
  return `directory ${checkpointDir} (RUNBOX_OBJECT_STORE=dir)`;
}
