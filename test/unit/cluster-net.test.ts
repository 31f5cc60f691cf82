import { describe, expect, it } from 'vitest';
import { clusterNatScript } from '../../runtime/net/cluster-net.js';

describe('the cluster network', () => {
  it('masquerades what its hosts send beyond the cluster bridge, lets answers back in, and nothing else', () => {
    const s = clusterNatScript('runbox_cluster_abc', 'rbcabc', '10.99.0.0/24');
    expect(s).toMatch(/^table ip runbox_cluster_abc\ndelete table ip runbox_cluster_abc\n/); // replaces itself: idempotent
    expect(s).toContain('ip saddr 10.99.0.0/24 oifname != "rbcabc" masquerade');
    expect(s).toContain('iifname "rbcabc" oifname != "rbcabc" accept');
    expect(s).toContain('oifname "rbcabc" iifname != "rbcabc" ct state established,related accept');
    expect(s).toContain('oifname "rbcabc" iifname != "rbcabc" drop');
  });
});
