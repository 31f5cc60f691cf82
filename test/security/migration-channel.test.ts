import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../core/config.js';
import { newId } from '../../core/ids.js';
import { createLogger } from '../../core/log.js';
import { HostRegistry, type Host } from '../../core/store/hosts.js';
import { Keys } from '../../core/store/keys.js';
import { resolveTemplate } from '../../runtime/templates/store.js';
import type { WorkerHandle } from '../../worker/main.js';
import { loadCredentials, type MigrationCredentials } from '../../worker/migration/credentials.js';
import { receiveFiles, type FileSpec } from '../../worker/migration/files.js';
import { seal, type Message } from '../../worker/migration/protocol.js';
import { ChannelServer, HANDSHAKE_MS, LINE_DEADLINE_MS, LINE_IDLE_MS, request, type PeerAddress } from '../../worker/migration/transport.js';
import { removeState, startTestWorker, Submitter, testServiceConfig } from '../helpers/cluster.js';
import { runtimeOf, TEMPLATES_DIR, USERNS } from '../helpers/engine.js';
import { canConnect, waitFor } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/**
 * The migration channel, attacked for real: two real workers on one Redis (h1 on the host's
 * primary address, h2 on 127.0.0.1), and attackers on real TCP: with no credentials (plain TCP;
 * TLS with a certificate of their own), and as "spy", a host registered in Redis with a key of
 * its own (what a misbehaving or compromised cluster member has). Heavy traffic comes from a
 * child process (ATTACKER below), so the event loop measured here is the workers' own.
 */
let redis: TestRedis;
let prefix: string;
let registry: HostRegistry;
const cfgs: ServiceConfig[] = [];
let w1: WorkerHandle;
let w2: WorkerHandle;
let submitter: Submitter;
let jobId: string;
let tmp: string;
let spy: MigrationCredentials;
let spyBeat: NodeJS.Timeout | undefined;
/** Genuine requests h1 sent to "spy" (captured in the first test). */
const captured: Message[] = [];

const spyHost = (port: number): Host => ({
  id: 'spy',
  address: '127.0.0.1',
  startedAt: new Date().toISOString(),
  heartbeatAt: new Date().toISOString(),
  draining: false,
  running: 0,
  capacity: 4,
  pools: [],
  templates: [],
  version: 'test',
  migrationPort: port,
  migrationFingerprint: spy.fingerprint,
});

beforeAll(async () => {
  redis = await startRedis();
  prefix = redis.prefix();
  registry = new HostRegistry(redis.client(), prefix);
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-migsec-'));
  spy = await loadCredentials({ stateDir: path.join(tmp, 'spy'), hostId: 'spy', files: {}, log: createLogger('silent') });
  const cfg1 = await testServiceConfig(redis, { redisPrefix: prefix, hostId: 'h1', migrationMode: 'stop-and-copy', shutdownGraceSec: 2 });
  cfgs.push(cfg1);
  w1 = await startTestWorker(cfg1, redis.url);
  // One long job, on h1 (the only worker yet).
  submitter = new Submitter(cfg1, redis.url);
  jobId = await submitter.submit({ script: 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done', limits: { timeoutSec: 600 } });
  await waitFor(async () => (await submitter.jobs.get(jobId))?.job.status === 'running', 'the job to run on h1', 30_000);
  const cfg2 = await testServiceConfig(redis, { redisPrefix: prefix, hostId: 'h2', migrationAddress: '127.0.0.1', migrationMode: 'stop-and-copy', shutdownGraceSec: 2 });
  cfgs.push(cfg2);
  w2 = await startTestWorker(cfg2, redis.url);
}, 120_000);

afterAll(async () => {
  clearInterval(spyBeat);
  if (jobId) await submitter.redis.publish(new Keys(prefix).cancelChannel(), jobId).catch(() => undefined);
  await submitter?.close();
  await w2?.close();
  await w1?.close();
  for (const c of cfgs) await removeState(c);
  await redis?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
}, 120_000);

async function host(id: string): Promise<Host> {
  const h = await registry.get(id);
  if (!h) throw new Error(`host ${id} is not live`);
  return h;
}

/** Runs ATTACKER in a child process with these options; resolves with what it printed. */
function attack<T>(o: object): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', ATTACKER], { env: { ...process.env, ATTACK: JSON.stringify(o) }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(JSON.parse(out) as T);
      else reject(new Error(`attacker exited ${code}: ${out}`));
    });
  });
}

