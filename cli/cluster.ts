import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_ROOT, type ServiceConfig } from '../core/config.js';
import { locationEnv } from '../core/objects/location.js';
import { RunboxError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { connectRedis } from '../core/redis.js';
import { HostRegistry } from '../core/store/hosts.js';
import { ensurePrivateDirs, ensurePrivateFile } from '../runtime/host/private-dirs.js';
import { isAlive, selfRef, type ProcessRef } from '../runtime/host/proc.js';
import { Layout } from '../runtime/layout.js';
import { gateway, parseCidr } from '../runtime/net/addr.js';
import { createClusterNet, removeClusterNet, type ClusterHostNet } from '../runtime/net/cluster-net.js';
import { apiDeps, describeChoice, embeddedObjectStore, loadConfig, untilSignal } from './services.js';

/**
 * `runbox cluster up --hosts N`: for development, tests and demos, N worker hosts on this machine,
 * each in its own network namespace with its own address on a cluster bridge, its own state dir
 * and pools, sharing one Redis (a unix socket, reachable from every namespace through the file
 * system) and one API. `runbox cluster down` stops a running cluster and removes what it made.
 */
const USAGE = 'usage: runbox cluster up [--hosts N] [--cidr CIDR] | runbox cluster down';

interface ClusterFile {
  supervisor: ProcessRef;
  hosts: number;
  instance: string;
}

export async function clusterCommand(args: string[]): Promise<number> {
  const [verb, ...rest] = args;
  if (verb === 'up') return clusterUp(rest);
  if (verb === 'down') return clusterDown(rest);
  throw new RunboxError('invalid_argument', USAGE);
}

function clusterDir(stateDir: string): string {
  return path.join(stateDir, 'cluster');
}

async function clusterUp(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args, options: { hosts: { type: 'string' }, cidr: { type: 'string' } }, strict: true }));
  } catch (e) {
    throw new RunboxError('invalid_argument', `${(e as Error).message}\n${USAGE}`);
  }
  const hosts = Number(values.hosts ?? 2);
  if (!Number.isInteger(hosts) || hosts < 1 || hosts > 16) throw new RunboxError('invalid_argument', '--hosts: a whole number from 1 to 16');
  const config = loadConfig();
  const dir = clusterDir(config.stateDir);
  const layout = new Layout(dir);
  const log = createLogger(config.logLevel);
  const pidFile = path.join(dir, 'cluster.json');
  const existing = await readClusterFile(pidFile);
  if (existing && isAlive(existing.supervisor)) throw new RunboxError('conflict', `a cluster is already running here (pid ${existing.supervisor.pid}); runbox cluster down first`);

  // Private before anything is made in them: hosts' state dirs, checkpoints, Redis, tokens are all below `dir`.
  await ensurePrivateDirs([config.stateDir, dir, config.templatesDir], { log });
  const { startEmbeddedRedis } = await import('./embedded-redis.js');
  const { ensureTokenFile } = await import('../api/auth.js');
  const { startApi } = await import('../api/server.js');
  const redis = await startEmbeddedRedis(dir, { log, maxmemoryBytes: config.redisMaxmemoryBytes });
  const tokenFile = path.join(dir, 'api-tokens');
  await ensurePrivateFile(tokenFile, { log });
  const token = config.apiTokens ? undefined : await ensureTokenFile(tokenFile, { log });
  const cidr = values.cidr ?? '10.99.0.0/24';
  const nets = await createClusterNet(layout.instance, cidr, hosts);
  await fs.writeFile(pidFile, JSON.stringify({ supervisor: selfRef(), hosts, instance: layout.instance } satisfies ClusterFile));
  // Hosts share no checkpoint directory: without RUNBOX_OBJECT_STORE, an embedded S3 server on
  // the cluster bridge's address (the hosts' gateway) holds checkpoints, as a store between machines would.
  const wanted: ServiceConfig = process.env.RUNBOX_OBJECT_STORE ? config : { ...config, objectStore: { kind: 'embedded' } };
  const store = await embeddedObjectStore(wanted, log, { address: gateway(parseCidr(cidr)), stateDir: dir });

  const workers = nets.map((n) => startHostWorker(n, dir, redis.url, store.config.objectStore));
  const stop = new AbortController();
  const { deps, close } = await apiDeps({ ...store.config, tokenFile }, redis.url, log, stop.signal);
  const api = await startApi(deps, { host: config.apiHost, port: config.apiPort });
  const registry = new HostRegistry(connectRedis(redis.url), config.redisPrefix);
  const deadline = Date.now() + 60_000;
  while ((await registry.list()).length < hosts && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  registry.redis.disconnect();

  process.stdout.write(
    [
      `runbox cluster is up: ${hosts} hosts`,
      ...nets.map((n) => `  h${n.index}: ${n.address}   (netns ${n.netns})`),
      `  API:   ${api.url}`,
      token ? `  token: ${token.token}   (tenant "${token.tenant}", ${token.role}, stored in ${tokenFile})` : '  tokens: from RUNBOX_API_TOKENS',
      `  redis: ${redis.url}`,
      `  store: ${describeChoice(store.config.objectStore, path.join(dir, 'checkpoints'))}`,
      `Ctrl-C (or runbox cluster down) stops everything.`,
      '',
    ].join('\n'),
  );
  const stopWorkers = async () => {
    await Promise.all(workers.map((w) => terminate(w, config.shutdownGraceSec * 1000 + 5000)));
  };
  return untilSignal(log, [
    async () => stop.abort(),
    () => api.close(),
    close,
    stopWorkers,
    () => store.stop(),
    () => redis.stop(),
    // A host that died (or was killed) left its VPSs behind: remove them too.
    () => cleanHosts(dir, hosts),
    () => removeClusterNet(layout.instance, hosts),
    () => fs.rm(pidFile, { force: true }),
  ]);
}

