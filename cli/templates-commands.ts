import path from 'node:path';
import { parseEnv, runtimeConfigFromEnv } from '../core/config.js';
import { RunboxError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { ApiClient } from './http-client.js';
import { strict, table } from './args.js';

/**
 * `runbox templates ...`:
 *   templates [ls] [--json]             through the API: every template, its version, size, build
 *                                       date and the hosts that have it built
 *   templates ls --local [--json]       what this machine has built (all versions), no API needed
 *   templates build NAME... [--json]    build here from templates/NAME, with live progress
 *   templates import NAME PATH [--ref R] [--json]   an OCI image layout or docker save tarball
 */
export const TEMPLATES_USAGE = `usage: runbox templates [ls] [--json]            templates known to the API, per host
       runbox templates ls --local [--json]       templates built on this machine (all versions)
       runbox templates build NAME... [--json] [--quiet]
                                                  build on this machine (parents first), with progress
       runbox templates import NAME PATH [--ref REF] [--json]
                                                  make a template from an OCI image layout or docker save tarball`;

export async function templatesCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'build':
      return buildCommand(rest);
    case 'import':
      return importCommand(rest);
    case 'ls':
      return lsCommand(rest);
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(`${TEMPLATES_USAGE}\n`);
      return 0;
    default:
      if (sub !== undefined && !sub.startsWith('-')) throw new RunboxError('invalid_argument', `unknown templates subcommand "${sub}"\n${TEMPLATES_USAGE}`);
      return lsCommand(args);
  }
}

/** A logger for local commands: JSON logs only when RUNBOX_LOG_LEVEL asks for them (progress lines are the UI). */
function localSetup() {
  const cfg = { ...runtimeConfigFromEnv(process.env), recipesDir: path.resolve(parseEnv(process.env).RUNBOX_RECIPES_DIR) };
  const log = createLogger(process.env.RUNBOX_LOG_LEVEL ? cfg.logLevel : 'warn');
  return { cfg, log };
}

async function buildCommand(args: string[]): Promise<number> {
  const { values, positionals } = strict(args, { json: { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' } }, 'runbox templates build NAME... [--json] [--quiet]');
  if (positionals.length === 0) throw new RunboxError('invalid_argument', `templates build: name the template(s) to build\n${TEMPLATES_USAGE}`);
  const { buildTemplate } = await import('../runtime/templates/builder.js');
  const { formatBytes, formatProgress } = await import('../runtime/templates/progress.js');
  const { cfg, log } = localSetup();
  const json = values.json === true;
  // --quiet: silent when there is nothing to build (setup runs this every time).
  const quiet = values.quiet === true;
  const out = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  for (const name of positionals) {
    const started = Date.now();
    const info = await buildTemplate(name, {
      recipesDir: cfg.recipesDir,
      templatesDir: cfg.templatesDir,
      stateDirs: [cfg.stateDir],
      log,
      onProgress: (p) => {
        if (json) out({ event: 'progress', ...p });
        else if (!(quiet && p.step === 'done' && p.message === 'already built')) process.stdout.write(`${formatProgress(p)}\n`);
      },
    });
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    if (json) out({ event: 'built', fresh: info.fresh, seconds: Number(secs), template: info });
    else if (!(quiet && !info.fresh)) {
      const what = info.fresh ? `built in ${secs} s` : 'already built (nothing to do)';
      process.stdout.write(`template ${info.name} ${info.hash}: ${what}, ${formatBytes(info.sizeBytes)}\n`);
    }
  }
  return 0;
}

async function importCommand(args: string[]): Promise<number> {
  const usage = 'runbox templates import NAME PATH [--ref REF] [--json]';
  const { values, positionals } = strict(args, { ref: { type: 'string' }, json: { type: 'boolean' } }, usage);
  if (positionals.length !== 2) throw new RunboxError('invalid_argument', `usage: ${usage}`);
  const { importOciTemplate } = await import('../runtime/templates/oci-import.js');
  const { cfg, log } = localSetup();
  const r = await importOciTemplate({
    name: positionals[0]!,
    path: positionals[1]!,
    ref: values.ref as string | undefined,
    templatesDir: cfg.templatesDir,
    log,
    progress: (line) => (values.json ? undefined : process.stdout.write(`${line}\n`)),
  });
  if (values.json) process.stdout.write(`${JSON.stringify({ event: 'imported', created: r.created, digest: r.digest, template: r.info })}\n`);
  else process.stdout.write(`template ${r.name} ${r.hash}: ${r.created ? 'imported' : 'already imported'} (${r.digest})\n`);
  return 0;
}

async function lsCommand(args: string[]): Promise<number> {
  const { values, positionals } = strict(args, { local: { type: 'boolean' }, json: { type: 'boolean' } }, 'runbox templates ls [--local] [--json]');
  if (positionals.length) throw new RunboxError('invalid_argument', `unexpected argument "${positionals[0]}"\n${TEMPLATES_USAGE}`);
  const { formatBytes } = await import('../runtime/templates/progress.js');
  if (values.local) {
    const { listVersions } = await import('../runtime/templates/store.js');
    const { cfg } = localSetup();
    const all = await listVersions(cfg.templatesDir);
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ templatesDir: cfg.templatesDir, templates: all }, null, 2)}\n`);
      return 0;
    }
    const rows = all.flatMap((t) =>
      t.versions.map((v) => [t.name, v.info.hash, formatBytes(v.info.sizeBytes), v.info.builtAt.replace(/\.\d+Z$/, 'Z'), v.current ? 'current' : 'old', v.info.source]),
    );
    process.stdout.write(table(['TEMPLATE', 'VERSION', 'SIZE', 'BUILT', 'STATE', 'SOURCE'], rows));
    return 0;
  }
  interface Listed {
    name: string;
    hash: string | null;
    hosts: string[];
    sizeBytes?: number | null;
    builtAt?: string | null;
    description?: string | null;
  }
  const r = await ApiClient.fromEnv().json<{ templates: Listed[] }>('GET', '/v1/templates');
  if (values.json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return 0;
  }
  const rows = r.templates.map((t) => [
    t.name,
    t.hash ?? '-',
    t.sizeBytes ? formatBytes(t.sizeBytes) : '-',
    t.builtAt ? t.builtAt.replace(/\.\d+Z$/, 'Z') : '-',
    t.hosts.join(',') || '(not built; built on first use)',
  ]);
  process.stdout.write(table(['TEMPLATE', 'VERSION', 'SIZE', 'BUILT', 'HOSTS'], rows));
  return 0;
}