/** The event loop's lag and h2's heartbeat while `during` runs. */
async function watchWorker<T>(during: () => Promise<T>): Promise<{ result: T; lagMaxMs: number; lagP99Ms: number; heartbeatGapMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 10 });
  const beats: number[] = [];
  const poll = setInterval(() => void registry.get('h2').then((x) => x && beats.push(Date.parse(x.heartbeatAt))), 250);
  h.enable();
  try {
    const result = await during();
    const distinct = [...new Set(beats)].sort((a, b) => a - b);
    const gaps = distinct.slice(1).map((b, i) => b - distinct[i]!);
    return { result, lagMaxMs: h.max / 1e6, lagP99Ms: h.percentile(99) / 1e6, heartbeatGapMs: Math.max(0, ...gaps) };
  } finally {
    h.disable();
    clearInterval(poll);
  }
}

interface Closed {
  ms: number;
  got: string;
}

describe('the migration channel', () => {
  it('h1 moves its job to a registered peer ("spy"), which captures the genuine requests and refuses the move; the job keeps running on h1', async () => {
    const server = new ChannelServer({
      credentials: spy,
      hosts: registry,
      log: createLogger('silent'),
      onRequest: async (r) => {
        const m = JSON.parse(r.line) as Message;
        captured.push(m);
        if (m.kind === 'move') {
          const dir = await fs.mkdtemp(path.join(tmp, 'spy-in-'));
          await receiveFiles(r.reader, [{ name: 'images', path: path.join(dir, 'images'), dir: true, maxBytes: 1 << 30 }, { name: 'disk.img', path: path.join(dir, 'disk.img'), maxBytes: 1 << 30 }]);
          r.answer({ ok: false, code: 'unavailable', message: 'the spy keeps nothing' });
        } else r.answer({ ok: true, postCopy: false, runtime: runtimeOf(cfgs[0]!.stateDir).kind, userns: USERNS !== 'off' }); // h1's own: a move is not refused for the runtime or user namespaces
      },
    });
    const port = await server.listen('127.0.0.1', 0);
    await registry.heartbeat(spyHost(port), 30);
    spyBeat = setInterval(() => void registry.heartbeat(spyHost(port), 30), 2000);
    try {
      const reply = newId();
      const keys = new Keys(prefix);
      await submitter.redis.publish(keys.hostCommands('h1'), JSON.stringify({ op: 'migrate', jobId, target: 'spy', mode: 'stop-and-copy', reply }));
      const [, raw] = (await submitter.redis.blpop(keys.reply(reply), 60))!;
      expect(JSON.parse(raw)).toMatchObject({ ok: false, message: expect.stringMatching(/the spy keeps nothing.*keeps running on h1/) });
    } finally {
      await server.close();
    }
    expect(captured.map((m) => [m.kind, m.from, m.to])).toEqual([
      ['prepare', 'h1', 'spy'],
      ['move', 'h1', 'spy'],
    ]);
    expect((await submitter.jobs.get(jobId))!.job).toMatchObject({ status: 'running', host: 'h1' });
  }, 90_000);

  it('a captured genuine request replayed to another host is refused: by the spy (wrong sender), with h1\'s own stolen key (wrong target), with no key (no TLS session)', async () => {
    expect(captured.length).toBe(2);
    const h2 = await host('h2');
    for (const m of captured) {
      await expect(request(spy, h2, m, { timeoutMs: 10_000 })).resolves.toMatchObject({ ok: false, code: 'invalid_argument', message: expect.stringMatching(/comes from h1, but the peer's certificate is spy's/) });
    }
    // Even with h1's key (stolen from its state dir), the requests name their target.
    const dir1 = path.join(cfgs[0]!.stateDir, 'migration');
    const h1Stolen = { key: readFileSync(path.join(dir1, 'key.pem'), 'utf8'), cert: readFileSync(path.join(dir1, 'cert.pem'), 'utf8'), fingerprint: (await host('h1')).migrationFingerprint! };
    for (const m of captured) {
      await expect(request(h1Stolen, h2, m, { timeoutMs: 10_000 })).resolves.toMatchObject({ ok: false, message: expect.stringMatching(/for host spy, not h2/) });
    }
    // The bytes themselves, on plain TCP: the TLS server closes without answering.
    const plain = await attack<Closed[]>({ mode: 'send', host: '127.0.0.1', port: h2.migrationPort, lines: captured.map((m) => JSON.stringify(m)) });
    for (const c of plain) expect(c.got).not.toContain('"ok"');
    expect((await submitter.jobs.get(jobId))!.job).toMatchObject({ status: 'running', host: 'h1' });
  }, 60_000);

  it('a request replayed over an authenticated connection is refused, as is an expired one; the first use went through', async () => {
    const h2 = await host('h2');
    const base = await resolveTemplate(TEMPLATES_DIR, 'base');
    const route = { from: 'spy', to: 'h2' };
    const prepare = seal({ kind: 'prepare', jobId: 'job-x', migrationId: 'mig-x', template: { name: 'base', hash: base.hash } }, route);
    const release = seal({ kind: 'release', jobId: 'job-x', migrationId: 'mig-x', vpsId: 'vps-x' }, route);
    expect(await request(spy, h2, prepare, { timeoutMs: 30_000 })).toMatchObject({ ok: true });
    expect(await request(spy, h2, release, { timeoutMs: 10_000 })).toEqual({ ok: true });
    for (const m of [prepare, release]) {
      expect(await request(spy, h2, m, { timeoutMs: 10_000 })).toMatchObject({ ok: false, code: 'invalid_argument', message: expect.stringMatching(/seen before \(a replay\)/) });
    }
    const old = seal({ kind: 'release', jobId: 'job-x', migrationId: 'mig-x', vpsId: 'vps-x' }, route, Date.now() - 10 * 60_000);
    expect(await request(spy, h2, old, { timeoutMs: 10_000 })).toMatchObject({ ok: false, message: expect.stringMatching(/expired/) });
    // A move: its first use reaches the claim (and fails there: spy holds no job); the replay stops at once.
    const files = await attackerFiles('move-ok', { images: { 'core-1.img': 100 }, disk: 4096 });
    const spec = { template: { name: 'base', hash: base.hash }, hostname: 'x', network: 'none' as const, memoryMb: 16, cpus: 1, pids: 16, diskMb: 16 };
    const move = seal({ kind: 'move', jobId: 'job-y', migrationId: 'mig-y', vpsId: 'vps-y', spec, network: { mode: 'none' }, frozenAt: Date.now(), mode: 'stop-and-copy' }, route);
    expect(await request(spy, h2, move, { files, timeoutMs: 30_000 })).toMatchObject({ ok: false, code: 'conflict', message: expect.stringMatching(/no longer held by spy/) });
    expect(await request(spy, h2, move, { files, timeoutMs: 30_000 })).toMatchObject({ ok: false, message: expect.stringMatching(/seen before/) });
  }, 90_000);

  it('a transfer larger than its cap is aborted and its files removed; a link in the images is refused, nothing extracted', async () => {
    const h2 = await host('h2');
    const base = await resolveTemplate(TEMPLATES_DIR, 'base');
    const spec = { template: { name: 'base', hash: base.hash }, hostname: 'x', network: 'none' as const, memoryMb: 1, cpus: 1, pids: 16, diskMb: 1 };
    const transfers = w2.engine.layout.transfersDir;
    const incoming = async () => (await fs.readdir(transfers).catch(() => [] as string[])).filter((n) => n.includes('in-job-big') || n.includes('in-job-link'));
    // 1 MiB of memory allows 33 MiB of images: 20 + 20 MiB is too much (the first file lands, the second breaks the cap).
    const big = await attackerFiles('big', { images: { 'pages-1.img': 20 << 20, 'pages-2.img': 20 << 20 }, disk: 4096 });
    const move = (jobId: string) => seal({ kind: 'move', jobId, migrationId: newId(), vpsId: 'v', spec, network: { mode: 'none' }, frozenAt: Date.now(), mode: 'stop-and-copy' }, { from: 'spy', to: 'h2' });
    const seen: string[][] = [];
    const watching = setInterval(() => void incoming().then((l) => l.length && seen.push(l)), 20);
    try {
      const a = await request(spy, h2, move('job-big'), { files: big, timeoutMs: 60_000 }).catch((e: Error) => ({ ok: false, code: 'broken', message: e.message }));
      // The target answers limit_exceeded, or (still sending) the connection breaks first.
      expect(a.ok).toBe(false);
      if (a.code !== 'broken') expect(a).toMatchObject({ code: 'limit_exceeded', message: expect.stringMatching(/images exceeds its cap/) });
      const link = await attackerFiles('link', { images: { 'core-1.img': 10 }, disk: 4096, symlink: ['core-2.img', '/etc/shadow'] });
      expect(await request(spy, h2, move('job-link'), { files: link, timeoutMs: 30_000 })).toMatchObject({ ok: false, code: 'invalid_argument', message: expect.stringMatching(/not a plain file/) });
    } finally {
      clearInterval(watching);
    }
    expect(seen.length).toBeGreaterThan(0); // the transfers were under way on h2 ...
    await waitFor(async () => (await incoming()).length === 0, 'the aborted transfers to be removed', 5000); // ... and are gone
  }, 90_000);

  it('peers without credentials are refused quickly, before any parsing: plain TCP (the old secret header), TLS with a self-made certificate, TLS without one', async () => {
    const h2 = await host('h2');
    const oldHeader = JSON.stringify({ secret: 'guess', jobId: 'x', prepare: { template: { name: 'base', hash: 'x' } } });
    const { result } = await watchWorker(() =>
      Promise.all([
        attack<Closed[]>({ mode: 'send', host: '127.0.0.1', port: h2.migrationPort, lines: [oldHeader, 'not json'] }),
        attack<Closed[]>({ mode: 'tls', host: '127.0.0.1', port: h2.migrationPort, lines: [JSON.stringify(seal({ kind: 'release', jobId: 'j', migrationId: 'm', vpsId: 'v' }, { from: 'h1', to: 'h2' }))], selfMade: path.join(tmp, 'mallory') }),
        attack<Closed[]>({ mode: 'tls', host: '127.0.0.1', port: h2.migrationPort, lines: ['{}'] }),
      ]),
    );
    for (const c of result.flat()) {
      expect(c.got).toBe(''); // no answer, not even an error message: nothing was parsed
      expect(c.ms).toBeLessThan(2000);
    }
  }, 60_000);

  it('a 10 MB header, slowloris trickles and idle connections do not stall the worker, and every one is closed within its timeout', async () => {
    const h2 = await host('h2');
    const spyDir = path.join(tmp, 'spy', 'migration');
    const auth = { key: path.join(spyDir, 'key.pem'), cert: path.join(spyDir, 'cert.pem') };
    const at = { host: '127.0.0.1', port: h2.migrationPort };
    const w = await watchWorker(() =>
      Promise.all([
        attack<Closed[]>({ ...at, mode: 'big', bytes: 10 << 20, count: 4 }),
        attack<Closed[]>({ ...at, mode: 'big', bytes: 10 << 20, count: 2, auth }),
        attack<Closed[]>({ ...at, mode: 'trickle', everyMs: 1000, count: 3 }),
        attack<Closed[]>({ ...at, mode: 'trickle', everyMs: 1000, count: 3, auth }),
        attack<Closed[]>({ ...at, mode: 'idle', count: 3, auth }),
        attack<Closed[]>({ ...at, mode: 'idle', count: 3 }),
      ]),
    );
    const [bigUnauth, bigAuth, trickleUnauth, trickleAuth, idleAuth, idleUnauth] = w.result;
    for (const c of bigUnauth!) expect(c.ms).toBeLessThan(3000); // not TLS: refused at the first record
    for (const c of bigAuth!) expect(c.ms).toBeLessThan(3000); // cut at 64 KiB
    for (const c of [...trickleUnauth!, ...idleUnauth!]) expect(c.ms).toBeLessThan(HANDSHAKE_MS + 2000);
    for (const c of trickleAuth!) expect(c.ms).toBeLessThan(LINE_DEADLINE_MS + 2000);
    for (const c of idleAuth!) expect(c.ms).toBeLessThan(LINE_IDLE_MS + 2000);
    for (const c of w.result.flat()) expect(c.got).not.toContain('"ok"');
    expect(w.lagP99Ms).toBeLessThan(100);
    expect(w.lagMaxMs).toBeLessThan(500);
    expect(w.heartbeatGapMs).toBeLessThan(5000);
  }, 90_000);

  it('thousands of connections from one address are turned away at once; a real peer from another address still gets through meanwhile', async () => {
    const h2 = await host('h2');
    const flood = { mode: 'flood', host: '127.0.0.1', port: h2.migrationPort, count: 3000, local: '127.0.0.2' };
    const w = await watchWorker(async () => {
      const attacking = attack<{ tried: number; connected: number; maxMs: number; open: number }>(flood);
      await new Promise((r) => setTimeout(r, 1500));
      const during = await request(spy, h2, seal({ kind: 'release', jobId: 'j', migrationId: 'm', vpsId: 'v' }, { from: 'spy', to: 'h2' }), { timeoutMs: 10_000 });
      return { flood: await attacking, during };
    });
    expect(w.result.during).toEqual({ ok: true });
    expect(w.result.flood.connected).toBeGreaterThan(1000);
    expect(w.result.flood.open).toBe(0);
    expect(w.result.flood.maxMs).toBeLessThan(HANDSHAKE_MS + 3000);
    expect(w.lagP99Ms).toBeLessThan(100);
    expect(w.heartbeatGapMs).toBeLessThan(5000);
  }, 90_000);

  it('with a PKI (RUNBOX_MIGRATION_CA): a certificate of another CA is refused in the handshake, one of the CA that names another host is refused, the CA-signed host gets through', async () => {
    const pki = path.join(tmp, 'pki');
    await fs.mkdir(pki, { recursive: true });
    const ossl = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
    const ca = (name: string) => ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${pki}/${name}.key`, '-out', `${pki}/${name}.crt`, '-days', '2', '-subj', `/CN=${name}`]);
    const leaf = (name: string, cn: string, by: string) => {
      ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${pki}/${name}.key`, '-out', `${pki}/${name}.csr`, '-subj', `/CN=${cn}`]);
      ossl(['x509', '-req', '-in', `${pki}/${name}.csr`, '-CA', `${pki}/${by}.crt`, '-CAkey', `${pki}/${by}.key`, '-CAcreateserial', '-out', `${pki}/${name}.crt`, '-days', '2']);
    };
    ca('ca');
    ca('evil-ca');
    leaf('p1', 'p1', 'ca');
    leaf('p2', 'p2', 'ca');
    leaf('liar', 'p9', 'ca'); // signed by the CA, but for another name than the host that publishes it
    leaf('forged', 'p2', 'evil-ca');
    const log = createLogger('silent');
    const creds = (name: string, cn = name) => loadCredentials({ stateDir: tmp, hostId: cn, files: { ca: `${pki}/ca.crt`, cert: `${pki}/${name}.crt`, key: `${pki}/${name}.key` }, log });
    const p1 = await creds('p1');
    const p2 = await creds('p2');
    await expect(creds('forged', 'p2')).rejects.toThrow(/not signed by RUNBOX_MIGRATION_CA/);
    const forged = { ...p2, key: await fs.readFile(`${pki}/forged.key`, 'utf8'), cert: await fs.readFile(`${pki}/forged.crt`, 'utf8') };
    const { X509Certificate } = await import('node:crypto');
    forged.fingerprint = new X509Certificate(forged.cert).fingerprint256;
    const liar = { ...p2, key: await fs.readFile(`${pki}/liar.key`, 'utf8'), cert: await fs.readFile(`${pki}/liar.crt`, 'utf8') };
    liar.fingerprint = new X509Certificate(liar.cert).fingerprint256;
    const got: string[] = [];
    // p1 serves; the live hosts publish p2's real certificate, the forged one and the liar's (as host p3).
    const live = [spyHost(0), { ...spyHost(0), id: 'p2', migrationFingerprint: p2.fingerprint }, { ...spyHost(0), id: 'p2b', migrationFingerprint: forged.fingerprint }, { ...spyHost(0), id: 'p3', migrationFingerprint: liar.fingerprint }];
    const server = new ChannelServer({ credentials: p1, hosts: { list: async () => live }, log, onRequest: async (r) => (got.push(r.peer.id), r.answer({ ok: true })) });
    const port = await server.listen('127.0.0.1', 0);
    try {
      const to = { id: 'p1', address: '127.0.0.1', migrationPort: port, migrationFingerprint: p1.fingerprint };
      expect(await request(p2, to, { hi: 1 }, { timeoutMs: 5000 })).toEqual({ ok: true });
      await expect(request(forged, to, { hi: 1 }, { timeoutMs: 5000 })).rejects.toThrow();
      await expect(request(liar, to, { hi: 1 }, { timeoutMs: 5000 })).rejects.toThrow(/without an answer/);
      expect(got).toEqual(['p2']);
      // And the client side: a server whose certificate is not the CA's, or names another host, is not talked to.
      await expect(request(p2, { ...to, id: 'p9' }, { hi: 1 }, { timeoutMs: 5000 })).rejects.toThrow(/does not name host p9|p9/);
    } finally {
      await server.close();
    }
  });

  it('the receiver listens on the host\'s advertised address only, never on every address', async () => {
    for (const [id, w] of [['h1', w1], ['h2', w2]] as const) {
      const h = await host(id);
      const bound = listeners(h.migrationPort!);
      expect(bound, id).toEqual([h.address]);
      expect(w.hostId).toBe(id);
    }
    expect((await host('h2')).address).toBe('127.0.0.1');
    expect(await canConnect('127.0.0.1', (await host('h2')).migrationPort!)).toBe(true);
    expect(await canConnect('127.0.0.2', (await host('h2')).migrationPort!)).toBe(false); // would connect on 0.0.0.0
  });
});

