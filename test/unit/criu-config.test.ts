import { describe, expect, it } from 'vitest';
import { criuConfigText } from '../../runtime/checkpoint/criu-config.js';

describe('CRIU configuration file', () => {
  it('locks the network with nftables where CRIU can, one option per line without dashes', () => {
    const lines = criuConfigText({ nftablesLock: true }).split('\n').filter((l) => l && !l.startsWith('#'));
    expect(lines).toEqual(['network-lock nftables']);
  });

  it("sets nothing where CRIU cannot: CRIU's defaults apply", () => {
    const lines = criuConfigText({ nftablesLock: false }).split('\n').filter((l) => l && !l.startsWith('#'));
    expect(lines).toEqual([]);
  });
});
