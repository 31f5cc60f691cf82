import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import { buildTemplate, type BuildResult } from '../../runtime/templates/builder.js';
import type { BuildProgress } from '../../runtime/templates/progress.js';
import { DEFAULT_RECIPES_DIR } from '../../runtime/templates/recipes.js';
import { TEMPLATES_DIR } from '../helpers/engine.js';

export { TEMPLATES_DIR };
export const RECIPES_DIR = DEFAULT_RECIPES_DIR;
export const log = createLogger(process.env.RUNBOX_TEST_LOG ?? 'silent');

/**
 * Builds a real template into the shared templates dir (the default one, or RUNBOX_TEMPLATES_DIR),
 * so the next test run finds it built and only pays for hashing the recipe. Prints the time taken
 * (fresh builds and cached no-ops alike), for the build-time report.
 */
export async function buildShared(name: string, progress: BuildProgress[] = []): Promise<BuildResult & { seconds: number }> {
  const t0 = Date.now();
  const info = await buildTemplate(name, { recipesDir: RECIPES_DIR, templatesDir: TEMPLATES_DIR, log, onProgress: (p) => progress.push(p) });
  const seconds = (Date.now() - t0) / 1000;
  process.stderr.write(`[templates] ${name} ${info.hash}: ${info.fresh ? 'built' : 'cached'} in ${seconds.toFixed(1)} s (${(info.sizeBytes / 1e6).toFixed(1)} MB)\n`);
  return { ...info, seconds };
}

/** A scratch dir removed by the returned cleanup. */
export async function tempDir(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `runbox-tpl-${prefix}-`));
}

/** Copies recipe `from` of the repository to <dir>/<to>, renaming it in its manifest; `edit` may change the manifest. */
export async function copyRecipe(dir: string, from: string, to = from, edit?: (m: Record<string, unknown>) => void): Promise<string> {
  const dst = path.join(dir, to);
  await fs.cp(path.join(RECIPES_DIR, from), dst, { recursive: true });
  if (to === from && !edit) return dst; // byte for byte: the same hash as the repository's
  const file = path.join(dst, 'manifest.json');
  const m = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
  m.name = to;
  edit?.(m);
  await fs.writeFile(file, JSON.stringify(m, null, 2));
  return dst;
}

/** Writes a recipe from scratch: manifest + optional files. */
export async function writeRecipe(dir: string, name: string, manifest: unknown, files: Record<string, string> = {}): Promise<string> {
  const d = path.join(dir, name);
  await fs.mkdir(d, { recursive: true });
  await fs.writeFile(path.join(d, 'manifest.json'), typeof manifest === 'string' ? manifest : JSON.stringify(manifest, null, 2));
  for (const [f, content] of Object.entries(files)) await fs.writeFile(path.join(d, f), content, { mode: 0o755 });
  return d;
}

/** Everything in a template's folder (versions, build dirs, locks), sorted. */
export async function entries(templatesDir: string, name: string): Promise<string[]> {
  return (await fs.readdir(path.join(templatesDir, name)).catch(() => [] as string[])).sort();
}

/** `runbox templates build NAME --json` in a child process; resolves with its exit code and events. */
export function cliBuild(
  name: string,
  env: Record<string, string>,
): { done: Promise<{ code: number | null; events: Array<Record<string, unknown>>; stderr: string }>; pid: number | undefined; kill: () => void } {
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'dist/cli/main.js'), 'templates', 'build', name, '--json'], {
    env: { ...process.env, RUNBOX_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<{ code: number | null; events: Array<Record<string, unknown>>; stderr: string }>((resolve) =>
    child.on('close', (code) =>
      resolve({ code, stderr: err, events: out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) }),
    ),
  );
  return { done, pid: child.pid, kill: () => child.kill('SIGKILL') };
}

/** Pids of processes whose command line is exactly `argv`. */
export async function pidsOf(argv: string[]): Promise<number[]> {
  const want = `${argv.join('\0')}\0`;
  const out: number[] = [];
  for (const p of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd === want) out.push(Number(p));
  }
  return out;
}

export async function waitUntil(pred: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
