import { describe, it, expect } from 'vitest';
import { firewallScript } from '../../runtime/net/firewall.js';

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
