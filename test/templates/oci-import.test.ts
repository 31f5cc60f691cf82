import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRunboxError } from '../../core/errors.js';
import { REPO_ROOT } from '../../core/config.js';
import { TemplateInfoSchema } from '../../core/template.js';
import { importOciTemplate, type OciImportResult } from '../../runtime/templates/oci-import.js';
import { resolveTemplate } from '../../runtime/templates/store.js';
import { TEMPLATES_DIR, testEngine, type TestEngine } from '../helpers/engine.js';
import { buildOciImage, wrapInIndex, writeDockerSave, writeOciArchive, type BuiltImage, type RawEntry } from '../helpers/oci-image.js';

/**
 * OCI image import: images are built by hand in the test (test/helpers/oci-image.ts), imported
 * into a templates dir of this file's own, and run in VPSs of a test engine.
 */
const execFileP = promisify(execFile);
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

let root: string;
let tdir: string;
let t: TestEngine;
let img: BuiltImage;
let first: OciImportResult;

const imp = (name: string, p: string, extra: { ref?: string } = {}) => importOciTemplate({ name, path: p, templatesDir: tdir, ...extra });

async function mkdirs(base: string, files: Record<string, string | { data: string; mode: number }>): Promise<string> {
  await fs.mkdir(base, { recursive: true });
  await fs.chmod(base, 0o755); // the layer's "./" entry becomes the rootfs's own mode
  for (const [rel, v] of Object.entries(files)) {
    const p = path.join(base, rel);
    await fs.mkdir(path.dirname(p), { recursive: true, mode: 0o755 });
    if (typeof v === 'string') await fs.writeFile(p, v, { mode: 0o644 });
    else await fs.writeFile(p, v.data, { mode: v.mode });
    await fs.chmod(p, typeof v === 'string' ? 0o644 : v.mode);
  }
  return base;
}

/** Type, mode, size and link target of every path of a tree, sorted: equal trees, equal listings. */
async function listing(dir: string): Promise<string> {
  const { stdout } = await execFileP('find', [dir, '-mindepth', '1', '-printf', '%P %y %m %s %U:%G %l\n'], { maxBuffer: 64 << 20 });
  return stdout.split('\n').sort().join('\n');
}

const exists = (p: string) => fs.lstat(p).then(() => true, () => false);

async function expectInvalid(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e, 'the import should have failed').toBeDefined();
  expect(isRunboxError(e, 'invalid_argument'), `invalid_argument expected, got ${String(e)}`).toBe(true);
  expect((e as Error).message).toMatch(re);
}

/** Nothing of a failed import is left: no template dir (or an empty one), no work dir. */
async function expectNothingLeft(name: string): Promise<void> {
  const entries = await fs.readdir(path.join(tdir, name)).catch(() => [] as string[]);
  expect(entries).toEqual([]);
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-oci-'));
  tdir = path.join(root, 'templates');
  const base = await resolveTemplate(TEMPLATES_DIR, 'base');
  // Layer 1: the base template's busybox rootfs (so the image has a shell).
  // Layer 2: /etc/issue and /opt/old/{a,b}. Layer 3: the app, a whiteout of /etc/issue, an opaque
  // whiteout of /opt/old (a and b gone, c new).
  const l2 = await mkdirs(path.join(root, 'l2'), { 'etc/issue': 'Welcome (whited out later)\n', 'opt/old/a': 'a\n', 'opt/old/b': 'b\n' });
  const l3 = await mkdirs(path.join(root, 'l3'), {
    'app/hello.sh': { data: '#!/bin/sh\necho "$GREETING $* as $(id -un) in $(pwd)"\n', mode: 0o755 },
    'etc/motd': 'motd from layer 3\n',
    'etc/.wh.issue': '',
    'opt/old/.wh..wh..opq': '',
    'opt/old/c': 'c\n',
  });
  img = await buildOciImage(path.join(root, 'img'), {
    layers: [{ dir: base.rootfs }, { dir: l2 }, { dir: l3 }],
    config: {
      User: 'runbox',
      Env: [`PATH=${PATH}`, 'GREETING=hello from an OCI image'],
      WorkingDir: '/app',
      Entrypoint: ['/app/hello.sh'],
      Cmd: ['world'],
    },
  });
  t = await testEngine('oci');
  first = await imp('app', img.layout);
});

