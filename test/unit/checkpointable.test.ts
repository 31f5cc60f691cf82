import { describe, expect, it } from 'vitest';
import { canCheckpoint, runsAsRoot } from '../../core/checkpointable.js';
import { CAP_SYS_RESOURCE, hasCapability } from '../../runtime/host/caps.js';

describe('which jobs a host can checkpoint', () => {
  it.each([
    [null, true],
    ['root', true],
    ['0', true],
    ['root:root', true],
    ['0:100', true],
    ['runbox', false],
    ['1000', false],
    ['nobody:nogroup', false],
    ['rooty', false],
  ])('user %j runs as root: %j', (user, root) => {
    expect(runsAsRoot(user)).toBe(root);
  });

  it('a non-root job needs a host whose root has CAP_SYS_RESOURCE', () => {
    expect(canCheckpoint('runbox', { checkpointNonRoot: false })).toBe(false);
    expect(canCheckpoint('runbox', {})).toBe(false);
    expect(canCheckpoint('runbox', { checkpointNonRoot: true })).toBe(true);
    expect(canCheckpoint('root', { checkpointNonRoot: false })).toBe(true);
  });

  it('reads the effective capability set', () => {
    const status = (eff: string) => `Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t${eff}\n`;
    expect(hasCapability(CAP_SYS_RESOURCE, status('000001ffffffffff'))).toBe(true);
    expect(hasCapability(CAP_SYS_RESOURCE, status('000001fffeffffff'))).toBe(false); // bit 24 clear
    expect(hasCapability(CAP_SYS_RESOURCE, 'garbage')).toBe(false);
  });
});