/** One worker host: `runbox worker` inside the host's network namespace (nsenter: net only). */
function startHostWorker(n: ClusterHostNet, dir: string, redisUrl: string, objectStore: ServiceConfig['objectStore']): ChildProcess {
  // Per-host settings of the caller's environment are not the cluster's: each host binds its own
  // address and makes its own migration key and certificate (one shared key would be no identity).
  const inherited = { ...process.env };
  for (const k of ['RUNBOX_MIGRATION_ADDRESS', 'RUNBOX_MIGRATION_CA', 'RUNBOX_MIGRATION_CERT', 'RUNBOX_MIGRATION_KEY', 'RUNBOX_HOST_ID']) delete inherited[k];
  const env: NodeJS.ProcessEnv = {
    ...inherited,
    RUNBOX_STATE_DIR: path.join(dir, 'hosts', `h${n.index}`),
    RUNBOX_TEMPLATES_DIR: process.env.RUNBOX_TEMPLATES_DIR ?? loadConfig().templatesDir,
    RUNBOX_HOST_ID: `h${n.index}`,
    RUNBOX_REDIS_URL: redisUrl,
    // The object store (each host stages in its own state dir), or with RUNBOX_OBJECT_STORE=dir
    // one checkpoint directory for all hosts, as a shared mount would be between machines.
    ...(objectStore.kind === 's3' ? { ...locationEnv(objectStore.location), RUNBOX_CHECKPOINT_DIR: path.join(dir, 'hosts', `h${n.index}`, 'checkpoints') } : { RUNBOX_OBJECT_STORE: 'dir', RUNBOX_CHECKPOINT_DIR: path.join(dir, 'checkpoints') }),
  };
  return spawn('nsenter', [`--net=/run/netns/${n.netns}`, process.execPath, path.join(REPO_ROOT, 'dist/cli/main.js'), 'worker'], {
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

function terminate(p: ChildProcess, ms: number): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    const t = setTimeout(() => p.kill('SIGKILL'), ms);
    p.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    p.kill('SIGTERM');
  });
}

async function clusterDown(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', USAGE);
  const config = loadConfig();
  const dir = clusterDir(config.stateDir);
  const file = await readClusterFile(path.join(dir, 'cluster.json'));
  if (!file) {
    process.stdout.write('no cluster here\n');
    return 0;
  }
  if (isAlive(file.supervisor)) {
    process.kill(file.supervisor.pid, 'SIGTERM');
    const deadline = Date.now() + (config.shutdownGraceSec + 15) * 1000;
    while (isAlive(file.supervisor) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (isAlive(file.supervisor)) process.kill(file.supervisor.pid, 'SIGKILL');
  }
  // Whatever a crashed cluster left: VPSs of every host, the namespaces, the bridge.
  await cleanHosts(dir, file.hosts);
  await removeClusterNet(file.instance, file.hosts);
  await fs.rm(path.join(dir, 'cluster.json'), { force: true });
  process.stdout.write(`cluster of ${file.hosts} hosts stopped\n`);
  return 0;
}

/** gc --all of every host's state dir (VPSs, mounts, cgroups, netns of hosts that died). */
async function cleanHosts(dir: string, hosts: number): Promise<void> {
  const config = loadConfig();
  const { gc } = await import('../runtime/gc.js');
  const { RuncEngine } = await import('../runtime/runc-engine.js');
  for (let i = 1; i <= hosts; i++) {
    const engine = new RuncEngine({
      stateDir: path.join(dir, 'hosts', `h${i}`),
      runcPath: config.runcPath,
      crunPath: config.crunPath,
      runtime: config.runtime,
      userns: config.userns,
      agentPath: config.agentPath,
      netCidr: config.netCidr,
      log: createLogger('warn'),
    });
    await gc(engine, { all: true }).catch(() => undefined);
  }
}

async function readClusterFile(file: string): Promise<ClusterFile | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as ClusterFile;
  } catch {
    return undefined;
  }
}
