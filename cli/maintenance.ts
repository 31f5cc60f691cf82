import { runtimeConfigFromEnv, serviceConfigFromEnv } from '../core/config.js';
import { probeObjectStore } from '../core/objects/probe.js';
import { S3ObjectStore } from '../core/objects/s3.js';
import { describeChoice } from './services.js';
import { createLogger } from '../core/log.js';
import { RunboxError } from '../core/errors.js';
import { gc } from '../runtime/gc.js';
import { formatDoctor, runDoctor, type DoctorCheck } from '../runtime/host/doctor.js';
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

/** doctor's line for RUNBOX_OBJECT_STORE: an S3 store is probed (write, read back, list, remove). */
async function objectStoreCheck(): Promise<DoctorCheck> {
  const name = 'checkpoint/object store (RUNBOX_OBJECT_STORE)';
  const svc = serviceConfigFromEnv(process.env, 'doctor');
  const choice = svc.objectStore;
  if (choice.kind !== 's3') return { name, ok: true, detail: describeChoice(choice, svc.checkpointDir) };
  const objects = new S3ObjectStore(choice.location);
  try {
    const r = await probeObjectStore(objects);
    return r.ok
      ? { name, ok: true, detail: `${objects.description}: write, read back, list, remove in ${r.ms} ms` }
      : { name, ok: false, detail: `${objects.description}: ${r.error}`, fix: 'check RUNBOX_S3_ENDPOINT, the bucket and RUNBOX_S3_ACCESS_KEY_ID / RUNBOX_S3_SECRET_ACCESS_KEY' };
  } finally {
    objects.close();
  }
}

export async function doctorCommand(args: string[]): Promise<number> {
  if (args.length) throw new RunboxError('invalid_argument', 'doctor takes no arguments');
  const cfg = runtimeConfigFromEnv(process.env);
  const checks = await runDoctor({ criuPath: cfg.criuPath, stateDir: cfg.stateDir, agentPath: cfg.agentPath, runtime: cfg.runtime, runcPath: cfg.runcPath, crunPath: cfg.crunPath, userns: cfg.userns });
  checks.push(await objectStoreCheck());
  process.stdout.write(`${formatDoctor(checks)}\n`);
  return checks.some((c) => !c.ok && !c.optional) ? 1 : 0;
}
