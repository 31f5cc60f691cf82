import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRunboxError } from '../../core/errors.js';
import { buildTemplate } from '../../runtime/templates/builder.js';
import { resolveTemplate, type TemplateRef } from '../../runtime/templates/store.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { canConnect, stopChild, waitFor } from '../helpers/net.js';
import { buildShared, copyRecipe, entries, log, TEMPLATES_DIR, tempDir, writeRecipe } from './helpers.js';

/**
 * apt inside a `debian` VPS, against a Debian repository of the test's own: one trivial .deb,
 * indexed by hand (Packages + Release), served by busybox httpd inside a network namespace this
 * test creates (tests talk to nothing else). The VPS (network "egress") installs it as root; the
 * template must not change. Also: an apt recipe naming a package that does not exist.
 */
const BUILD_TIMEOUT = 15 * 60_000;
const PORT = 8080;

let t: TestEngine;
let debian: TemplateRef;
let work: string;
let repo: { ns: string; address: string; remove: () => void };
let httpd: ChildProcess | undefined;

beforeAll(async () => {
  t = await testEngine('apt');
  await buildShared('debian');
  debian = await resolveTemplate(TEMPLATES_DIR, 'debian');
  work = await tempDir('apt');
  await makeRepo(path.join(work, 'repo'));
  repo = uplink();
  httpd = spawn('ip', ['netns', 'exec', repo.ns, 'busybox', 'httpd', '-f', '-p', String(PORT), '-h', path.join(work, 'repo')], { stdio: 'ignore' });
  await waitFor(() => canConnect(repo.address, PORT), 'the test apt repository');
}, BUILD_TIMEOUT);

afterAll(async () => {
  if (httpd) await stopChild(httpd);
  repo?.remove();
  await t?.cleanup();
  if (work) await fs.rm(work, { recursive: true, force: true });
});

describe('apt in a debian VPS', () => {
  it('installs a package as root over egress; the template stays unchanged', async () => {
    const marker = path.join(path.dirname(debian.rootfs), 'template.json');
    const script = [
      'set -e',
      // Only the test's repository: the VPS reaches nothing else (and has no DNS).
      'rm /etc/apt/sources.list.d/debian.sources',
      'apt-get -q update',
      'apt-get -q install -y hello-runbox',
      'hello-runbox',
      "dpkg-query -W -f='${Status}\\n' hello-runbox",
    ].join('\n');
    const r = await t.sh(script, {
      timeoutSec: 120,
      spec: { template: debian, network: 'egress', diskMb: 256 },
      inside: (vps) => vps.writeFile('/etc/apt/sources.list.d/local.list', Buffer.from(`deb [trusted=yes] http://${repo.address}:${PORT}/ ./\n`)),
    });
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('Setting up hello-runbox (1.0)');
    expect(r.stdout).toContain('hello from a local apt repository\ninstall ok installed\n');

    // The template: untouched (nothing newer than its template.json, no trace of the install).
    expect(execFileSync('find', [debian.rootfs, '-newer', marker, '-print', '-quit']).toString()).toBe('');
    expect(await fs.access(path.join(debian.rootfs, 'usr/bin/hello-runbox')).then(() => 'there', () => 'absent')).toBe('absent');
    expect(await fs.access(path.join(debian.rootfs, 'etc/apt/sources.list.d/debian.sources')).then(() => 'there', () => 'absent')).toBe('there');
    // A fresh VPS of the template has no trace of it either.
    const again = await t.sh('command -v hello-runbox || echo not-installed', { spec: { template: debian } });
    expect(again.stdout).toBe('not-installed\n');
  }, 180_000);

  it('an apt recipe with a package that does not exist: a clear error, nothing left', { timeout: BUILD_TIMEOUT }, async () => {
    // Recipes: the repository's debian byte for byte (same hash: the shared build is reused) and a child of it.
    const recipes = path.join(work, 'recipes');
    await copyRecipe(recipes, 'debian');
    const name = `zz-badpkg-${process.pid}`;
    await writeRecipe(recipes, name, { name, description: 'asks for a package Debian does not have', base: 'debian', builder: 'apt', packages: ['runbox-no-such-package'], smoke: ['true'] });
    const e = await buildTemplate(name, { recipesDir: recipes, templatesDir: TEMPLATES_DIR, log }).then(() => undefined, (err: unknown) => err);
    if (!isRunboxError(e)) throw new Error(`expected a RunboxError, got ${String(e)}`);
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toContain(`building template "${name}" failed in step "apt-get install"`);
    expect(e.message).toContain('Unable to locate package runbox-no-such-package');
    expect(await entries(TEMPLATES_DIR, name)).toEqual([]);
    expect(await fs.access(path.join(TEMPLATES_DIR, name)).then(() => 'exists', () => 'gone')).toBe('gone');
  });
});

