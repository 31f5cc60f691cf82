import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filterAptConf, parseDeb822, parseOneLine, primaryMirror, renderSources, templateSources } from '../../runtime/templates/apt-sources.js';
import { templateHash, treeSha256 } from '../../runtime/templates/hash.js';
import { formatProgress, parseAptLine, parseDebootstrapLine, parseSize } from '../../runtime/templates/progress.js';
import { chrootArgv, isolatedArgv } from '../../runtime/templates/sandbox.js';
import { tempDir } from './helpers.js';

describe('host apt sources', () => {
  const deb822 = [
    'Types: deb deb-src',
    '# a comment',
    'URIs: http://mirror.example/debian',
    'Suites: bookworm bookworm-updates',
    'Components: main contrib',
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
    '',
    'Types: deb',
    'URIs: http://mirror.example/debian-security',
    'Suites: bookworm-security',
    'Components: main',
    'Signed-By:',
    ' -----BEGIN PGP PUBLIC KEY BLOCK-----',
    ' .',
    ' -----END PGP PUBLIC KEY BLOCK-----',
    '',
    'Types: deb',
    'Enabled: no',
    'URIs: http://disabled.example/debian',
    'Suites: bookworm',
    'Components: main',
  ].join('\n');

  it('parses deb822 (multi-value fields, inline keys dropped, disabled entries skipped) and one-line sources', () => {
    expect(parseDeb822(deb822)).toEqual([
      { uri: 'http://mirror.example/debian', suites: ['bookworm', 'bookworm-updates'], components: ['main', 'contrib'], signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg' },
      { uri: 'http://mirror.example/debian-security', suites: ['bookworm-security'], components: ['main'], signedBy: undefined },
    ]);
    expect(parseOneLine('# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main # tail\ndeb-src http://m.example/debian trixie main\n')).toEqual([
      { uri: 'http://m.example/debian', suites: ['trixie'], components: ['main'], signedBy: '/k.gpg' },
    ]);
  });

  it('picks the suite and its -updates/-security companions, mapping from the host release when needed', () => {
    const host = parseDeb822(deb822);
    const same = templateSources(host, 'bookworm');
    expect(same.map((s) => s.suites)).toEqual([['bookworm', 'bookworm-updates'], ['bookworm-security']]);
    expect(primaryMirror(same, 'bookworm').uri).toBe('http://mirror.example/debian');
    const trixieHost = parseOneLine('deb http://m.example/debian trixie main\ndeb http://m.example/debian-security trixie-security main\n');
    expect(templateSources(trixieHost, 'bookworm', 'trixie').map((s) => [s.uri, s.suites])).toEqual([
      ['http://m.example/debian', ['bookworm']],
      ['http://m.example/debian-security', ['bookworm-security']],
    ]);
    expect(() => templateSources(trixieHost, 'bookworm')).toThrow(/no Debian mirror for "bookworm"/);
    expect(renderSources(same, '/usr/share/keyrings/debian-archive-keyring.gpg')).toContain(
      'Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg',
    );
  });

  it('copies only the apt settings that decide whether the mirror can be used', () => {
    const dump = ['APT::Architecture "amd64";', 'Acquire::Check-Valid-Until "false";', 'Acquire::http::Proxy "http://proxy:3128";', 'Acquire::Languages "";', 'Dir "/";'].join('\n');
    expect(filterAptConf(dump)).toMatch(/^\/\/ .*\nAcquire::Check-Valid-Until "false";\nAcquire::http::Proxy "http:\/\/proxy:3128";\n$/);
    expect(filterAptConf('Dir "/";')).toBe('');
  });
});

describe('progress parsing', () => {
  it('reads apt and debootstrap lines', () => {
    expect(parseSize('12.6 MB')).toBe(12_600_000);
    expect(parseSize('5448 B')).toBe(5448);
    expect(parseSize('1,5 kB')).toBe(1500);
    expect(parseAptLine('Get:1 http://m.example/debian-security bookworm-security/main amd64 libpython3.11-minimal amd64 3.11.2-6+deb12u9 [821 kB]')).toEqual({
      kind: 'get',
      bytes: 821_000,
      pkg: 'libpython3.11-minimal',
    });
    expect(parseAptLine('Get:8 http://m.example/debian-security bookworm-security/main amd64 Packages [379 kB]')).toEqual({ kind: 'get', bytes: 379_000 });
    expect(parseAptLine('Need to get 12.6 MB of archives.')).toEqual({ kind: 'need', bytes: 12_600_000 });
    expect(parseAptLine('Need to get 0 B/12.6 MB of archives.')).toEqual({ kind: 'need', bytes: 0 });
    expect(parseAptLine('Unpacking python3 (3.11.2-1+b1) ...')).toEqual({ kind: 'unpack', pkg: 'python3' });
    expect(parseAptLine('Reading package lists...')).toBeUndefined();
    expect(parseDebootstrapLine('I: Retrieving libc6 2.36-9+deb12u14')).toEqual({ kind: 'retrieve', pkg: 'libc6' });
    expect(parseDebootstrapLine('I: Retrieving InRelease ')).toBeUndefined();
    expect(parseDebootstrapLine('I: Installing core packages...')).toEqual({ kind: 'phase', message: 'Installing core packages...' });
    expect(parseDebootstrapLine('E: Couldn\'t find these debs: nope')).toEqual({ kind: 'error', message: 'Couldn\'t find these debs: nope' });
    expect(formatProgress({ template: 'python', hash: 'abc', step: 'apt-get install', packages: 3, downloadedBytes: 2_000_000, downloadTotalBytes: 4_000_000, rootfsBytes: 300_000_000 })).toBe(
      '[python abc] apt-get install: 3 packages, 2.0 MB of 4.0 MB downloaded, rootfs 300.0 MB',
    );
  });
});

describe('recipe hashes', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir('hash');
  });
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('cover paths, contents, symlinks and the executable bit, not the rest of the mode', async () => {
    await fs.mkdir(path.join(dir, 'sub'));
    await fs.writeFile(path.join(dir, 'a.sh'), 'echo a\n', { mode: 0o755 });
    await fs.writeFile(path.join(dir, 'sub/b'), 'b\n', { mode: 0o644 });
    await fs.symlink('a.sh', path.join(dir, 'link'));
    const h0 = await treeSha256(dir);
    expect(await treeSha256(dir)).toBe(h0);
    await fs.chmod(path.join(dir, 'sub/b'), 0o664); // group-writable: a different umask, same recipe
    expect(await treeSha256(dir)).toBe(h0);
    await fs.chmod(path.join(dir, 'sub/b'), 0o755);
    const hx = await treeSha256(dir);
    expect(hx).not.toBe(h0);
    await fs.chmod(path.join(dir, 'sub/b'), 0o644);
    await fs.writeFile(path.join(dir, 'sub/b'), 'B\n');
    expect(await treeSha256(dir)).not.toBe(h0);
    await fs.writeFile(path.join(dir, 'sub/b'), 'b\n');
    await fs.rm(path.join(dir, 'link'));
    await fs.symlink('sub/b', path.join(dir, 'link'));
    expect(await treeSha256(dir)).not.toBe(h0);

    expect(templateHash('t', { a: '1', b: '2' })).toBe(templateHash('t', { b: '2', a: '1' }));
    expect(templateHash('t', { a: '1' })).not.toBe(templateHash('t', { a: '2' }));
    expect(templateHash('t', {})).toMatch(/^[a-f0-9]{16}$/);
  });
});

describe('build sandbox argv', () => {
  it('passes the root and the command as arguments, never inside the script', () => {
    const argv = chrootArgv('/x/$(reboot)/rootfs', ['apt-get', 'install', '--', 'a;b'], { DEBIAN_FRONTEND: 'noninteractive' });
    expect(argv.slice(0, 4)).toEqual(['setpriv', '--pdeathsig', 'KILL', '--']);
    expect(argv).toContain('--kill-child');
    const script = argv[argv.indexOf('-c') + 1]!;
    expect(script).not.toContain('reboot');
    expect(argv.slice(argv.indexOf('-c') + 2)).toEqual(['runbox-chroot', '/x/$(reboot)/rootfs', 'apt-get', 'install', '--', 'a;b']);
    expect(argv).toContain('DEBIAN_FRONTEND=noninteractive');
    expect(isolatedArgv(['true'])).toContain('env');
  });
});
