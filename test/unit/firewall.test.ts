import { execFileSync } from 'node:child_process';
import { describe, it, expect } from 'vitest';
import {
  cidr,
  EGRESS_DENY,
  firewallScript,
  peerHostsScript,
  portGuardElements,
  portGuardScript,
  vpsElementsScript,
  vpsMac,
  type FirewallSpec,
} from '../../runtime/net/firewall.js';
import { nameserversOf } from '../../runtime/net/dns.js';

const TABLE = 'runbox_ab12cd';
const BR = 'rbb-ab12cd';
const CIDR = '10.88.0.0/16';
const SPEC: FirewallSpec = { table: TABLE, bridge: BR, portPrefix: 'rvab12cd', cidr: CIDR, egressAllow: ['192.168.7.0/24'], nameservers: ['10.255.255.53'] };
const script = firewallScript(SPEC);
const lines = script.trimEnd().split('\n');

/** The rules of one chain, in order, without the `add rule <family> <table> <chain>` prefix. */
function rules(family: string, chain: string): string[] {
  const head = `add rule ${family} ${TABLE} ${chain} `;
  return lines.filter((l) => l.startsWith(head)).map((l) => l.slice(head.length));
}

describe('firewallScript (converge)', () => {
  it('only adds and refills: no table is deleted, the per-VPS sets and @peer_hosts keep their elements', () => {
    expect(script).not.toMatch(/^delete /m);
    expect(script).not.toMatch(/^flush set \S+ \S+ (egress|pins|peer_hosts)$/m);
    expect(lines).toContain(`add set inet ${TABLE} egress { type ipv4_addr; }`);
    expect(lines).toContain(`add set bridge ${TABLE} pins { type ifname . ether_addr . ipv4_addr; }`);
    expect(lines).toContain(`add set inet ${TABLE} peer_hosts { type ipv4_addr; flags interval; auto-merge; }`);
    for (const chain of ['input', 'forward', 'from_vps', 'postrouting']) expect(lines).toContain(`flush chain inet ${TABLE} ${chain}`);
    for (const chain of ['prerouting', 'from_vps']) expect(lines).toContain(`flush chain bridge ${TABLE} ${chain}`);
    // every flush of a chain comes before its rules
    expect(lines.indexOf(`flush chain inet ${TABLE} from_vps`)).toBeLessThan(lines.findIndex((l) => l.startsWith(`add rule inet ${TABLE} from_vps`)));
  });

  it('recreate deletes both tables first (an incompatible older layout), then converges', () => {
    const r = firewallScript(SPEC, { recreate: true }).split('\n');
    expect(r.slice(0, 4)).toEqual([`table inet ${TABLE}`, `delete table inet ${TABLE}`, `table bridge ${TABLE}`, `delete table bridge ${TABLE}`]);
    expect(r.slice(4).join('\n')).toBe(script);
  });

  it('bridge: ports of this instance (by name prefix) must send with their pinned MAC and IPv4 (IP and ARP); all else dropped', () => {
    expect(rules('bridge', 'prerouting')).toEqual(['iifname "rvab12cd*" jump from_vps']);
    expect(rules('bridge', 'from_vps')).toEqual([
      'ether type ip iifname . ether saddr . ip saddr @pins accept',
      'ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ip @pins iifname . arp saddr ether . arp saddr ip @pins accept',
      'drop',
    ]);
    expect(lines).toContain(`add chain bridge ${TABLE} prerouting { type filter hook prerouting priority -200; policy accept; }`);
  });

  it('input: accepts replies from the bridge, then drops everything else from it', () => {
    expect(rules('inet', 'input')).toEqual([`iifname "${BR}" ct state established,related accept`, `iifname "${BR}" drop`]);
  });

  it('forward: replies in, nothing else in; from VPSs: IPv4 of @egress only, peers never, DNS, allow before deny', () => {
    expect(rules('inet', 'forward')).toEqual([`oifname "${BR}" ct state established,related accept`, `oifname "${BR}" drop`, `iifname "${BR}" jump from_vps`]);
    expect(rules('inet', 'from_vps')).toEqual([
      'meta nfproto != ipv4 drop',
      'oifname "rbb*" drop',
      'ip saddr != @egress drop',
      'ip daddr @peer_hosts drop',
      'ip daddr @nameservers udp dport 53 accept',
      'ip daddr @nameservers tcp dport 53 accept',
      'ip daddr @egress_allow accept',
      'ip daddr @egress_deny drop',
      'accept',
    ]);
  });

  it('postrouting: masquerades egress traffic leaving through another interface', () => {
    expect(rules('inet', 'postrouting')).toEqual([`ip saddr @egress oifname != "${BR}" masquerade`]);
  });

  it('refills the deny set (reserved ranges + the VPS range), the allow list and the nameservers', () => {
    expect(lines).toContain(`add element inet ${TABLE} egress_deny { ${[...EGRESS_DENY, CIDR].join(', ')} }`);
    expect(lines).toContain(`add element inet ${TABLE} egress_allow { 192.168.7.0/24 }`);
    expect(lines).toContain(`add element inet ${TABLE} nameservers { 10.255.255.53 }`);
    const empty = firewallScript({ ...SPEC, egressAllow: [], nameservers: [] });
    expect(empty).toContain(`flush set inet ${TABLE} egress_allow\n`);
    expect(empty).not.toContain('add element inet runbox_ab12cd egress_allow');
    expect(empty).not.toContain('add element inet runbox_ab12cd nameservers');
  });

  it.each([
    ['169.254.169.254', 'cloud metadata'],
    ['10.1.2.3', 'RFC 1918'],
    ['172.20.0.1', 'RFC 1918'],
    ['192.168.0.1', 'RFC 1918'],
    ['100.100.100.200', 'CGNAT / cloud-internal'],
    ['127.0.0.1', 'loopback'],
    ['0.1.2.3', 'this network'],
    ['224.0.0.251', 'multicast'],
    ['255.255.255.255', 'broadcast'],
  ])('denies %s (%s) by default', (ip) => {
    const n = (a: string) => a.split('.').reduce((x, o) => x * 256 + Number(o), 0);
    const inside = EGRESS_DENY.some((c) => {
      const [base, p] = c.split('/');
      const size = 2 ** (32 - Number(p));
      return n(ip) >= n(base!) && n(ip) < n(base!) + size;
    });
    expect(inside).toBe(true);
  });

  it('normalises CIDRs and refuses anything that is not one (no nft syntax can get in)', () => {
    expect(firewallScript({ ...SPEC, egressAllow: ['10.1.2.3/8', '192.168.1.5'] })).toContain('egress_allow { 10.0.0.0/8, 192.168.1.5/32 }');
    for (const bad of ['10.0.0.0/8 }; flush ruleset; add element x y {', '10.0.0.0/33', '300.1.1.1', 'example.com', '']) {
      expect(() => firewallScript({ ...SPEC, egressAllow: [bad] }), bad).toThrow(/invalid IPv4/);
    }
    expect(() => firewallScript({ ...SPEC, nameservers: ['1.1.1.1"\ninclude "/etc/shadow'] })).toThrow(/invalid IPv4 address/);
    expect(() => firewallScript({ ...SPEC, bridge: 'br"; drop' })).toThrow(/invalid interface name/);
    expect(() => firewallScript({ ...SPEC, table: 'x y' })).toThrow(/invalid nftables name/);
  });

  it('is accepted by the real nft parser and kernel (check mode: nothing changes)', () => {
    expect(() => execFileSync('nft', ['-c', '-f', '-'], { input: script, stdio: ['pipe', 'pipe', 'pipe'] })).not.toThrow();
  });
});

