import { describe, expect, it } from 'vitest';
import { parseLdd, SANDBOX_SCRIPT, sandboxArgv } from '../../runtime/host/sandbox.js';

const LDD_NFT = [
  '\tlinux-vdso.so.1 (0x00007f4284c8a000)',
  '\tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f4284b97000)',
  '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f428497b000)',
  '\t/lib64/ld-linux-x86-64.so.2 (0x00007f4284c8c000)',
].join('\n');

describe('sandbox: ldd', () => {
  it('lists the libraries and the loader, not the vdso', () => {
    expect(parseLdd(LDD_NFT)).toEqual(['/lib/x86_64-linux-gnu/libnftables.so.1', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']);
    expect(parseLdd('')).toEqual([]);
  });
  it('fails on a missing library', () => {
    expect(() => parseLdd('\tlibfoo.so.1 => not found')).toThrow(expect.objectContaining({ code: 'host_unsupported' }));
  });
});

describe('sandbox: argv', () => {
  const files = ['/usr/sbin/nft', '/lib/x86_64-linux-gnu/libc.so.6'];
  it('runs a constant script in a private mount namespace, values as positional arguments only', () => {
    const argv = sandboxArgv({ argv: ['/usr/sbin/nft', '-j', '-f', '/input'], netns: 'rbX-vps1', caps: ['net_admin'] }, files, '/usr/bin/setpriv');
    expect(argv).toEqual([
      'unshare', '--mount', '--propagation', 'private', '--fork', '--kill-child',
      '--', 'sh', '-c', SANDBOX_SCRIPT, 'sandbox',
      '/tmp', '/run/netns/rbX-vps1', ...files, '--',
      '/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--no-new-privs',
      '--inh-caps=-all,+net_admin', '--ambient-caps=-all,+net_admin', '--bounding-set=-all,+net_admin',
      '--', '/usr/sbin/nft', '-j', '-f', '/input',
    ]);
  });

  it('stays in the host netns when none is named, and keeps no capability unless asked', () => {
    const argv = sandboxArgv({ argv: ['/bin/busybox', 'id'] }, ['/bin/busybox'], '/usr/bin/setpriv');
    expect(argv.slice(11, 13)).toEqual(['/tmp', '-']);
    expect(argv).toContain('--bounding-set=-all');
  });

  it('the script mounts a size-capped tmpfs, copies only the given files, makes it read-only, then joins the netns and chroots', () => {
    const lines = SANDBOX_SCRIPT.split('\n');
    expect(lines[0]).toBe('set -eu');
    expect(SANDBOX_SCRIPT).toMatch(/mount -t tmpfs -o mode=0755,size=64m,nosuid,nodev tmpfs "\$root"/);
    const order = ['mount -t tmpfs', 'cat > ', 'cp -L --parents', 'remount,ro', 'exec nsenter --net="$net" -- chroot "$root" "$@"'].map((s) => SANDBOX_SCRIPT.indexOf(s));
    expect(order.every((i, k) => i >= 0 && (k === 0 || i > order[k - 1]!))).toBe(true);
    expect(SANDBOX_SCRIPT).not.toMatch(/proc|\/dev|\/etc/);
  });

  it.each([
    ['a relative tool', { argv: ['nft'] }, files],
    ['a netns name with a slash', { argv: ['/usr/sbin/nft'], netns: '../../proc/1/ns/net' }, files],
    ['a netns name ..', { argv: ['/usr/sbin/nft'], netns: '..' }, files],
    ['a capability list injection', { argv: ['/usr/sbin/nft'], caps: ['net_admin,+sys_admin'] }, files],
    ['a file with a blank', { argv: ['/usr/sbin/nft'] }, ['/usr/lib/a b.so']],
    ['a file with a glob character', { argv: ['/usr/sbin/nft'] }, ['/usr/lib/*']],
    ['a file with ..', { argv: ['/usr/sbin/nft'] }, ['/usr/lib/../../etc/shadow']],
    ['a file under the mount point', { argv: ['/usr/sbin/nft'] }, ['/tmp/x.so']],
    ['the -- separator as a file', { argv: ['/usr/sbin/nft'] }, ['--']],
  ])('refuses %s', (_what, spec, fs) => {
    expect(() => sandboxArgv(spec, fs, '/usr/bin/setpriv')).toThrow(expect.objectContaining({ code: 'internal' }));
  });
});