/** Local addresses listening on `port` (from /proc/net/tcp and tcp6). */
function listeners(port: number): string[] {
  const out: string[] = [];
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const [, local, , st] = line.trim().split(/\s+/);
      if (!local || st !== '0A') continue;
      const [addr, p] = local.split(':');
      if (parseInt(p!, 16) !== port) continue;
      out.push(addr!.length === 8 ? addr!.match(/../g)!.reverse().map((b) => parseInt(b, 16)).join('.') : `[${addr}]`);
    }
  }
  return out;
}

/** A dir of files an attacker sends as a move (images/* and disk.img), returned as the file list. */
async function attackerFiles(name: string, o: { images: Record<string, number>; disk: number; symlink?: [string, string] }): Promise<FileSpec[]> {
  const dir = path.join(tmp, `files-${name}`);
  await fs.mkdir(path.join(dir, 'images'), { recursive: true });
  for (const [f, n] of Object.entries(o.images)) await fs.writeFile(path.join(dir, 'images', f), Buffer.alloc(n, 7));
  if (o.symlink) await fs.symlink(o.symlink[1], path.join(dir, 'images', o.symlink[0])).catch(() => undefined);
  await fs.writeFile(path.join(dir, 'disk.img'), Buffer.alloc(o.disk, 1));
  return [
    { name: 'images', path: path.join(dir, 'images'), dir: true, maxBytes: 0 },
    { name: 'disk.img', path: path.join(dir, 'disk.img'), maxBytes: 0 },
  ];
}

