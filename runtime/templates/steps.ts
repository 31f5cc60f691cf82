import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { exec } from '../exec.js';
import { parseAptLine, parseDebootstrapLine, type BuildProgress } from './progress.js';
import { chrootArgv, isolatedArgv, treeBytes } from './sandbox.js';

/**
 * The steps builders are made of. Each runs its tool in the build sandbox (see sandbox.ts), logs
 * its output at debug level, reports progress, and fails with the tool's last lines.
 */
export interface StepContext {
  template: string;
  hash: string;
  /** The rootfs being built (inside the build dir). */
  root: string;
  log: Logger;
  progress: (p: Omit<BuildProgress, 'template' | 'hash'>) => void;
}

/** Keyring inside a Debian template (package debian-archive-keyring, which apt depends on). */
export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

const STEP_TIMEOUT_MS = 30 * 60_000;

/**
 * Runs argv, feeding each output line to `onLine` and the debug log; keeps the last lines for the
 * error. While it runs, the rootfs size is sampled every 2 s (bytes installed so far).
 */
async function runStep(
  ctx: StepContext,
  step: string,
  argv: string[],
  opts: { onLine?: (line: string) => void; sample?: () => Promise<Omit<BuildProgress, 'template' | 'hash' | 'step'>> } = {},
): Promise<void> {
  const tail: string[] = [];
  const log = ctx.log.child({ step });
  let sampling: NodeJS.Timeout | undefined;
  if (opts.sample) {
    const sample = opts.sample;
    let busy = false;
    sampling = setInterval(() => {
      if (busy) return;
      busy = true;
      void sample()
        .then((p) => ctx.progress({ step, ...p }))
        .catch(() => undefined)
        .finally(() => (busy = false));
    }, 2000);
  }
  try {
    const r = await exec(argv, {
      timeoutMs: STEP_TIMEOUT_MS,
      onLine: (_s, line) => {
        tail.push(line);
        if (tail.length > 40) tail.shift();
        log.debug({ line }, 'build output');
        opts.onLine?.(line);
      },
    });
    if (r.code !== 0) throw stepFailed(ctx, step, r.code ?? r.signal, tail);
  } finally {
    clearInterval(sampling);
  }
}

