import { describe, it, expect } from 'vitest';
import { gateway, intToIp, ipToInt, parseCidr, poolSize, vpsAddress } from '../../runtime/net/addr.js';
import { RunboxError } from '../../core/errors.js';
import { thrown } from '../helpers/errors.js';

describe('ipToInt / intToIp', () => {
  it.each([
    ['0.0.0.0', 0],
    ['0.0.0.1', 1],
    ['1.2.3.4', 16_909_060],
    ['10.88.0.0', 173_539_328],
    ['192.168.1.0', 3_232_235_776],
    ['255.255.255.255', 4_294_967_295],
  ])('%s <-> %d', (ip, n) => {
    expect(ipToInt(ip)).toBe(n);
    expect(intToIp(n)).toBe(ip);
  });

  it.each(['1.2.3', '1.2.3.4.5', '1.2.3.256', '-1.2.3.4', 'a.b.c.d', '1.2.3.4.', ''])('rejects %j', (ip) => {
    const e = thrown(() => ipToInt(ip));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe(`invalid IPv4 address "${ip}"`);
  });
});

describe('parseCidr', () => {
  it.each([
    ['10.88.0.0/16', '10.88.0.0', 16],
    ['10.88.12.34/16', '10.88.0.0', 16],
    ['192.168.1.77/24', '192.168.1.0', 24],
    ['172.16.5.9/12', '172.16.0.0', 12],
    ['172.31.255.255/12', '172.16.0.0', 12],
    ['10.1.2.3/8', '10.0.0.0', 8],
    ['10.0.0.7/29', '10.0.0.0', 29],
    ['10.0.0.15/29', '10.0.0.8', 29],
    ['255.255.255.255/24', '255.255.255.0', 24],
  ])('%s -> base %s /%d', (text, base, prefix) => {
    expect(parseCidr(text)).toEqual({ base: ipToInt(base), prefix });
  });

  it('returns an unsigned base for high addresses', () => {
    expect(parseCidr('200.1.2.3/16').base).toBe(3_355_508_736);
  });

  it.each(['10.88.0.0/7', '10.88.0.0/0', '10.88.0.0/30', '10.88.0.0/32', '10.88.0.0/33'])('rejects the prefix of %s', (text) => {
    const e = thrown(() => parseCidr(text));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe(`CIDR prefix /${text.split('/')[1]} out of range (8..29)`);
  });

  it.each(['10.88.0.0', '10.88.0.0/', 'abc', '10.88.0/16', '10.88.0.0/16 ', ' 10.88.0.0/16', '10.88.0.0/-1', '10.88.0.0/1a', '10.88.0.0/16/8'])(
    'rejects malformed %j',
    (text) => {
      const e = thrown(() => parseCidr(text));
      expect(e.code).toBe('invalid_argument');
      expect(e.message).toBe(`invalid CIDR "${text}"`);
    },
  );

  it('rejects an out-of-range octet', () => {
    expect(thrown(() => parseCidr('256.0.0.0/16')).code).toBe('invalid_argument');
  });
});

describe('poolSize', () => {
  it.each([
    ['10.0.0.0/8', 16_777_213],
    ['10.88.0.0/16', 65_533],
    ['10.88.0.0/20', 4093],
    ['10.88.0.0/24', 253],
    ['10.88.0.0/29', 5],
  ])('%s has %d VPS addresses', (cidr, n) => {
    expect(poolSize(parseCidr(cidr))).toBe(n);
  });
});

describe('gateway', () => {
  it.each([
    ['10.88.0.0/16', '10.88.0.1'],
    ['10.88.77.5/16', '10.88.0.1'],
    ['192.168.7.128/25', '192.168.7.129'],
    ['10.0.0.8/29', '10.0.0.9'],
    ['200.1.0.0/16', '200.1.0.1'],
  ])('%s -> %s', (cidr, gw) => {
    expect(gateway(parseCidr(cidr))).toBe(gw);
  });
});

describe('vpsAddress', () => {
  const c16 = parseCidr('10.88.0.0/16');

  it.each([
    [0, '10.88.0.2'],
    [1, '10.88.0.3'],
    [253, '10.88.0.255'],
    [254, '10.88.1.0'],
    [65_532, '10.88.255.254'],
  ])('index %d -> %s', (i, ip) => {
    expect(vpsAddress(c16, i)).toBe(ip);
  });

  it.each([-1, 65_533, 100_000])('rejects index %d outside the pool', (i) => {
    const e = thrown(() => vpsAddress(c16, i));
    expect(e.code).toBe('internal');
    expect(e.message).toBe(`address index ${i} outside the pool`);
  });

  it('covers a /29 exactly: no network, gateway or broadcast address', () => {
    const c = parseCidr('10.0.0.8/29');
    const all = Array.from({ length: poolSize(c) }, (_, i) => vpsAddress(c, i));
    expect(all).toEqual(['10.0.0.10', '10.0.0.11', '10.0.0.12', '10.0.0.13', '10.0.0.14']);
    expect(() => vpsAddress(c, 5)).toThrow(RunboxError);
  });

  it('gives distinct addresses inside the subnet for a whole /24', () => {
    const c = parseCidr('192.168.5.0/24');
    const all = Array.from({ length: poolSize(c) }, (_, i) => vpsAddress(c, i));
    expect(new Set(all).size).toBe(253);
    expect(all).not.toContain('192.168.5.0');
    expect(all).not.toContain('192.168.5.1');
    expect(all).not.toContain('192.168.5.255');
    expect(all.every((ip) => ip.startsWith('192.168.5.'))).toBe(true);
  });
});