describe('vpsElementsScript', () => {
  const pin = { veth: 'rvab12cd0123456', mac: '02:72:0a:58:00:07', address: '10.88.0.7' };

  it('egress: pins the port and adds the address to @egress', () => {
    expect(vpsElementsScript(TABLE, pin, { egress: true })).toBe(
      `add element bridge ${TABLE} pins { "rvab12cd0123456" . 02:72:0a:58:00:07 . 10.88.0.7 }\nadd element inet ${TABLE} egress { 10.88.0.7 }\n`,
    );
  });

  it('private: pins the port and clears any @egress element of its address (add + delete never fails)', () => {
    expect(vpsElementsScript(TABLE, pin, { egress: false })).toBe(
      [
        `add element bridge ${TABLE} pins { "rvab12cd0123456" . 02:72:0a:58:00:07 . 10.88.0.7 }`,
        `add element inet ${TABLE} egress { 10.88.0.7 }`,
        `delete element inet ${TABLE} egress { 10.88.0.7 }`,
        '',
      ].join('\n'),
    );
  });

  it('remove: idempotent deletes of @egress and the pin', () => {
    expect(vpsElementsScript(TABLE, pin, { egress: true, remove: true }).trimEnd().split('\n')).toEqual([
      `add element inet ${TABLE} egress { 10.88.0.7 }`,
      `delete element inet ${TABLE} egress { 10.88.0.7 }`,
      `add element bridge ${TABLE} pins { "rvab12cd0123456" . 02:72:0a:58:00:07 . 10.88.0.7 }`,
      `delete element bridge ${TABLE} pins { "rvab12cd0123456" . 02:72:0a:58:00:07 . 10.88.0.7 }`,
    ]);
  });

  it('refills @nameservers in the same run when asked', () => {
    expect(vpsElementsScript(TABLE, pin, { egress: true, nameservers: ['10.0.0.2', '10.0.0.2', '10.0.0.3'] })).toContain(
      `flush set inet ${TABLE} nameservers\nadd element inet ${TABLE} nameservers { 10.0.0.2, 10.0.0.3 }\n`,
    );
  });

  it.each([
    [{ ...pin, veth: 'a"b' }, /interface name/],
    [{ ...pin, veth: 'sixteen-chars-xx' }, /interface name/],
    [{ ...pin, mac: '02:72:0a:58:00' }, /MAC/],
    [{ ...pin, address: '10.88.0.7 }' }, /IPv4 address/],
  ])('refuses %o', (bad, msg) => {
    expect(() => vpsElementsScript(TABLE, bad, { egress: true })).toThrow(msg);
  });
});