/**
 * The attacker, a separate Node process (its CPU is not the worker's). Modes, each over `count`
 * connections (default 1), each reporting when it was closed and what it got back:
 *   send     plain TCP, writes `lines`
 *   tls      TLS with a self-made certificate (`selfMade`: dir for it) or none, writes `lines`
 *   big      `bytes` without a newline (TLS with `auth` key/cert files, else plain TCP)
 *   trickle  one byte every `everyMs` until closed
 *   idle     connects (and completes TLS with `auth`) and sends nothing
 *   flood    `count` plain connections at once from `local`, idle; reports how many connected and stayed open
 */
const ATTACKER = String.raw`
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
const o = JSON.parse(process.env.ATTACK);
const connect = (auth) => auth
  ? tls.connect({ host: o.host, port: o.port, key: fs.readFileSync(auth.key), cert: fs.readFileSync(auth.cert), rejectUnauthorized: false })
  : net.connect({ host: o.host, port: o.port, localAddress: o.local });
const ready = (s) => new Promise((r) => s.once(s instanceof tls.TLSSocket ? 'secureConnect' : 'connect', r));
function closed(s, t0) {
  return new Promise((resolve) => {
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1').slice(0, 2000); });
    s.on('error', () => {});
    s.on('close', () => resolve({ ms: Date.now() - t0, got }));
  });
}
async function one(fn) {
  const t0 = Date.now();
  const s = await fn();
  return closed(s, t0);
}
const n = o.count ?? 1;
const each = (fn) => Promise.all(Array.from({ length: n }, () => one(fn)));
let out;
if (o.mode === 'send') {
  out = await Promise.all(o.lines.map((line) => one(async () => { const s = connect(); s.on('error', () => {}); await ready(s); s.write(line + '\n'); return s; })));
} else if (o.mode === 'tls') {
  let creds = {};
  if (o.selfMade) {
    fs.mkdirSync(o.selfMade, { recursive: true });
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', o.selfMade + '/k.pem', '-out', o.selfMade + '/c.pem', '-days', '2', '-subj', '/CN=h1'], { stdio: 'ignore' });
    creds = { key: fs.readFileSync(o.selfMade + '/k.pem'), cert: fs.readFileSync(o.selfMade + '/c.pem') };
  }
  out = await Promise.all(o.lines.map((line) => one(async () => {
    const s = tls.connect({ host: o.host, port: o.port, ...creds, rejectUnauthorized: false });
    s.on('error', () => {});
    s.once('secureConnect', () => s.write(line + '\n'));
    return s;
  })));
} else if (o.mode === 'big') {
  out = await each(async () => {
    const s = connect(o.auth);
    s.on('error', () => {});
    await ready(s);
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    let wake = () => {};
    s.on('drain', () => wake());
    s.on('close', () => wake());
    (async () => { for (let sent = 0; sent < o.bytes && !s.destroyed; sent += chunk.length) if (!s.write(chunk)) await new Promise((r) => { wake = r; }); })();
    return s;
  });
} else if (o.mode === 'trickle') {
  out = await each(async () => {
    const s = connect(o.auth);
    s.on('error', () => {});
    if (o.auth) await ready(s);
    const timer = setInterval(() => { if (!s.destroyed) s.write('{'); }, o.everyMs);
    s.on('close', () => clearInterval(timer));
    return s;
  });
} else if (o.mode === 'idle') {
  out = await each(async () => { const s = connect(o.auth); s.on('error', () => {}); return s; });
} else if (o.mode === 'flood') {
  const t0 = Date.now();
  const socks = [];
  const connected = new Set();
  let maxMs = 0;
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: o.host, port: o.port, localAddress: o.local });
    s.on('error', () => {});
    s.on('connect', () => connected.add(s));
    s.on('close', () => { if (connected.has(s)) maxMs = Math.max(maxMs, Date.now() - t0); });
    socks.push(s);
  }
  // Connections the kernel did not even accept (its listen backlog was full) retry their SYN for
  // minutes: they are no load on the worker. Every one that did connect must be closed.
  const open = () => [...connected].filter((s) => !s.destroyed).length;
  for (const end = Date.now() + 20000; Date.now() < end && (connected.size === 0 || open() > 0); ) await new Promise((r) => setTimeout(r, 100));
  out = { tried: n, connected: connected.size, open: open(), maxMs };
  for (const s of socks) s.destroy();
}
process.stdout.write(JSON.stringify(out));
process.exit(0);
`;
