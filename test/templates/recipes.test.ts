import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readHostSources, templateSources } from '../../runtime/templates/apt-sources.js';
import type { BuildProgress } from '../../runtime/templates/progress.js';
import { loadRecipe } from '../../runtime/templates/recipes.js';
import { resolveTemplate, type TemplateRef } from '../../runtime/templates/store.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { buildShared, RECIPES_DIR, TEMPLATES_DIR } from './helpers.js';

/**
 * Every recipe of the repository: built for real (cached in the shared templates dir between
 * runs), then its smoke command and a small program of its language run in a fresh VPS as the
 * template's default user. A fresh machine builds debian (~45 s), python (~20 s), node (~70 s) and
 * build (~25 s) here once.
 */
const BUILD_TIMEOUT = 15 * 60_000;

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('recipes');
});
afterAll(async () => {
  await t?.cleanup();
});

async function smoke(name: string): Promise<{ ref: TemplateRef; out: string }> {
  const { manifest } = await loadRecipe(RECIPES_DIR, name);
  const ref = await resolveTemplate(TEMPLATES_DIR, name);
  const r = await t.run(manifest.smoke, { user: manifest.defaultUser, workdir: manifest.workdir, env: manifest.env, spec: { template: ref } });
  expect(r.error).toBeUndefined();
  expect(r.exitCode, `${name} smoke: ${r.stdout}${r.stderr}`).toBe(0);
  return { ref, out: r.stdout };
}

describe('template recipes', () => {
  it('base: builds and passes its smoke test', { timeout: BUILD_TIMEOUT }, async () => {
    const info = await buildShared('base');
    expect(info).toMatchObject({ name: 'base', source: 'recipe', build: { builder: 'script' } });
    expect((await smoke('base')).out).toBe('ok\n');
  });

  it('debian: apt, ca-certificates, the runbox user, the host mirror', { timeout: BUILD_TIMEOUT }, async () => {
    const progress: BuildProgress[] = [];
    const info = await buildShared('debian', progress);
    if (info.fresh) {
      // A real build reports its steps and what it downloaded.
      expect(progress.map((p) => p.step)).toEqual(expect.arrayContaining(['debootstrap', 'configure', 'customize.sh', 'smoke', 'cleanup', 'done']));
      expect(Math.max(...progress.map((p) => p.downloadedBytes ?? 0))).toBeGreaterThan(10e6);
    }
    expect(info.defaults).toMatchObject({ user: 'root', limits: { diskMb: 1024 } });
    const { out } = await smoke('debian');
    expect(out).toMatch(/^apt \d/m);
    expect(out).toMatch(/uid=1000\(runbox\) gid=1000\(runbox\)/);

    const ref = await resolveTemplate(TEMPLATES_DIR, 'debian');
    const mirror = templateSources(await readHostSources(), 'bookworm')[0]!.uri;
    const r = await t.sh('cat /etc/apt/sources.list.d/*.sources; test ! -e /etc/apt/sources.list && echo no-sources-list; ls /etc/ssl/certs | grep -c pem; ls /var/lib/apt/lists', { spec: { template: ref } });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain(`URIs: ${mirror}`);
    expect(r.stdout).toContain('Suites: bookworm');
    expect(r.stdout).toContain('no-sources-list');
    expect(Number(/^(\d+)$/m.exec(r.stdout)?.[1])).toBeGreaterThan(50); // CA certificates
    // No build leftovers in the template: no package lists, no .debs, no host resolv.conf.
    const root = ref.rootfs;
    expect((await fs.readdir(path.join(root, 'var/cache/apt/archives'))).filter((f) => f.endsWith('.deb'))).toEqual([]);
    expect(await fs.readFile(path.join(root, 'etc/resolv.conf'), 'utf8')).toBe('');
    expect(await fs.access(path.join(root, 'usr/sbin/policy-rc.d')).then(() => true)).toBe(true);
  });

  it('python: runs a Python program as runbox, with a venv', { timeout: BUILD_TIMEOUT }, async () => {
    const info = await buildShared('python');
    expect(info.base).toEqual({ name: 'debian', hash: (await resolveTemplate(TEMPLATES_DIR, 'debian')).hash });
    const { ref, out } = await smoke('python');
    expect(out).toBe('4\n');
    const program = 'import json, statistics, sys\nprint(json.dumps({"mean": statistics.mean([1, 2, 3, 4]), "py": sys.version_info[0]}))\n';
    const r = await t.run(['sh', '-c', 'python3 -m venv --without-pip /tmp/venv && /tmp/venv/bin/python app.py && pip3 --version >/dev/null && id -un'], {
      user: 'runbox',
      workdir: '/home/runbox',
      spec: { template: ref },
      inside: (vps) => vps.writeFile('/home/runbox/app.py', Buffer.from(program), 0o644, 'runbox'),
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('{"mean": 2.5, "py": 3}\nrunbox\n');
  });

  it('node: runs a JavaScript program, npm is there', { timeout: BUILD_TIMEOUT }, async () => {
    await buildShared('node');
    const { ref, out } = await smoke('node');
    expect(out).toBe('4\n');
    const program = "const crypto = require('node:crypto');\nconsole.log(crypto.createHash('sha256').update('runbox').digest('hex').slice(0, 8), [1, 2, 3].map((x) => x * 2).join(','));\n";
    const r = await t.run(['sh', '-c', 'node app.js && npm --version >/dev/null && echo npm-ok'], {
      user: 'runbox',
      workdir: '/home/runbox',
      env: { HOME: '/home/runbox' },
      spec: { template: ref },
      inside: (vps) => vps.writeFile('/home/runbox/app.js', Buffer.from(program), 0o644, 'runbox'),
    });
    expect(r.stdout).toBe('8712c018 2,4,6\nnpm-ok\n');
  });

  it('build: compiles and runs C with gcc and make; git works', { timeout: BUILD_TIMEOUT }, async () => {
    await buildShared('build');
    const { ref, out } = await smoke('build');
    expect(out).toBe('4\n');
    const makefile = 'hello: hello.c\n\tcc -Wall -O2 -o $@ $<\n';
    const source = '#include <stdio.h>\nint main(void) { printf("hello from %s\\n", "make"); return 0; }\n';
    const r = await t.run(['sh', '-c', 'cd /src && make -s && ./hello && git init -q /tmp/repo && git --version | cut -d" " -f1-2'], {
      spec: { template: ref },
      inside: async (vps) => {
        await vps.writeFile('/src/Makefile', Buffer.from(makefile));
        await vps.writeFile('/src/hello.c', Buffer.from(source));
      },
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hello from make\ngit version\n');
  });
});
