import { describe, it, expect } from 'vitest';
import { firewallScript, portGuardElements, portGuardScript } from '../../runtime/net/firewall.js';

const TABLE = 'runbox_ab12cd';
const BR = 'rbb-ab12cd';
const CIDR = '10.88.0.0/16';
const script = firewallScript(TABLE, BR, CIDR);

/** The rule lines of one chain (without its type/hook line). */
function chain(name: string): string[] {
  const m = new RegExp(`\\n  chain ${name} \\{\\n([\\s\\S]*?)\\n  \\}`).exec(script);
  expect(m, `chain ${name}`).not.toBeNull();
  return m![1]!.split('\n').map((l) => l.trim());
}

describe('firewallScript', () => {
  it('recreates the instance table atomically', () => {
    const lines = script.split('\n');
    expect(lines[0]).toBe(`table inet ${TABLE}`);
    expect(lines[1]).toBe(`delete table inet ${TABLE}`);
    expect(lines[2]).toBe(`table inet ${TABLE} {`);
    expect(script.endsWith('}\n')).toBe(true);
    expect(script.match(/table inet (\S+)/g)).toEqual([`table inet ${TABLE}`, `table inet ${TABLE}`, `table inet ${TABLE}`]);
  });

  it('declares the egress address set', () => {
    expect(script).toContain('  set egress {\n    type ipv4_addr\n  }');
  });

  it('input: accepts replies from the bridge, then drops everything else from it', () => {
    expect(chain('input')).toEqual([
      'type filter hook input priority -10; policy accept;',
      `iifname "${BR}" ct state established,related accept`,
      `iifname "${BR}" drop`,
    ]);
  });

  it('forward: replies in, no other bridges, egress set out, the rest dropped (in that order)', () => {
    expect(chain('forward')).toEqual([
      'type filter hook forward priority -10; policy accept;',
      `oifname "${BR}" ct state established,related accept`,
      `oifname "${BR}" drop`,
      `iifname "${BR}" oifname "rbb*" drop`,
      `iifname "${BR}" ip saddr @egress ip daddr != ${CIDR} accept`,
      `iifname "${BR}" drop`,
    ]);
  });

  it('postrouting: masquerades egress traffic leaving through another interface', () => {
    expect(chain('postrouting')).toEqual([
      'type nat hook postrouting priority 100; policy accept;',
      `ip saddr @egress oifname != "${BR}" masquerade`,
    ]);
  });

  it('uses only the given names (pure)', () => {
    const other = firewallScript('runbox_ffffff', 'rbb-ffffff', '172.30.0.0/20');
    expect(other).not.toContain(TABLE);
    expect(other).not.toContain(BR);
    expect(other).not.toContain(CIDR);
    expect(other).toContain('ip daddr != 172.30.0.0/20 accept');
    expect(other.match(/"rbb-ffffff"/g)).toHaveLength(8);
    expect(firewallScript(TABLE, BR, CIDR)).toBe(script);
  });
});

describe('port guard', () => {
  it('one table: ports and peers sets with timeouts; peers accepted, everyone else reset', () => {
    const s = portGuardScript('runbox_ab12cd_guard');
    expect(s.split('\n').slice(0, 3)).toEqual(['table inet runbox_ab12cd_guard', 'delete table inet runbox_ab12cd_guard', 'table inet runbox_ab12cd_guard {']);
    expect(s).toContain('set ports {\n    type inet_service\n    flags timeout\n  }');
    expect(s).toContain('set peers {\n    type ipv4_addr . inet_service\n    flags timeout\n  }');
    const rules = s.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('tcp '));
    expect(rules).toEqual(['tcp dport @ports ip saddr . tcp dport @peers accept', 'tcp dport @ports reject with tcp reset']);
  });

  it('adds peers before the port and removes the port first, deduplicated, with a timeout on add', () => {
    expect(portGuardElements('g', 4000, ['10.0.0.2', '10.0.0.1', '10.0.0.2'], { timeoutSec: 60 })).toBe(
      'add element inet g peers { 10.0.0.2 . 4000 timeout 60s, 10.0.0.1 . 4000 timeout 60s }\nadd element inet g ports { 4000 timeout 60s }\n',
    );
    expect(portGuardElements('g', 4000, ['10.0.0.2'], { remove: true })).toBe('delete element inet g ports { 4000 }\ndelete element inet g peers { 10.0.0.2 . 4000 }\n');
  });
});
