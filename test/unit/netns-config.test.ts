import { describe, expect, it } from 'vitest';
import { parseAddresses, parseRoutes, replayPlan, withoutCriuLock, withoutOwn, type NetnsConfig } from '../../runtime/net/netns-config.js';

// Shapes as printed by iproute2 6.1 (`ip -j addr show`, `ip -j route show table all`).
const ADDRS = JSON.stringify([
  { ifindex: 1, ifname: 'lo', addr_info: [
    { family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host', label: 'lo' },
    { family: 'inet', local: '10.123.0.1', prefixlen: 32, scope: 'global', label: 'lo' },
    { family: 'inet6', local: '::1', prefixlen: 128, scope: 'host' },
  ] },
  { ifindex: 2, ifname: 'eth0', addr_info: [
    { family: 'inet', local: '10.88.0.5', prefixlen: 24, broadcast: '10.88.0.255', scope: 'global', label: 'eth0' },
    { family: 'inet', local: '10.88.0.6', prefixlen: 24, scope: 'global', label: 'eth0:1' },
    { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
  ] },
  { ifindex: 3, ifname: 'dummy0' },
]);

const ROUTES4 = JSON.stringify([
  { dst: 'default', gateway: '10.88.0.1', dev: 'eth0', flags: [] },
  { dst: '10.88.0.0/24', dev: 'eth0', protocol: 'kernel', scope: 'link', prefsrc: '10.88.0.5', flags: [] },
  { dst: '10.124.0.0/24', dev: 'eth0', metric: 7, flags: [] },
  { type: 'blackhole', dst: '10.125.0.0/16', flags: [] },
  { dst: '10.126.0.0/16', gateway: '10.88.0.9', dev: 'eth0', table: '100', flags: [] },
  { type: 'local', dst: '127.0.0.1', dev: 'lo', table: 'local', protocol: 'kernel', scope: 'host', flags: [] },
  { type: 'broadcast', dst: '10.88.0.255', dev: 'eth0', table: 'local', protocol: 'kernel', scope: 'link', flags: [] },
]);

const ROUTES6 = JSON.stringify([
  { dst: 'fe80::/64', dev: 'eth0', protocol: 'kernel', metric: 256, flags: [] },
  { dst: 'fd00::/64', dev: 'eth0', metric: 1024, flags: [] },
  { type: 'local', dst: '::1', dev: 'lo', table: 'local', protocol: 'kernel', metric: 0, flags: [] },
]);

describe('netns configuration: parsing', () => {
  it("keeps every address but those the kernel makes (IPv6 link-local, loopback's own); labels only where they differ", () => {
    expect(parseAddresses(ADDRS)).toEqual([
      { dev: 'lo', family: 'inet', local: '10.123.0.1', prefixlen: 32, scope: 'global' },
      { dev: 'eth0', family: 'inet', local: '10.88.0.5', prefixlen: 24, scope: 'global', broadcast: '10.88.0.255' },
      { dev: 'eth0', family: 'inet', local: '10.88.0.6', prefixlen: 24, scope: 'global', label: 'eth0:1' },
    ]);
    expect(parseAddresses('')).toEqual([]);
  });

  it('keeps only routes someone added (not the kernel, not the local table)', () => {
    expect(parseRoutes(ROUTES4, 'inet')).toEqual([
      { family: 'inet', dst: 'default', gateway: '10.88.0.1', dev: 'eth0' },
      { family: 'inet', dst: '10.124.0.0/24', dev: 'eth0', metric: 7 },
      { family: 'inet', dst: '10.125.0.0/16', type: 'blackhole' },
      { family: 'inet', dst: '10.126.0.0/16', gateway: '10.88.0.9', dev: 'eth0', table: '100' },
    ]);
    expect(parseRoutes(ROUTES6, 'inet6')).toEqual([{ family: 'inet6', dst: 'fd00::/64', dev: 'eth0', metric: 1024 }]);
  });

  it("leaves out runbox's own address and default route, not a default route the job changed", () => {
    const config: NetnsConfig = { addresses: parseAddresses(ADDRS), routes: parseRoutes(ROUTES4, 'inet'), nftRuleset: '' };
    const own = withoutOwn(config, { address: '10.88.0.5', gateway: '10.88.0.1' });
    expect(own.addresses.map((a) => a.local)).toEqual(['10.123.0.1', '10.88.0.6']);
    expect(own.routes.map((r) => r.dst)).toEqual(['10.124.0.0/24', '10.125.0.0/16', '10.126.0.0/16']);
    const changed = withoutOwn({ ...config, routes: [{ family: 'inet', dst: 'default', gateway: '10.88.0.7', dev: 'eth0' }] }, { address: '10.88.0.5', gateway: '10.88.0.1' });
    expect(changed.routes).toHaveLength(1);
  });
});

describe('netns configuration: replay', () => {
  const saved: NetnsConfig = {
    addresses: [
      ...parseAddresses(ADDRS),
      { dev: 'dummy0', family: 'inet', local: '192.0.2.1', prefixlen: 24, scope: 'global' },
    ],
    routes: [...parseRoutes(ROUTES4, 'inet'), ...parseRoutes(ROUTES6, 'inet6'), { family: 'inet', dst: '198.51.100.0/24', dev: 'dummy0' }],
    nftRuleset: '',
  };

  it('turns the saved state into idempotent ip batch lines, addresses before routes, per family', () => {
    const plan = replayPlan(saved, new Set(['lo', 'eth0']));
    expect(plan.inet).toEqual([
      'addr replace 10.123.0.1/32 dev lo scope global',
      'addr replace 10.88.0.5/24 dev eth0 scope global broadcast 10.88.0.255',
      'addr replace 10.88.0.6/24 dev eth0 scope global label eth0:1',
      'route replace default via 10.88.0.1 dev eth0',
      'route replace 10.124.0.0/24 dev eth0 metric 7',
      'route replace blackhole 10.125.0.0/16',
      'route replace 10.126.0.0/16 via 10.88.0.9 dev eth0 table 100',
    ]);
    expect(plan.inet6).toEqual(['route replace fd00::/64 dev eth0 metric 1024']);
  });

  it('reports what belongs to links that do not exist in the new netns instead of failing on it', () => {
    expect(replayPlan(saved, new Set(['lo', 'eth0'])).skipped).toEqual(['address 192.0.2.1/24 on dummy0', 'route 198.51.100.0/24 on dummy0']);
  });
});

describe('netns configuration: CRIU network lock', () => {
  const job = ['table inet job {', '\tchain input {', '\t\ttype filter hook input priority filter; policy accept;', '\t\ttcp dport 8080 drop', '\t}', '}'];
  it('drops the table CRIU makes with nftables locking, keeps the job\'s tables', () => {
    const locked = [
      ...job,
      'table inet CRIU-a113d22f-ad49-46fe-a424-007e89cb7767 {',
      '\tchain output {',
      '\t\ttype filter hook output priority filter; policy drop;',
      '\t\tmeta mark 0x0000c114 accept',
      '\t}',
      '\tchain input {',
      '\t\ttype filter hook input priority filter; policy drop;',
      '\t}',
      '}',
    ].join('\n');
    expect(withoutCriuLock(locked)).toBe(job.join('\n'));
  });

  it("drops CRIU's chain and jumps of iptables locking (nf_tables backend), keeps the rest of the filter table", () => {
    const locked = [
      'table ip filter {',
      '\tchain CRIU {',
      '\t\tmeta mark 0xc114 counter packets 0 bytes 0 accept',
      '\t\tcounter packets 0 bytes 0 drop',
      '\t}',
      '',
      '\tchain INPUT {',
      '\t\ttype filter hook input priority filter; policy accept;',
      '\t\tcounter packets 0 bytes 0 jump CRIU',
      '\t\ttcp dport 22 counter packets 0 bytes 0 drop',
      '\t}',
      '}',
    ].join('\n');
    expect(withoutCriuLock(locked)).toBe(['table ip filter {', '', '\tchain INPUT {', '\t\ttype filter hook input priority filter; policy accept;', '\t\ttcp dport 22 counter packets 0 bytes 0 drop', '\t}', '}'].join('\n'));
  });

  it('leaves a ruleset without a lock as it is, and an empty one empty', () => {
    expect(withoutCriuLock(job.join('\n') + '\n')).toBe(job.join('\n'));
    expect(withoutCriuLock('')).toBe('');
  });
});
