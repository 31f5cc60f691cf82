import { parseArgs } from 'node:util';
import { RunboxError } from '../core/errors.js';
import type { LimitsInput } from '../core/limits.js';
import { parseDuration, parseSize, MiB } from '../core/units.js';
import { EnvNameSchema, HostnameSchema, NetworkModeSchema, TemplateNameSchema, UserSchema, WorkdirSchema } from '../core/vps-request.js';
import type { NetworkMode } from '../runtime/net/network.js';
import type { z } from 'zod';

export interface RunRequest {
  argv: string[];
  template: string;
  network: NetworkMode;
  limits: LimitsInput;
  env: Record<string, string>;
  user?: string;
  hostname?: string;
  workdir?: string;
  stdin: boolean;
}

export const RUN_USAGE = `usage: runbox run [flags] -- CMD [ARGS...]
  --template NAME      template to run on (default: base)
  --memory SIZE        memory limit, e.g. 256m, 1g
  --cpus N             CPU bandwidth in cores, e.g. 0.5, 2
  --pids N             maximum number of processes/threads
  --disk SIZE          size of the VPS's writable disk, e.g. 256m
  --timeout DURATION   wall-clock limit, e.g. 30s, 5m
  --output SIZE        cap on captured output, e.g. 1m
  --net MODE           none | private | egress (default: none)
  --user USER          run as USER (name, uid, name:group or uid:gid)
  --env K=V            set an environment variable (repeatable)
  --hostname NAME      hostname inside the VPS
  --workdir DIR        working directory inside the VPS
  -i, --stdin          pass this process's stdin to the command
exit status: the command's; 128+N if killed by signal N; 124 on timeout; 137 on OOM kill;
2 for a bad request (flags, unknown template, limits above the host's maximum);
125 if runbox itself or the host failed.`;

/** Parses `runbox run` arguments (everything after "run"). Pure: throws invalid_argument. */
export function parseRunArgs(args: string[]): RunRequest {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        template: { type: 'string' },
        memory: { type: 'string' },
        cpus: { type: 'string' },
        pids: { type: 'string' },
        disk: { type: 'string' },
        timeout: { type: 'string' },
        output: { type: 'string' },
        net: { type: 'string' },
        user: { type: 'string' },
        env: { type: 'string', multiple: true },
        hostname: { type: 'string' },
        workdir: { type: 'string' },
        stdin: { type: 'boolean', short: 'i' },
      },
    });
  } catch (e) {
    throw new RunboxError('invalid_argument', (e as Error).message);
  }
  const v = parsed.values;
  const argv = parsed.positionals;
  if (argv.length === 0 || argv[0] === '') throw new RunboxError('invalid_argument', 'no command given: runbox run [flags] -- CMD [ARGS...]');

  const limits: LimitsInput = {};
  if (v.memory !== undefined) limits.memoryMb = Math.max(1, Math.round(flag('--memory', parseSize, v.memory) / MiB));
  if (v.disk !== undefined) limits.diskMb = Math.max(1, Math.round(flag('--disk', parseSize, v.disk) / MiB));
  if (v.output !== undefined) limits.outputBytes = flag('--output', parseSize, v.output);
  if (v.timeout !== undefined) limits.timeoutSec = flag('--timeout', parseDuration, v.timeout);
  if (v.cpus !== undefined) limits.cpus = positiveNumber('--cpus', v.cpus);
  if (v.pids !== undefined) limits.pids = positiveInt('--pids', v.pids);

  const env: Record<string, string> = {};
  for (const kv of v.env ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new RunboxError('invalid_argument', `--env "${kv}": expected K=V`);
    env[check('--env name', EnvNameSchema, kv.slice(0, eq))] = kv.slice(eq + 1);
  }
  return {
    argv,
    template: check('--template', TemplateNameSchema, v.template ?? 'base'),
    network: check('--net', NetworkModeSchema, v.net ?? 'none'),
    limits,
    env,
    user: v.user === undefined ? undefined : check('--user', UserSchema, v.user),
    hostname: v.hostname === undefined ? undefined : check('--hostname', HostnameSchema, v.hostname),
    workdir: v.workdir === undefined ? undefined : check('--workdir', WorkdirSchema, v.workdir),
    stdin: v.stdin ?? false,
  };
}

function check<T>(flag: string, schema: z.ZodType<T>, value: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new RunboxError('invalid_argument', `${flag} "${value}": expected ${r.error.issues[0]?.message ?? 'a valid value'}`);
  return r.data;
}

/** Runs a value parser, prefixing its error with the flag so the user knows which one was wrong. */
function flag<T>(name: string, parse: (s: string) => T, value: string): T {
  try {
    return parse(value);
  } catch (e) {
    if (e instanceof RunboxError) throw new RunboxError(e.code, `${name}: ${e.message}`, { cause: e });
    throw e;
  }
}

function positiveNumber(flag: string, s: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new RunboxError('invalid_argument', `${flag} "${s}": expected a positive number`);
  return n;
}

function positiveInt(flag: string, s: string): number {
  const n = positiveNumber(flag, s);
  if (!Number.isInteger(n)) throw new RunboxError('invalid_argument', `${flag} "${s}": expected a whole number`);
  return n;
}

/** Exit status of `runbox run` for a finished job (documented in RUN_USAGE). */
export function exitStatus(r: { exitCode: number | null; signal: number | null; timedOut: boolean; oomKilled: boolean }): number {
  if (r.timedOut) return 124;
  if (r.oomKilled && (r.signal === 9 || r.exitCode === null)) return 137;
  if (r.exitCode !== null) return r.exitCode;
  if (r.signal !== null) return 128 + r.signal;
  return 125;
}
