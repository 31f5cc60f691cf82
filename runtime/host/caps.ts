import fs from 'node:fs';

/** Linux capability numbers runbox asks about (linux/capability.h). */
export const CAP_SYS_RESOURCE = 24;

/** Whether this process has `cap` in its effective set (/proc/self/status CapEff). */
export function hasCapability(cap: number, status = readStatus()): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  if (!m) return false;
  return ((BigInt(`0x${m[1]}`) >> BigInt(cap)) & 1n) === 1n;
}

function readStatus(): string {
  try {
    return fs.readFileSync('/proc/self/status', 'utf8');
  } catch {
    return '';
  }
}