describe('peer hosts, MACs', () => {
  it('peerHostsScript replaces the set atomically (flush + add), deduplicated; empty clears it', () => {
    expect(peerHostsScript(TABLE, ['192.0.2.10', '198.51.100.0/24', '192.0.2.10'])).toBe(
      `flush set inet ${TABLE} peer_hosts\nadd element inet ${TABLE} peer_hosts { 192.0.2.10/32, 198.51.100.0/24 }\n`,
    );
    expect(peerHostsScript(TABLE, [])).toBe(`flush set inet ${TABLE} peer_hosts\n`);
    expect(() => peerHostsScript(TABLE, ['host.example'])).toThrow(/invalid IPv4 CIDR/);
  });

  it('vpsMac: locally administered unicast, derived from the address (the same on every host)', () => {
    expect(vpsMac('10.88.0.7')).toBe('02:72:0a:58:00:07');
    expect(vpsMac('192.168.255.254')).toBe('02:72:c0:a8:ff:fe');
    expect(vpsMac('10.88.0.7')).not.toBe(vpsMac('10.88.0.8'));
  });

  it('cidr: address → /32, host bits cleared', () => {
    expect(cidr('10.1.2.3')).toBe('10.1.2.3/32');
    expect(cidr('10.1.2.3/16')).toBe('10.1.0.0/16');
    expect(cidr('0.0.0.0/0')).toBe('0.0.0.0/0');
  });
});

describe('port guard', () => {
  it('one table: ports and peers sets with timeouts; peers accepted, everyone else reset', () => {
    const s = portGuardScript('runbox_ab12cd_guard');
    expect(s.split('\n').slice(0, 3)).toEqual(['table inet runbox_ab12cd_guard', 'delete table inet runbox_ab12cd_guard', 'table inet runbox_ab12cd_guard {']);
    expect(s).toContain('set ports {\n    type inet_service\n    flags timeout\n  }');
    expect(s).toContain('set peers {\n    type ipv4_addr . inet_service\n    flags timeout\n  }');
    const r = s.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('tcp '));
    expect(r).toEqual(['tcp dport @ports ip saddr . tcp dport @peers accept', 'tcp dport @ports reject with tcp reset']);
  });

  it('adds peers before the port and removes the port first, deduplicated, with a timeout on add', () => {
    expect(portGuardElements('g', 4000, ['10.0.0.2', '10.0.0.1', '10.0.0.2'], { timeoutSec: 60 })).toBe(
      'add element inet g peers { 10.0.0.2 . 4000 timeout 60s, 10.0.0.1 . 4000 timeout 60s }\nadd element inet g ports { 4000 timeout 60s }\n',
    );
    expect(portGuardElements('g', 4000, ['10.0.0.2'], { remove: true })).toBe('delete element inet g ports { 4000 }\ndelete element inet g peers { 10.0.0.2 . 4000 }\n');
  });
});

describe('nameserversOf (what @nameservers holds)', () => {
  it.each([
    ['nameserver 10.255.255.53\n', ['10.255.255.53']],
    ['# c\nnameserver 1.1.1.1\nnameserver 2606:4700::1111\nnameserver 1.1.1.1\nsearch x\n', ['1.1.1.1']],
    ['nameserver 999.1.1.1\nnameserver 8.8.8.8 }\n', []],
    ['', []],
  ])('%j → %j', (text, want) => {
    expect(nameserversOf(text)).toEqual(want);
  });
  it('undefined (no resolver configuration) → none', () => {
    expect(nameserversOf(undefined)).toEqual([]);
  });
});
