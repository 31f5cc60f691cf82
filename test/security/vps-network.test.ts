import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpoint, restore } from '../../runtime/checkpoint/checkpoint.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { listenInNetns, stopChild, waitFor } from '../helpers/net.js';
import { installHostNft } from '../helpers/vps-tools.js';

/**
 * Root in a VPS attacks the network boundary (issue 11, item 3) with a real program
 * (test/security/vps-net-attack.c, compiled here and written into the VPS): forged source
 * addresses, ARP and bridge-table poisoning, a stolen address, the cloud metadata address,
 * private services, other runbox hosts, network administration and tun.
 *
 * "The outside" is a network namespace of this test, reached from the host through a veth:
 * 198.19.K.2 stands for the internet (benchmarking range, not denied), 198.19.K.77 for another
 * runbox host, and 169.254.169.254, 10.123.45.6 (a private service), 172.31.99.9 (a private
 * address an operator allows) and 10.123.45.53 (a private nameserver) live there too. Traffic from
 * the test engines' bridges (and only from them: `ip rule iif`) is routed to it.
 */

const run = promisify(execFile);
const K = process.pid % 250;
const NET = `198.19.${K}`;
const OUT = `${NET}.2`;
const PEER = `${NET}.77`;
const METADATA = '169.254.169.254';
const PRIVATE = '10.123.45.6';
const ALLOWED = '172.31.99.9';
const DNS = '10.123.45.53';
const TCP = 8000;

let t: TestEngine; // defaults: no allow list, no tun
let tAllow: TestEngine; // RUNBOX_EGRESS_ALLOW=172.31.99.9,<peer>/32
let tTun: TestEngine; // RUNBOX_VPS_TUN=1
let tmp: string;
let attackBin: string;
let attack: Buffer;
let outside: Outside;
const listeners: ChildProcess[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-vpsnet-'));
  attackBin = path.join(tmp, 'vps-net-attack');
  await run('gcc', ['-static', '-O1', '-o', attackBin, path.join(import.meta.dirname, 'vps-net-attack.c')], { timeout: 120_000 });
  attack = await fs.readFile(attackBin);
  const nameservers = [DNS]; // never the host's real resolver
  t = await testEngine('vpsnet', { nameservers });
  tAllow = await testEngine('vpsnet-allow', { nameservers, egressAllow: [ALLOWED, `${PEER}/32`] });
  tTun = await testEngine('vpsnet-tun', { nameservers, vpsTun: true });
  outside = makeOutside([t, tAllow, tTun].map((e) => e.engine.net.bridge));
  for (const port of [TCP, 53]) listeners.push(listenInNetns(outside.ns, port, port === 53 ? 'dns' : 'from-outside'));
  await waitFor(async () => (await probeFromNetns(outside.ns, OUT, TCP)) === 'open', 'the outside listener', 10_000);
});