/** A flat Debian repository with one package, hello-runbox 1.0 (Architecture: all). */
async function makeRepo(dir: string): Promise<void> {
  const pkg = path.join(path.dirname(dir), 'pkg');
  await fs.mkdir(path.join(pkg, 'DEBIAN'), { recursive: true });
  await fs.mkdir(path.join(pkg, 'usr/bin'), { recursive: true });
  const control = ['Package: hello-runbox', 'Version: 1.0', 'Architecture: all', 'Maintainer: runbox tests <tests@runbox.invalid>', 'Description: a trivial package for the runbox apt test'];
  await fs.writeFile(path.join(pkg, 'DEBIAN/control'), `${control.join('\n')}\n`);
  await fs.writeFile(path.join(pkg, 'usr/bin/hello-runbox'), '#!/bin/sh\necho hello from a local apt repository\n', { mode: 0o755 });
  await fs.mkdir(dir, { recursive: true });
  const deb = path.join(dir, 'hello-runbox_1.0_all.deb');
  execFileSync('dpkg-deb', ['--root-owner-group', '--build', pkg, deb], { stdio: 'ignore' });
  const bytes = await fs.readFile(deb);
  const packages = `${control.join('\n')}\nFilename: ./hello-runbox_1.0_all.deb\nSize: ${bytes.length}\nSHA256: ${sha256(bytes)}\n`;
  await fs.writeFile(path.join(dir, 'Packages'), packages);
  const release = `Date: ${new Date().toUTCString()}\nSHA256:\n ${sha256(Buffer.from(packages))} ${Buffer.byteLength(packages)} Packages\n`;
  await fs.writeFile(path.join(dir, 'Release'), release);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * A network namespace of the test's own, reached from the host over a veth pair, on an address
 * of the benchmarking range (198.18.0.0/15, RFC 2544: never a real host) that no other test uses.
 */
function uplink(): { ns: string; address: string; remove: () => void } {
  const k = process.pid % 250;
  const ns = `rbtpl-${process.pid}`;
  const hostIf = `rbtpl${process.pid}`.slice(0, 15);
  const run = (args: string[]) => execFileSync('ip', args);
  run(['netns', 'add', ns]);
  try {
    run(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    run(['addr', 'add', `198.18.${k}.1/30`, 'dev', hostIf]);
    run(['link', 'set', hostIf, 'up']);
    run(['-n', ns, 'addr', 'add', `198.18.${k}.2/30`, 'dev', 'eth0']);
    run(['-n', ns, 'link', 'set', 'eth0', 'up']);
    run(['-n', ns, 'link', 'set', 'lo', 'up']);
  } catch (e) {
    run(['netns', 'del', ns]);
    throw e;
  }
  return {
    ns,
    address: `198.18.${k}.2`,
    remove: () => {
      try {
        run(['link', 'del', hostIf]);
      } catch {
        /* gone with the namespace */
      }
      run(['netns', 'del', ns]);
    },
  };
}
