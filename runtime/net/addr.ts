import { RunboxError } from '../../core/errors.js';

/** Pure IPv4 address arithmetic for the VPS address pool. */
export interface Cidr {
  base: number;
  prefix: number;
}

export function parseCidr(text: string): Cidr {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(text);
  if (!m) throw new RunboxError('invalid_argument', `invalid CIDR "${text}"`);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 29) throw new RunboxError('invalid_argument', `CIDR prefix /${prefix} out of range (8..29)`);
  const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0;
  return { base: (ipToInt(m[1]!) & mask) >>> 0, prefix };
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new RunboxError('invalid_argument', `invalid IPv4 address "${ip}"`);
  }
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Number of VPS addresses: all hosts minus network, broadcast and the gateway (.1). */
export function poolSize(c: Cidr): number {
  return 2 ** (32 - c.prefix) - 3;
}

/** The gateway (the host's bridge address) is the first host address. */
export function gateway(c: Cidr): string {
  return intToIp(c.base + 1);
}

/** VPS address number i (0-based) of the pool. */
export function vpsAddress(c: Cidr, i: number): string {
  if (i < 0 || i >= poolSize(c)) throw new RunboxError('internal', `address index ${i} outside the pool`);
  return intToIp(c.base + 2 + i);
}