afterAll(async () => {
  for (const l of listeners) await stopChild(l);
  outside?.remove();
  for (const e of [t, tAllow, tTun]) await e?.cleanup();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

interface Outside {
  ns: string;
  remove: () => void;
}

/** The test's outside namespace, and routes to its special addresses for traffic from `bridges` only. */
function makeOutside(bridges: string[]): Outside {
  const id = process.pid % 100000;
  const ns = `rbtest-vn${id}`;
  const hostIf = `rbtvn${id}`;
  const table = String(20000 + (process.pid % 10000));
  const prio = String(100 + (process.pid % 1000));
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const quiet = (...args: string[]) => {
    try {
      ip(...args);
    } catch {
      /* already gone */
    }
  };
  const remove = () => {
    for (const br of bridges) quiet('rule', 'del', 'iif', br, 'table', table, 'priority', prio);
    quiet('route', 'flush', 'table', table);
    quiet('link', 'del', hostIf);
    quiet('netns', 'del', ns);
  };
  try {
    ip('netns', 'add', ns);
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('addr', 'add', `${NET}.1/24`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('-n', ns, 'addr', 'add', `${OUT}/24`, 'dev', 'eth0');
    for (const a of [PEER, METADATA, PRIVATE, ALLOWED, DNS]) ip('-n', ns, 'addr', 'add', `${a}/32`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    for (const a of [METADATA, PRIVATE, ALLOWED, DNS]) ip('route', 'add', `${a}/32`, 'dev', hostIf, 'table', table);
    for (const br of bridges) ip('rule', 'add', 'iif', br, 'table', table, 'priority', prio);
  } catch (e) {
    remove();
    throw e;
  }
  return { ns, remove };
}

async function probeFromNetns(ns: string, addr: string, port: number): Promise<string> {
  const r = await run('ip', ['netns', 'exec', ns, 'busybox', 'sh', '-c', `echo | nc -w 2 ${addr} ${port} >/dev/null 2>&1 && echo open || echo closed`]).catch(() => ({ stdout: 'closed' }));
  return r.stdout.trim();
}

/** A shell line that prints "open" or "closed" for a TCP connection from inside a VPS. */
const connects = (addr: string, port: number) => `if echo | nc -w 2 ${addr} ${port} >/dev/null 2>&1; then echo open; else echo closed; fi`;

/** Runs several probes in parallel inside one VPS (a dropped SYN costs the whole nc timeout), in order. */
const probes = (targets: Array<[string, number]>) =>
  targets.map(([a, p], i) => `(${connects(a, p)}) > /tmp/p${i} &`).join(' ') + ` wait; cat ${targets.map((_, i) => `/tmp/p${i}`).join(' ')}`;

const withAttack = (vps: RuncVps) => vps.writeFile('/attack', attack, 0o755);

/** Host side: every UDP payload arriving at `port` in the outside namespace. */
async function udpListener(port: number, seconds: number): Promise<{ lines: () => string[]; stop: () => Promise<void> }> {
  const child = spawn('ip', ['netns', 'exec', outside.ns, attackBin, 'listen', String(port), String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(() => out.includes('listening'), `the UDP listener on ${port} in the outside namespace`);
  return { lines: () => out.split('\n').filter((l) => l.startsWith('got ')), stop: () => stopChild(child) };
}

function macOf(vps: RuncVps): string {
  const out = execFileSync('ip', ['-n', vps.info().network.netns!, '-o', 'link', 'show', 'eth0']).toString();
  return /link\/ether ([0-9a-f:]{17})/.exec(out)![1]!;
}

/** The host sends UDP datagrams to `addr:port` every 100 ms (what an attacker in the middle would want to read). */
function hostSends(addr: string, port: number, text: string): () => void {
  const sock = dgram.createSocket('udp4');
  const timer = setInterval(() => sock.send(text, port, addr, () => undefined), 100);
  return () => {
    clearInterval(timer);
    sock.close();
  };
}

describe('no VPS can send as another one (the bridge pins each port to its MAC and address)', () => {
  it("a private VPS forging an egress VPS's source address (raw socket, IP_HDRINCL) gets nothing out; the egress VPS itself does", async () => {
    const victim = await t.create({ network: 'egress' });
    const listener = await udpListener(9000, 30);
    try {
      await withAttack(victim);
      const addr = victim.info().network.address!;
      const own = await victim.run({ argv: ['/attack', 'udp', addr, OUT, '9000', 'sent-by-the-egress-vps'], timeoutSec: 20, outputBytes: 10_000 });
      expect(own.exitCode).toBe(0);
      await waitFor(() => listener.lines().includes('got sent-by-the-egress-vps'), 'the egress VPS\'s own datagrams outside');
      const forged = await t.run(['/attack', 'udp', addr, OUT, '9000', 'forged-by-a-private-vps'], { spec: { network: 'private' }, inside: withAttack });
      expect(forged.stdout.trim()).toBe('sent 20'); // it has CAP_NET_RAW and sent them: the bridge must drop them
      await new Promise((r) => setTimeout(r, 500));
      expect(listener.lines()).not.toContain('got forged-by-a-private-vps');
    } finally {
      await listener.stop();
      await t.engine.destroy(victim.id);
    }
  });

  it.each(['own MAC (ARP poisoning)', "victim's MAC (bridge table poisoning)"])(
    "a private VPS claiming an egress VPS's address with its %s intercepts none of the victim's traffic",
    async (variant) => {
      const victim = await t.create({ network: 'egress' });
      const addr = victim.info().network.address!;
      await withAttack(victim);
      // The victim listens (no ICMP errors that would re-teach the bridge its port) and so receives the host's datagrams.
      let got = '';
      const victimRun = victim.run({ argv: ['/attack', 'listen', '9100', '8'], timeoutSec: 20, outputBytes: 1 << 20, onOutput: (_s, d) => (got += Buffer.from(d).toString()) });
      const stopSending = hostSends(addr, 9100, 'for-the-victim');
      try {
        await waitFor(() => got.includes('got for-the-victim'), 'the victim receiving the host\'s datagrams');
        const claim = variant.startsWith('own') ? 'self' : macOf(victim);
        const r = await t.run(['/attack', 'mitm', addr, claim, '9100', '4'], { spec: { network: 'private' }, inside: withAttack });
        expect(r.stdout.trim()).toBe('nothing');
        const before = got.length;
        await waitFor(() => got.length > before, 'the victim still receiving its datagrams');
      } finally {
        stopSending();
        await t.engine.destroy(victim.id);
        await victimRun.catch(() => undefined);
      }
    },
  );

  it("even with CAP_NET_ADMIN (RUNBOX_VPS_TUN=1), a private VPS that takes an egress VPS's address gets nothing out", async () => {
    const victim = await tTun.create({ network: 'egress' });
    const listener = await udpListener(9001, 30);
    try {
      const addr = victim.info().network.address!;
      const r = await tTun.sh(
        [
          'ip addr flush dev eth0',
          `ip addr add ${addr}/24 dev eth0`,
          `ip route add default via ${victim.info().network.gateway}`,
          'ip -4 -o addr show eth0',
          `/attack send ${OUT} 9001 stolen-address`,
        ].join(' && '),
        { spec: { network: 'private' }, inside: withAttack },
      );
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toContain(`inet ${addr}/24`); // it did take the address
      expect(r.stdout).toContain('sent 10'); // and sent from it
      await new Promise((res) => setTimeout(res, 500));
      expect(listener.lines()).not.toContain('got stolen-address');
    } finally {
      await listener.stop();
      await tTun.engine.destroy(victim.id);
    }
  });
});

describe('egress VPSs reach the internet, not the host network around them', () => {
  it('an egress VPS reaches a public address and DNS on its private nameserver, not the metadata address, a private address, another runbox host', async () => {
    await t.engine.net.setPeerHosts([PEER]);
    const r = await t.sh(probes([[OUT, TCP], [METADATA, TCP], [PRIVATE, TCP], [PEER, TCP], [DNS, 53], [DNS, TCP]]), { spec: { network: 'egress' } });
    expect(r.stdout.trim().split('\n')).toEqual(['open', 'closed', 'closed', 'closed', 'open', 'closed']);
  });

  it('RUNBOX_EGRESS_ALLOW opens the listed private destinations only, and never another runbox host', async () => {
    await tAllow.engine.net.setPeerHosts([PEER, '2001:db8::1']);
    const r = await tAllow.sh(probes([[ALLOWED, TCP], [OUT, TCP], [PRIVATE, TCP], [METADATA, TCP], [PEER, TCP]]), { spec: { network: 'egress' } });
    expect(r.stdout.trim().split('\n')).toEqual(['open', 'open', 'closed', 'closed', 'closed']);
    // Peers are replaced, not added: once PEER is no longer a runbox host, the allow list lets it through.
    await tAllow.engine.net.setPeerHosts([]);
    const again = await tAllow.sh(probes([[PEER, TCP]]), { spec: { network: 'egress' } });
    expect(again.stdout.trim()).toBe('open');
  });

  it('a private VPS reaches none of them', async () => {
    const r = await tAllow.sh(probes([[OUT, TCP], [ALLOWED, TCP], [DNS, 53]]), { spec: { network: 'private' } });
    expect(r.stdout.trim().split('\n')).toEqual(['closed', 'closed', 'closed']);
  });

  it('setPeerHosts refuses what is not an address (nothing reaches nft)', async () => {
    await expect(t.engine.net.setPeerHosts(['198.19.0.1 }; flush ruleset; add element inet x y {'])).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});

describe('root in a VPS has no CAP_NET_ADMIN and no tun', () => {
  it('ip link set lo down, ip addr add and nft add table fail with EPERM; lo stays up; the capability is in no set, PID 1 included', async () => {
    const r = await t.sh(
      [
        'ip link set lo down; echo lo=$?',
        'ip addr add 10.9.9.9/32 dev eth0; echo addr=$?',
        '/opt/host/run nft add table inet vps_attempt; echo nft=$?',
        'ip link show lo | grep -c ",UP"',
        'grep -E "^Cap(Inh|Prm|Eff|Bnd|Amb)" /proc/self/status /proc/1/status',
      ].join('\n'),
      { spec: { network: 'private' }, inside: installHostNft },
    );
    const out = r.stdout.split('\n');
    expect(out).toEqual(expect.arrayContaining(['lo=2', 'addr=2', 'nft=1', '1']));
    expect(r.stderr.match(/Operation not permitted/g)?.length, r.stderr).toBe(3);
    const masks = out.filter((l) => l.includes(':Cap')).map((l) => BigInt(`0x${l.split(/\s+/)[1]}`));
    expect(masks).toHaveLength(10);
    for (const m of masks) expect(m & (1n << 12n)).toBe(0n); // CAP_NET_ADMIN
    expect(masks.some((m) => (m & (1n << 13n)) !== 0n)).toBe(true); // CAP_NET_RAW stays (ping, tcpdump)
    expect(execFileSync('nft', ['list', 'tables']).toString()).not.toContain('vps_attempt');
  });

  it('opening /dev/net/tun fails (mknod or open refused by the device cgroup); with RUNBOX_VPS_TUN=1 a tun device can be made', async () => {
    const denied = await t.run(['/attack', 'tun'], { inside: withAttack });
    expect(denied.stdout.trim()).not.toBe('tun ok');
    if (t.engine.cgroups.kind === 'v1') expect(denied.stdout.trim()).toMatch(/^(mknod|open): EPERM$/);
    else expect(denied.stdout.trim()).toMatch(/^(mknod: EPERM|open: EPERM|TUNSETIFF: EPERM)$/);
    const allowed = await tTun.sh('ls -l /dev/net/tun && /attack tun', { inside: withAttack });
    expect(allowed.stdout).toMatch(/^c.* 10, *200 .*\/dev\/net\/tun\ntun ok\n$/);
  });

  it('a VPS restored from a checkpoint still has neither (CRIU restores the dropped sets, the device rule is applied again)', async () => {
    const vps = await t.create({ network: 'private' });
    try {
      await withAttack(vps);
      let out = '';
      const job = vps.run({
        argv: ['sh', '-c', 'echo started; sleep 2; grep -E "^Cap(Prm|Bnd)" /proc/self/status; ip link set lo down; echo lo=$?; /attack tun'],
        timeoutSec: 60,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => (out += Buffer.from(d).toString()),
      });
      await waitFor(() => out.includes('started'), 'the job to start');
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      await restore(t.engine, vps, cp.imagePath);
      const r = await job;
      expect(r.exitCode, out).toBe(0);
      for (const m of out.split('\n').filter((l) => l.startsWith('Cap'))) expect(BigInt(`0x${m.split(/\s+/)[1]}`) & (1n << 12n)).toBe(0n);
      expect(out).toContain('lo=2');
      expect(out).not.toContain('tun ok');
      if (t.engine.cgroups.kind === 'v1') expect(out).toMatch(/^(mknod|open): EPERM$/m); // runc restore wrote its defaults again
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});
