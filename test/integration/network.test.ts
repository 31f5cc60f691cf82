import { execFileSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { hostResolvConf, nameserversOf } from '../../runtime/net/dns.js';
import { vpsMac } from '../../runtime/net/firewall.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { canConnect, createUplink, hostAddresses, listenInNetns, startHostRedis, stopChild, waitFor } from '../helpers/net.js';
import { installHostNft } from '../helpers/vps-tools.js';

let t: TestEngine;
let redis: Awaited<ReturnType<typeof startHostRedis>>;
beforeAll(async () => {
  t = await testEngine('network');
  redis = await startHostRedis();
});
afterAll(async () => {
  await redis?.stop();
  await t?.cleanup();
});

const connects = (vpsAddr: string, port: number) => `if echo | nc -w 2 ${vpsAddr} ${port} >/dev/null 2>&1; then echo open; else echo closed; fi`;

describe('network mode none', () => {
  it('has loopback only and no route anywhere', async () => {
    const r = await t.sh('ip -o link | cut -d: -f2 | tr -d " "; ip route | wc -l');
    expect(r.stdout.trim().split('\n')).toEqual(['lo', '0']);
  });

  it('has loopback up: a server and a client inside talk over 127.0.0.1', async () => {
    const r = await t.sh('ip link show lo | grep -c "UP"; nc -l -p 7000 -e echo hello & sleep 0.3; nc 127.0.0.1 7000 </dev/null');
    expect(r.stdout.trim().split('\n')).toEqual(['1', 'hello']);
  });
});

describe('network mode private', () => {
  it('has its own address, a default route via the bridge and the MAC its port is pinned to; root cannot change them (no NET_ADMIN)', async () => {
    const vps = await t.create({ network: 'private' });
    try {
      const net = vps.info().network;
      const out: string[] = [];
      const r = await vps.run({
        argv: ['sh', '-c', 'ip -4 -o addr show eth0 | tr -s " " | cut -d" " -f4; ip route | grep -c "^default via"; cat /sys/class/net/eth0/address; ip route add 203.0.113.0/24 dev eth0; echo route=$?'],
        timeoutSec: 30,
        outputBytes: 10_000,
        onOutput: (_s, d) => out.push(Buffer.from(d).toString()),
      });
      expect(r.exitCode).toBe(0);
      const text = out.join('');
      expect(text).toContain(`${net.address}/24\n1\n${vpsMac(net.address!)}\n`);
      expect(net.address).toMatch(/^10\.\d+\.\d+\.\d+$/);
      expect(text).toContain('route=2');
      expect(text).toContain('Operation not permitted');
      expect(execFileSync('ip', ['route']).toString()).not.toMatch(/203\.0\.113/);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it("pins each VPS's bridge port while it lives (veth, MAC, address) and gives only egress VPSs egress; destroy removes both", async () => {
    const table = t.engine.net.table;
    const list = (family: string, set: string) => execFileSync('nft', ['list', 'set', family, table, set]).toString();
    const priv = await t.create({ network: 'private' });
    const egr = await t.create({ network: 'egress' });
    const [p, e] = [priv.info().network, egr.info().network];
    try {
      for (const n of [p, e]) expect(list('bridge', 'pins')).toContain(`"${n.hostVeth}" . ${vpsMac(n.address!)} . ${n.address}`);
      expect(p.hostVeth!.startsWith(t.engine.net.portPrefix)).toBe(true);
      expect(list('inet', 'egress')).toContain(e.address);
      expect(list('inet', 'egress')).not.toContain(`${p.address} `);
    } finally {
      await t.engine.destroy(priv.id);
      await t.engine.destroy(egr.id);
    }
    for (const n of [p, e]) expect(list('bridge', 'pins')).not.toContain(n.hostVeth);
    expect(list('inet', 'egress')).not.toMatch(new RegExp(`\\b${e.address!.replaceAll('.', '\\.')}\\b`));
  });

  it('two VPSs get different addresses', async () => {
    const a = await t.create({ network: 'private' });
    const b = await t.create({ network: 'private' });
    try {
      expect(a.info().network.address).toBeDefined();
      expect(a.info().network.address).not.toBe(b.info().network.address);
    } finally {
      await t.engine.destroy(a.id);
      await t.engine.destroy(b.id);
    }
  });

  it.each(['private', 'egress'] as const)('%s: cannot reach the host\'s own services on any host address', async (mode) => {
    expect(await canConnect('127.0.0.1', redis.port)).toBe(true); // the service is up
    const targets = [gatewayOf(t), ...hostAddresses()].filter(Boolean);
    // Probed in parallel (dropped packets cost the full nc timeout each), printed in order.
    const script = targets.map((a, i) => `(${connects(a, redis.port)}) > /tmp/p${i} &`).join(' ') + ` wait; cat ${targets.map((_, i) => `/tmp/p${i}`).join(' ')}`;
    const r = await t.sh(script, { spec: { network: mode } });
    expect(r.stdout.trim().split('\n')).toEqual(targets.map(() => 'closed'));
  });

  it('cannot reach another VPS, while the host can', async () => {
    const server = await t.create({ network: 'private' });
    const serverRun = server.run({ argv: ['nc', '-ll', '-p', '7000', '-e', 'echo', 'hi'], timeoutSec: 30, outputBytes: 1000 });
    try {
      const addr = server.info().network.address!;
      await waitFor(() => canConnect(addr, 7000), 'the VPS listener');
      for (const mode of ['private', 'egress'] as const) {
        const r = await t.sh(connects(addr, 7000), { spec: { network: mode } });
        expect(r.stdout.trim(), mode).toBe('closed');
      }
    } finally {
      await t.engine.destroy(server.id);
      await serverRun;
    }
  });

  it('with RUNBOX_VPS_TUN=1 (root keeps NET_ADMIN) its firewall rules stay in its own namespace', async () => {
    const tun = await testEngine('network-tun', { vpsTun: true });
    try {
      const r = await tun.run(['/opt/host/run', 'nft', '-f', '/tmp/rules.nft'], {
        spec: { network: 'private' },
        inside: async (vps) => {
          await installHostNft(vps);
          await vps.writeFile('/tmp/rules.nft', Buffer.from('table inet vpsonly {\n chain out {\n type filter hook output priority 0;\n ip daddr 192.0.2.1 drop\n }\n}\n'));
        },
      });
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
      expect(execFileSync('nft', ['list', 'tables']).toString()).not.toMatch(/vpsonly/);
      // and another VPS starts with an empty ruleset
      const other = await tun.run(['/opt/host/run', 'nft', 'list', 'ruleset'], { spec: { network: 'private' }, inside: installHostNft });
      expect(other.exitCode).toBe(0);
      expect(other.stdout.trim()).toBe('');
    } finally {
      await tun.cleanup();
    }
  });
});

describe('network mode egress', () => {
  let uplink: ReturnType<typeof createUplink>;
  let listener: ChildProcess;
  beforeAll(async () => {
    uplink = createUplink(`e${process.pid % 10000}`);
    listener = listenInNetns(uplink.ns, 8000, 'from-outside');
    await waitFor(() => canConnect(uplink.address, 8000), 'the uplink listener');
  });
  afterAll(async () => {
    if (listener) await stopChild(listener);
    uplink?.remove();
  });

  it('gets the host\'s (non-loopback) nameservers, and port 53 to them stays open in the firewall', async () => {
    const expected = await hostResolvConf();
    const r = await t.sh('cat /etc/resolv.conf', { spec: { network: 'egress' } });
    expect(r.stdout).toBe(expected ?? '');
    const set = execFileSync('nft', ['list', 'set', 'inet', t.engine.net.table, 'nameservers']).toString();
    for (const ns of nameserversOf(expected)) expect(set).toContain(ns);
  });

  it('reaches the outside through NAT; private does not', async () => {
    const egress = await t.sh(`echo | nc -w 2 ${uplink.address} 8000`, { spec: { network: 'egress' } });
    expect(egress.stdout.trim()).toBe('from-outside');
    const priv = await t.sh(connects(uplink.address, 8000), { spec: { network: 'private' } });
    expect(priv.stdout.trim()).toBe('closed');
  });
});

function gatewayOf(te: TestEngine): string {
  const out = execFileSync('ip', ['-4', '-o', 'addr', 'show', 'dev', te.engine.net.bridge]).toString();
  return /inet (\d+\.\d+\.\d+\.\d+)/.exec(out)?.[1] ?? '';
}

describe('port guard (post-copy page server)', () => {
  /** A TCP connection to 127.0.0.1:port from `from`: 'open', or the error code it got. */
  const tryFrom = (from: string, port: number) =>
    new Promise<string>((resolve) => {
      const sock = net.connect({ host: '127.0.0.1', port, localAddress: from });
      sock.setTimeout(2000, () => (sock.destroy(), resolve('timeout')));
      sock.on('connect', () => (sock.destroy(), resolve('open')));
      sock.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });

  it('closes a port to all but its peers (a reset for the others) until the undo; the table goes with the instance', async () => {
    const server = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const unguard = await t.engine.net.guardPort(port, ['127.0.0.2'], 60);
      expect(await tryFrom('127.0.0.2', port)).toBe('open');
      expect(await tryFrom('127.0.0.3', port)).toBe('ECONNREFUSED');
      expect(await tryFrom('127.0.0.1', port)).toBe('ECONNREFUSED');
      await unguard();
      expect(await tryFrom('127.0.0.3', port)).toBe('open');
      const listed = execFileSync('nft', ['list', 'table', 'inet', t.engine.net.guardTable]).toString();
      expect(listed).not.toContain(String(port));
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