function stepFailed(ctx: StepContext, step: string, status: number | string | null, tail: string[]): RunboxError {
  const errors = tail.filter((l) => /^(E:|ERROR|error:|.*: ERROR:)/.test(l) || /Unable to locate package|has no installation candidate/.test(l));
  const detail = (errors.length ? errors : tail.slice(-8)).slice(-8).join(' | ');
  // A package that does not exist is the recipe's fault: retrying will not help.
  const recipeFault = tail.some((l) => /Unable to locate package|has no installation candidate|Couldn't find any package/.test(l));
  return new RunboxError(
    recipeFault ? 'invalid_argument' : 'unavailable',
    `building template "${ctx.template}" failed in step "${step}" (exit ${status}): ${detail || 'no output'}`,
    { meta: { template: ctx.template, hash: ctx.hash, step, output: tail.slice(-10) } },
  );
}

/** builder "script": `bash build.sh ROOT`, with the manifest's host inputs in its environment. */
export async function scriptBuild(ctx: StepContext, recipeDir: string, hostInputs: Record<string, string>): Promise<void> {
  ctx.progress({ step: 'build.sh' });
  await runStep(ctx, 'build.sh', isolatedArgv(['bash', path.join(recipeDir, 'build.sh'), ctx.root], hostInputs), {
    sample: async () => ({ rootfsBytes: await treeBytes(ctx.root) }),
  });
}

/** builder "debootstrap": a minbase Debian from the host's mirror. */
export async function debootstrap(
  ctx: StepContext,
  o: { suite: string; mirror: string; keyring?: string; packages: string[] },
): Promise<void> {
  const step = 'debootstrap';
  ctx.progress({ step, message: `Debian ${o.suite} minbase from ${o.mirror}` });
  let packages = 0;
  const argv = [
    'debootstrap', '--variant=minbase',
    ...(o.packages.length ? [`--include=${o.packages.join(',')}`] : []),
    ...(o.keyring ? [`--keyring=${o.keyring}`] : []),
    o.suite, ctx.root, o.mirror,
  ];
  const archives = path.join(ctx.root, 'var/cache/apt/archives');
  await runStep(ctx, step, isolatedArgv(argv), {
    onLine: (line) => {
      const e = parseDebootstrapLine(line);
      if (e?.kind === 'retrieve') packages++;
      else if (e?.kind === 'phase') ctx.progress({ step, message: e.message, packages });
    },
    sample: async () => {
      const [downloadedBytes, rootfsBytes] = await Promise.all([treeBytes(archives), treeBytes(ctx.root)]);
      return { packages, downloadedBytes, rootfsBytes };
    },
  });
}

/** The Debian configuration a template carries: sources pointing at the host's mirror, apt settings. */
export async function configureApt(ctx: StepContext, o: { sources: string; aptConf: string }): Promise<void> {
  ctx.progress({ step: 'configure' });
  const etc = path.join(ctx.root, 'etc/apt');
  await fs.rm(path.join(etc, 'sources.list'), { force: true });
  await fs.mkdir(path.join(etc, 'sources.list.d'), { recursive: true });
  await fs.writeFile(path.join(etc, 'sources.list.d/debian.sources'), o.sources, { mode: 0o644 });
  const conf = path.join(etc, 'apt.conf.d/50runbox-host');
  if (o.aptConf) await fs.writeFile(conf, o.aptConf, { mode: 0o644 });
  else await fs.rm(conf, { force: true });
}

/**
 * Name resolution inside the chroot while it downloads: the host's resolv.conf and hosts are
 * copied in (not bind-mounted: a package writing them would write the host's). The cleanup step
 * puts the template's own back.
 */
async function hostNetworkFiles(root: string): Promise<void> {
  for (const f of ['etc/resolv.conf', 'etc/hosts']) {
    const dst = path.join(root, f);
    await fs.rm(dst, { force: true }); // may be a symlink: never write through it
    await fs.copyFile(path.join('/', f), dst).catch(() => fs.writeFile(dst, ''));
  }
}

/** apt-get update + install in the chroot; services are kept from starting (policy-rc.d). */
export async function aptInstall(ctx: StepContext, packages: string[]): Promise<void> {
  await hostNetworkFiles(ctx.root);
  const policy = path.join(ctx.root, 'usr/sbin/policy-rc.d');
  await fs.rm(policy, { force: true });
  // exit 101: "action forbidden by policy" (invoke-rc.d(8)): no daemon starts during a build.
  await fs.writeFile(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  try {
    let step = 'apt-get update';
    ctx.progress({ step });
    let downloadedBytes = 0;
    await runStep(ctx, step, chrootArgv(ctx.root, ['apt-get', '-q', 'update'], env), {
      onLine: (line) => {
        const e = parseAptLine(line);
        if (e?.kind === 'get') downloadedBytes += e.bytes;
      },
    });
    ctx.progress({ step, downloadedBytes });

    step = 'apt-get install';
    ctx.progress({ step, message: packages.join(' ') });
    downloadedBytes = 0;
    let downloadTotalBytes: number | undefined;
    let unpacked = 0;
    await runStep(ctx, step, chrootArgv(ctx.root, ['apt-get', '-q', '-y', '--no-install-recommends', 'install', '--', ...packages], env), {
      onLine: (line) => {
        const e = parseAptLine(line);
        if (e?.kind === 'get') downloadedBytes += e.bytes;
        else if (e?.kind === 'need') downloadTotalBytes = e.bytes;
        else if (e?.kind === 'unpack') unpacked++;
      },
      sample: async () => ({ downloadedBytes, downloadTotalBytes, packages: unpacked, rootfsBytes: await treeBytes(ctx.root) }),
    });
    ctx.progress({ step, downloadedBytes, downloadTotalBytes, packages: unpacked });
  } finally {
    await fs.rm(policy, { force: true });
  }
}

/** The recipe's customize.sh (optional), run as root inside the chroot after packages are in. */
export async function customize(ctx: StepContext, recipeDir: string): Promise<void> {
  const script = path.join(recipeDir, 'customize.sh');
  if (!(await fs.access(script).then(() => true, () => false))) return;
  ctx.progress({ step: 'customize.sh' });
  const inside = '/tmp/runbox-customize.sh';
  await fs.copyFile(script, path.join(ctx.root, inside));
  try {
    await runStep(ctx, 'customize.sh', chrootArgv(ctx.root, ['/bin/sh', inside]));
  } finally {
    await fs.rm(path.join(ctx.root, inside), { force: true });
  }
}

/**
 * Leaves a Debian rootfs small and host-neutral: no package lists or downloaded .debs (a VPS runs
 * `apt-get update` first, like in any fresh Debian container), no logs, and its own hosts,
 * hostname and an empty resolv.conf instead of the build host's.
 */
export async function cleanupDebian(ctx: StepContext): Promise<void> {
  ctx.progress({ step: 'cleanup' });
  const r = (p: string) => path.join(ctx.root, p);
  await emptyDir(r('var/lib/apt/lists'), ['partial', 'lock', 'auxfiles']);
  await emptyDir(r('var/cache/apt/archives'), ['partial', 'lock']);
  for (const f of ['var/cache/apt/pkgcache.bin', 'var/cache/apt/srcpkgcache.bin', 'var/cache/debconf/config.dat-old', 'var/cache/debconf/templates.dat-old']) {
    await fs.rm(r(f), { force: true });
  }
  await emptyDir(r('var/log/apt'), []);
  await emptyDir(r('var/log'), [], /\.log$/);
  await emptyDir(r('tmp'), []);
  await emptyDir(r('var/tmp'), []);
  await fs.rm(r('debootstrap'), { recursive: true, force: true });
  await writeFresh(r('etc/hosts'), '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n');
  await writeFresh(r('etc/hostname'), 'runbox\n');
  await writeFresh(r('etc/resolv.conf'), '');
  ctx.progress({ step: 'cleanup', rootfsBytes: await treeBytes(ctx.root) });
}

async function writeFresh(file: string, content: string): Promise<void> {
  await fs.rm(file, { force: true });
  await fs.writeFile(file, content, { mode: 0o644 });
}

/** Removes the entries of `dir` except `keep` (and, with `only`, removes just the names matching it). */
async function emptyDir(dir: string, keep: string[], only?: RegExp): Promise<void> {
  for (const e of await fs.readdir(dir).catch(() => [] as string[])) {
    if (keep.includes(e) || (only && !only.test(e))) continue;
    await fs.rm(path.join(dir, e), { recursive: true, force: true });
  }
}

/** The manifest's smoke command, in the chroot: a template that cannot pass it is not published. */
export async function smokeInChroot(ctx: StepContext, smoke: string[]): Promise<void> {
  ctx.progress({ step: 'smoke', message: smoke.join(' ') });
  await runStep(ctx, 'smoke', chrootArgv(ctx.root, smoke));
}
