import { describe, expect, it } from 'vitest';
import { vpsResolvConf } from '../../runtime/net/dns.js';

describe('vpsResolvConf', () => {
  it('keeps non-loopback nameservers with search and options', () => {
    expect(vpsResolvConf('nameserver 10.0.0.53\nsearch example.internal\noptions ndots:2\n')).toBe(
      "# written by runbox from the host's resolver configuration\nnameserver 10.0.0.53\nsearch example.internal\noptions ndots:2\n",
    );
  });

  it('skips loopback stubs and falls back to the next file', () => {
    expect(vpsResolvConf('nameserver 127.0.0.53\n', 'nameserver 192.0.2.1\n')).toMatch(/^nameserver 192\.0\.2\.1$/m);
    expect(vpsResolvConf('nameserver ::1\n', '')).toBeUndefined();
  });
});
