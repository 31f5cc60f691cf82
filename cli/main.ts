#!/usr/bin/env node
import { errorMessage, isRunboxError } from '../core/errors.js';

const USAGE = `usage: runbox COMMAND [ARGS]
  up                             start everything here: Redis (unless RUNBOX_REDIS_URL), API, one worker
  api | worker                   start one part (several workers can share one Redis)
  run [flags] -- CMD [ARGS...]   run one command in a fresh VPS on this machine (see runbox run --help)
  submit [flags] -- CMD          submit a job through the API (see runbox submit --help)
  status ID | logs [-f] ID | ls | cancel ID | checkpoint ID | migrate ID [--to HOST]
  hosts | drain HOST | resume HOST | templates
                                 talk to the API (RUNBOX_API_URL, RUNBOX_TOKEN)
  templates build NAME... | templates ls --local | templates import NAME PATH
                                 build / list / import templates on this machine (see runbox templates --help)
  cluster up [--hosts N] | cluster down
                                 N worker hosts on this machine, each in its own network namespace
  gc [--all]                     clean up what a crashed runbox process left behind (--all: every VPS
                                 of this state dir, plus its bridge and firewall table)
  doctor                         check that this host can run VPSs, in plain words
environment: RUNBOX_STATE_DIR (default /var/lib/runbox), see README.md for the rest.`;

/** Each subcommand is imported lazily: `runbox run` should not pay for code it does not use. */
async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'run': {
      if (rest[0] === '--help' || rest[0] === '-h') return usage((await import('./run-args.js')).RUN_USAGE, 0);
      return (await import('./run.js')).runCommand(rest);
    }
    case 'worker':
      return (await import('./services.js')).workerCommand(rest);
    case 'api':
      return (await import('./services.js')).apiCommand(rest);
    case 'up':
      return (await import('./services.js')).upCommand(rest);
    case 'submit':
      return (await import('./jobs-commands.js')).submitCommand(rest);
    case 'status':
      return (await import('./jobs-commands.js')).statusCommand(rest);
    case 'logs':
      return (await import('./jobs-commands.js')).logsCommand(rest);
    case 'ls':
      return (await import('./jobs-commands.js')).lsCommand(rest);
    case 'cancel':
      return (await import('./jobs-commands.js')).cancelCommand(rest);
    case 'checkpoint':
      return (await import('./jobs-commands.js')).checkpointCommand(rest);
    case 'migrate':
      return (await import('./jobs-commands.js')).migrateCommand(rest);
    case 'drain':
    case 'resume':
      return (await import('./jobs-commands.js')).drainCommand(rest, cmd);
    case 'hosts':
      return (await import('./jobs-commands.js')).hostsCommand(rest);
    case 'templates':
      return (await import('./templates-commands.js')).templatesCommand(rest);
    case 'cluster':
      return (await import('./cluster.js')).clusterCommand(rest);
    case 'gc':
      return (await import('./maintenance.js')).gcCommand(rest);
    case 'doctor':
      return (await import('./maintenance.js')).doctorCommand(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      return usage(USAGE, cmd === undefined ? 2 : 0);
    default:
      process.stderr.write(`runbox: unknown command "${cmd}"\n`);
      return usage(USAGE, 2);
  }
}

function usage(text: string, code: number): number {
  (code === 0 ? process.stdout : process.stderr).write(`${text}\n`);
  return code;
}

const LONG_RUNNING = new Set(['up', 'api', 'worker', 'cluster']);

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // A service that has shut down cleanly exits now, whatever library handle lingers.
    if (LONG_RUNNING.has(process.argv[2] ?? '')) process.exit(code);
  },
  (e: unknown) => {
    process.stderr.write(`runbox: ${isRunboxError(e) ? '' : 'error: '}${errorMessage(e)}\n`);
    // 2: the request was wrong (fix the command line); 125: runbox or the host failed.
    const userError = isRunboxError(e) && ['invalid_argument', 'template_missing', 'limit_exceeded'].includes(e.code);
    process.exitCode = userError ? 2 : 125;
  },
);
