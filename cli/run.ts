import { errorMessage, RunboxError } from '../core/errors.js';
import { runtimeConfigFromEnv } from '../core/config.js';
import { newId } from '../core/ids.js';
import { LimitsSchema, resolveLimits } from '../core/limits.js';
import { createLogger } from '../core/log.js';
import { ensurePrivateDirs } from '../runtime/host/private-dirs.js';
import { RuncEngine } from '../runtime/runc-engine.js';
import { readTemplateInfo, resolveTemplate } from '../runtime/templates/store.js';
import { exitStatus, parseRunArgs } from './run-args.js';

/** `runbox run`: one command in a fresh VPS on this machine, no queue. Returns the exit status. */
export async function runCommand(args: string[]): Promise<number> {
  const req = parseRunArgs(args);
  const cfg = runtimeConfigFromEnv(process.env);
  const checked = LimitsSchema.safeParse(req.limits);
  if (!checked.success) {
    const i = checked.error.issues[0]!;
    throw new RunboxError('invalid_argument', `limits.${i.path.join('.')}: ${i.message}`);
  }
  const limits = resolveLimits(checked.data, cfg.defaultLimits, cfg.maxLimits);
  const log = createLogger(process.env.RUNBOX_LOG_LEVEL ?? 'warn');
  await ensurePrivateDirs([cfg.stateDir, cfg.templatesDir], { log });
  const engine = new RuncEngine({
    stateDir: cfg.stateDir,
    templatesDir: cfg.templatesDir,
    runcPath: cfg.runcPath,
    crunPath: cfg.crunPath,
    runtime: cfg.runtime,
    userns: cfg.userns,
    criuPath: cfg.criuPath,
    agentPath: cfg.agentPath,
    netCidr: cfg.netCidr,
    log,
    egressAllow: cfg.egressAllow, vpsTun: cfg.vpsTun,
  });
  const template = await resolveTemplate(engine.layout.templatesDir, req.template);
  const stdin = req.stdin ? await readAll(process.stdin) : undefined;
  const id = newId();
  const abort = new AbortController();
  let interrupted = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = sig === 'SIGINT' ? 130 : 143;
    abort.abort();
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  try {
    const vps = await engine.create(id, {
      template,
      hostname: req.hostname ?? `vps-${id.slice(0, 8)}`,
      network: req.network,
      memoryMb: limits.memoryMb,
      cpus: limits.cpus,
      pids: limits.pids,
      diskMb: limits.diskMb,
    });
    if (abort.signal.aborted) return interrupted;
    const defaults = (await readTemplateInfo(engine.layout.templatesDir, template.name, template.hash))?.defaults;
    const result = await vps.run({
      argv: req.argv,
      env: { ...defaults?.env, ...req.env },
      user: req.user ?? defaults?.user,
      workdir: req.workdir ?? defaults?.workdir,
      stdin,
      timeoutSec: limits.timeoutSec,
      outputBytes: limits.outputBytes,
      signal: abort.signal,
      onOutput: (stream, data) => (stream === 'stdout' ? process.stdout : process.stderr).write(data),
    });
    if (result.error) process.stderr.write(`runbox: ${result.error.message}\n`);
    if (result.timedOut) process.stderr.write(`runbox: timed out after ${limits.timeoutSec}s; the VPS was killed\n`);
    if (result.oomKilled) process.stderr.write(`runbox: out of memory (limit ${limits.memoryMb} MiB): the kernel killed a process\n`);
    if (result.outputTruncated) process.stderr.write(`runbox: output truncated at ${limits.outputBytes} bytes\n`);
    if (interrupted) return interrupted;
    return result.error?.code === 'vps_lost' ? 125 : exitStatus(result);
  } finally {
    await engine.destroy(id).catch((e) => process.stderr.write(`runbox: cleanup of VPS ${id} failed: ${errorMessage(e)}\n`));
  }
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}
