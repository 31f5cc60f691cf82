import { runtimeConfigFromEnv } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { RunboxError } from '../core/errors.js';
import { gc } from '../runtime/gc.js';
import { formatDoctor, runDoctor } from '../runtime/host/doctor.js';
import { RuncEngine } from '../runtime/runc-engine.js';

export function engineFromEnv(): RuncEngine {
  const cfg = runtimeConfigFromEnv(process.env);
  return new RuncEngine({
    stateDir: cfg.stateDir,
    templatesDir: cfg.templatesDir,
    runcPath: cfg.runcPath,
    crunPath: cfg.crunPath,
    runtime: cfg.runtime,
    userns: cfg.userns,
    criuPath: cfg.criuPath,
    agentPath: cfg.agentPath,
    netCidr: cfg.netCidr,
    log: createLogger(cfg.logLevel),
  });
}

export async function gcCommand(args: string[]): Promise<number> {
  const unknown = args.filter((a) => a !== '--all');
  if (unknown.length) throw new RunboxError('invalid_argument', `gc: unknown argument ${unknown[0]} (usage: runbox gc [--all])`);
  const report = await gc(engineFromEnv(), { all: args.includes('--all') });
  const parts = Object.entries(report)
    .filter(([, v]) => (Array.isArray(v) ? v.length > 0 : v))
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.length : 'removed'}`);
  // ---- template versions no VPS uses, leftovers of killed builds (runtime/templates/gc.ts) ----
  const { gcTemplates, templatesInUse } = await import('../runtime/templates/gc.js');
  const cfg = runtimeConfigFromEnv(process.env);
  const tpl = await gcTemplates(cfg.templatesDir, await templatesInUse([cfg.stateDir]));
  if (tpl.removed.length) parts.push(`template versions: ${tpl.removed.length} (${tpl.removed.join(', ')})`);
  if (tpl.leftovers.length) parts.push(`template build leftovers: ${tpl.leftovers.length}`);
  // ---- end of template gc ----
  process.stdout.write(parts.length ? `gc removed ${parts.join(', ')}\n` : 'gc: nothing to clean\n');
  return 0;
}

export async function doctorCommand(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', 'doctor takes no arguments');
  const cfg = runtimeConfigFromEnv(process.env);
  const checks = await runDoctor({ criuPath: cfg.criuPath, stateDir: cfg.stateDir, agentPath: cfg.agentPath, runtime: cfg.runtime, runcPath: cfg.runcPath, crunPath: cfg.crunPath, userns: cfg.userns });
  process.stdout.write(`${formatDoctor(checks)}\n`);
  return checks.some((c) => !c.ok && !c.optional) ? 1 : 0;
}