afterAll(async () => {
  await t?.cleanup();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

describe('importing an OCI image layout', () => {
  it('applies the layers in order with their whiteouts, and the template runs in a VPS', async () => {
    expect(first.created).toBe(true);
    expect(first.hash).toBe(img.manifestDigest.slice(7, 23));
    expect(first.digest).toBe(img.manifestDigest);
    const ref = await resolveTemplate(tdir, 'app');
    expect(ref).toEqual({ name: 'app', hash: first.hash, rootfs: first.rootfs });

    const rootfs = ref.rootfs;
    expect(await exists(path.join(rootfs, 'bin/busybox'))).toBe(true); // layer 1
    expect(await exists(path.join(rootfs, 'etc/issue'))).toBe(false); // whited out by layer 3
    expect(await exists(path.join(rootfs, 'etc/.wh.issue'))).toBe(false);
    expect((await fs.readdir(path.join(rootfs, 'opt/old'))).sort()).toEqual(['c']); // opaque dir
    expect(await fs.readFile(path.join(rootfs, 'etc/motd'), 'utf8')).toBe('motd from layer 3\n');
    expect(await fs.readFile(path.join(rootfs, 'etc/passwd'), 'utf8')).toMatch(/^runbox:x:1000:/m); // the image's own
    expect((await fs.stat(path.join(rootfs, 'tmp'))).mode & 0o7777).toBe(0o1777);
    for (const d of ['proc', 'sys', 'dev', '.runbox']) expect((await fs.lstat(path.join(rootfs, d))).isDirectory()).toBe(true);

    // Run as the image says: entrypoint + cmd, its user, env and workdir.
    const d = first.info.defaults;
    const r = await t.run([...d.entrypoint!, ...d.cmd!], { env: d.env, user: d.user, workdir: d.workdir, spec: { template: ref } });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hello from an OCI image world as runbox in /app\n');
    expect(r.exitCode).toBe(0);
    const s = await t.sh('test ! -e /etc/issue && ls /opt/old && cat /etc/motd && stat -c %a /tmp', { spec: { template: ref } });
    expect(s.stdout).toBe('c\nmotd from layer 3\n1777\n');
  });

  it('records the image config as the template defaults in template.json', async () => {
    const dir = path.join(tdir, 'app', first.hash);
    const info = TemplateInfoSchema.parse(JSON.parse(await fs.readFile(path.join(dir, 'template.json'), 'utf8')));
    expect(info).toMatchObject({ name: 'app', hash: first.hash, source: 'oci' });
    expect(info.defaults).toEqual({
      user: 'runbox',
      env: { PATH, GREETING: 'hello from an OCI image' },
      workdir: '/app',
      entrypoint: ['/app/hello.sh'],
      cmd: ['world'],
      limits: {},
    });
    expect(info.sizeBytes).toBeGreaterThan(1_000_000);
    expect(info.description).toContain(img.manifestDigest);
    // Host users cannot reach an image's setuid binaries or device nodes.
    expect((await fs.stat(dir)).mode & 0o777).toBe(0o700);
    expect((await fs.readdir(path.join(tdir, 'app'))).sort()).toEqual([first.hash, 'current'].sort());
  });

  it('importing the same image again is a no-op (same version, nothing rebuilt)', async () => {
    const before = await fs.stat(path.join(first.rootfs));
    const started = Date.now();
    const again = await imp('app', img.layout);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(again.created).toBe(false);
    expect(again.hash).toBe(first.hash);
    expect(again.info).toEqual(first.info);
    expect((await fs.stat(first.rootfs)).ino).toBe(before.ino);
    expect((await fs.readdir(path.join(tdir, 'app'))).sort()).toEqual([first.hash, 'current'].sort());
  });

  it('two concurrent imports of one image both succeed with one result', async () => {
    const [a, b] = await Promise.all([imp('twice', img.layout), imp('twice', img.layout)]);
    expect(a.hash).toBe(first.hash);
    expect(b.hash).toBe(first.hash);
    expect((await fs.readdir(path.join(tdir, 'twice'))).sort()).toEqual([first.hash, 'current'].sort());
  });

  it('picks the host platform from a multi-platform index, and refuses an index without it', async () => {
    const multi = await buildOciImage(path.join(root, 'multi'), { layers: [{ dir: path.join(root, 'l2') }] });
    await wrapInIndex(multi, { os: 'linux', architecture: 'amd64' });
    const r = await imp('multi', multi.layout);
    expect(r.hash).toBe(multi.manifestDigest.slice(7, 23));
    expect(await fs.readFile(path.join(r.rootfs, 'opt/old/a'), 'utf8')).toBe('a\n');

    const arm = await buildOciImage(path.join(root, 'arm'), { layers: [{ dir: path.join(root, 'l2') }], architecture: 'arm64' });
    await wrapInIndex(arm, { os: 'linux', architecture: 'arm64' });
    await expectInvalid(imp('arm', arm.layout), /no linux\/amd64 image \(platforms: linux\/arm64\)/);
    await expectNothingLeft('arm');
  });

  it('gives an image without /etc/passwd one, and the VPS runs (the agent is static)', async () => {
    const bare = await mkdirs(path.join(root, 'bare'), {});
    await fs.mkdir(path.join(bare, 'bin'), { mode: 0o755 });
    await fs.copyFile('/bin/busybox', path.join(bare, 'bin/busybox'));
    await fs.chmod(path.join(bare, 'bin/busybox'), 0o755);
    const bareImg = await buildOciImage(path.join(root, 'bare-img'), { layers: [{ dir: bare }] });
    const r = await imp('bare', bareImg.layout);
    expect(await fs.readFile(path.join(r.rootfs, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0:/);
    const ref = await resolveTemplate(tdir, 'bare');
    const out = await t.run(['/bin/busybox', 'sh', '-c', '/bin/busybox id -un; /bin/busybox stat -c %a /tmp'], { spec: { template: ref } });
    expect(out.stdout).toBe('root\n1777\n');
  });
});

describe('importing a docker save tarball and an OCI layout tar', () => {
  it('a docker save tarball gives the same content and defaults; gzipped, the same version', async () => {
    const tar = path.join(root, 'docker-save.tar');
    await writeDockerSave(img, tar);
    const r = await imp('app-docker', tar);
    expect(r.created).toBe(true);
    expect(await listing(r.rootfs)).toBe(await listing(first.rootfs));
    expect(r.info.defaults).toEqual(first.info.defaults);
    const ref = await resolveTemplate(tdir, 'app-docker');
    const d = r.info.defaults;
    const out = await t.run([...d.entrypoint!, ...d.cmd!], { env: d.env, user: d.user, workdir: d.workdir, spec: { template: ref } });
    expect(out.stdout).toBe('hello from an OCI image world as runbox in /app\n');

    const gz = path.join(root, 'docker-save.tar.gz');
    await fs.writeFile(gz, zlib.gzipSync(await fs.readFile(tar)));
    const again = await imp('app-docker', gz);
    expect(again).toMatchObject({ created: false, hash: r.hash });
    expect((await fs.readdir(path.join(tdir, 'app-docker'))).sort()).toEqual([r.hash, 'current'].sort());
  });

  it('picks an image of a docker save tarball by --ref', async () => {
    const tar = path.join(root, 'docker-save-tagged.tar');
    await writeDockerSave(img, tar, 'example.org/team/app:v1');
    expect((await imp('tagged', tar, { ref: 'example.org/team/app:v1' })).created).toBe(true);
    await expectInvalid(imp('tagged2', tar, { ref: 'other:v2' }), /no image tagged "other:v2" \(tags: example.org\/team\/app:v1\)/);
  });

  it('an OCI layout tar: the image is taken, links and ../ or absolute members are ignored', async () => {
    const outside = path.join(root, 'outside-archive');
    await fs.mkdir(outside);
    const tag = `${process.pid}-${Date.now()}`;
    const evil: RawEntry[] = [
      { name: `../escape-archive-dotdot-${tag}` , data: 'pwned' },
      { name: `/etc/escape-archive-abs-${tag}`, data: 'pwned' },
      { name: 'lnk', type: 'symlink', linkname: outside },
      { name: `lnk/escape-archive-sym-${tag}`, data: 'pwned' },
      { name: 'blobs', type: 'symlink', linkname: outside },
    ];
    const tar = path.join(root, 'layout.tar');
    await writeOciArchive(img, tar, evil);
    const r = await imp('app-archive', tar);
    expect(r.hash).toBe(first.hash); // the same manifest: the same version
    expect(await listing(r.rootfs)).toBe(await listing(first.rootfs));
    expect(await fs.readdir(outside)).toEqual([]);
    expect(await exists(`/etc/escape-archive-abs-${tag}`)).toBe(false);
    for (const dir of [root, tdir, path.join(tdir, 'app-archive'), path.dirname(root)]) {
      expect((await fs.readdir(dir)).filter((n) => n.includes('escape-archive'))).toEqual([]);
    }
  });
});

describe('bad input', () => {
  it('refuses an invalid template name, creating nothing', async () => {
    for (const name of ['Bad', '../x', '.hidden', '', 'a/b', 'x'.repeat(65)]) {
      await expectInvalid(imp(name, img.layout), /invalid template name/);
    }
    expect((await fs.readdir(tdir)).filter((n) => !n.startsWith('app') && !['twice', 'multi', 'bare', 'tagged'].includes(n))).toEqual([]);
  });

  it('refuses a corrupted (truncated) tarball with a clear error, leaving nothing behind', async () => {
    const tar = path.join(root, 'docker-save.tar');
    await writeDockerSave(img, tar);
    const data = await fs.readFile(tar);
    const cut = path.join(root, 'truncated.tar');
    await fs.writeFile(cut, data.subarray(0, Math.floor(data.length / 2)));
    const tmpLeftovers = async () => (await fs.readdir('/var/tmp')).filter((n) => /^(oci|docker-tarfile|storage)/.test(n));
    const varTmp = await tmpLeftovers();
    await expectInvalid(imp('broken', cut), /corrupted or truncated tarball/);
    await expectNothingLeft('broken');

    const gz = path.join(root, 'truncated.tar.gz');
    await fs.writeFile(gz, zlib.gzipSync(data).subarray(0, 5000));
    await expectInvalid(imp('broken', gz), /corrupted gzip data/);
    await expectNothingLeft('broken');

    const junk = path.join(root, 'junk.bin');
    await fs.writeFile(junk, Buffer.alloc(4096, 'x'));
    await expectInvalid(imp('broken', junk), /not a tar archive/);
    await expectNothingLeft('broken');
    expect(await tmpLeftovers()).toEqual(varTmp); // no skopeo leftovers either
  });

  it('refuses a layer whose content does not match its digest, and a malformed manifest or index', async () => {
    const copy = path.join(root, 'corrupt-layer');
    await fs.cp(img.layout, copy, { recursive: true });
    const layer = path.join(copy, 'blobs/sha256', img.layers[2]!.digest.slice(7));
    const bytes = await fs.readFile(layer);
    bytes[bytes.length - 12] = bytes[bytes.length - 12]! ^ 0xff; // inside the gzip data
    await fs.writeFile(layer, bytes);
    await expectInvalid(imp('broken', copy), /cannot unpack the image: .*(digest mismatch|checksum|invalid|corrupt)/i);
    await expectNothingLeft('broken');

    const badManifest = path.join(root, 'bad-manifest');
    await fs.cp(img.layout, badManifest, { recursive: true });
    await fs.writeFile(path.join(badManifest, 'blobs/sha256', img.manifestDigest.slice(7)), '{"schemaVersion": 2, "layers": "nope"}');
    await expectInvalid(imp('broken', badManifest), new RegExp(`blob ${img.manifestDigest} is corrupted`));
    await expectNothingLeft('broken');

    await fs.writeFile(path.join(badManifest, 'index.json'), '{"manifests": [');
    await expectInvalid(imp('broken', badManifest), /index.json is malformed/);
    await expectNothingLeft('broken');

    await expectInvalid(imp('broken', REPO_ROOT), /not an OCI image layout/);
    await expectInvalid(imp('broken', path.join(root, 'no-such-file')), /no such image/);
    await expectNothingLeft('broken');
  });

  it('path traversal entries in a layer never write outside the rootfs', async () => {
    const outside = path.join(root, 'outside');
    await fs.mkdir(outside);
    await fs.writeFile(path.join(outside, 'target'), 'keep\n');
    const tag = `${process.pid}-${Date.now()}`;
    const trav = await buildOciImage(path.join(root, 'trav'), {
      layers: [
        { entries: [{ name: 'etc/', type: 'dir' }, { name: 'etc/hostname', data: 'x\n' }, { name: 'lnk', type: 'symlink', linkname: outside }] },
        {
          entries: [
            { name: `../escape-dotdot-${tag}`, data: 'pwned' },
            { name: `etc/../../escape-dotdot2-${tag}`, data: 'pwned' },
            { name: `/etc/escape-abs-${tag}`, data: 'pwned' },
            { name: `lnk/escape-sym-${tag}`, data: 'pwned' }, // through a symlink of an earlier layer
            { name: 'rel', type: 'symlink', linkname: `../../../../../../../..${outside}` },
            { name: `rel/escape-rel-${tag}`, data: 'pwned' }, // through a symlink of the same layer
            { name: 'lnk2', type: 'symlink', linkname: path.join(outside, 'target') },
            { name: 'lnk2', data: 'replaced' }, // a file over a symlink to an outside file
            { name: 'hl', type: 'hardlink', linkname: '/etc/hostname' }, // the rootfs's, not the host's
          ],
        },
      ],
    });
    const hostHostname = await fs.stat('/etc/hostname');
    const r = await imp('trav', trav.layout).catch((e: unknown) => e);

    // Nothing outside: not in the dirs above the rootfs, not in the host's /etc, not through links.
    expect(await fs.readdir(outside)).toEqual(['target']);
    expect(await fs.readFile(path.join(outside, 'target'), 'utf8')).toBe('keep\n');
    expect(await exists(`/etc/escape-abs-${tag}`)).toBe(false);
    expect((await fs.stat('/etc/hostname')).nlink).toBe(hostHostname.nlink);
    for (const dir of [root, tdir, path.join(tdir, 'trav'), path.dirname(root), '/']) {
      expect((await fs.readdir(dir)).filter((n) => n.includes(tag))).toEqual([]);
    }
    // umoci contains every entry inside the rootfs (verified behaviour; see docs/OCI-IMPORT.md).
    if (isRunboxError(r)) {
      await expectNothingLeft('trav');
      return;
    }
    const rootfs = (r as OciImportResult).rootfs;
    expect(await exists(path.join(rootfs, `escape-dotdot-${tag}`))).toBe(true);
    expect(await exists(path.join(rootfs, `escape-dotdot2-${tag}`))).toBe(true);
    expect(await exists(path.join(rootfs, `etc/escape-abs-${tag}`))).toBe(true);
    expect(await exists(path.join(rootfs, outside.slice(1), `escape-sym-${tag}`))).toBe(true);
    expect(await exists(path.join(rootfs, outside.slice(1), `escape-rel-${tag}`))).toBe(true);
    expect(await fs.readFile(path.join(rootfs, 'lnk2'), 'utf8')).toBe('replaced');
    expect((await fs.stat(path.join(rootfs, 'hl'))).ino).toBe((await fs.stat(path.join(rootfs, 'etc/hostname'))).ino);
  });
});
