import { describe, it, expect } from 'vitest';
import { exitStatus, parseRunArgs, RUN_USAGE } from '../../cli/run-args.js';
import { thrown } from '../helpers/errors.js';

describe('parseRunArgs', () => {
  it('fills defaults for a bare command', () => {
    expect(parseRunArgs(['--', 'echo', 'hi'])).toEqual({
      argv: ['echo', 'hi'],
      template: 'base',
      network: 'none',
      limits: {},
      env: {},
      user: undefined,
      hostname: undefined,
      workdir: undefined,
      stdin: false,
    });
  });

  it('parses every flag', () => {
    const r = parseRunArgs([
      '--template', 'ubuntu-22.04',
      '--memory', '512m',
      '--cpus', '0.5',
      '--pids', '64',
      '--disk', '1g',
      '--timeout', '5m',
      '--output', '1m',
      '--net', 'egress',
      '--user', 'app:staff',
      '--env', 'A=1',
      '--env', 'B=x=y',
      '--hostname', 'box.local',
      '--workdir', '/srv/app',
      '-i',
      '--', 'python3', '-c', 'print(1)',
    ]);
    expect(r).toEqual({
      argv: ['python3', '-c', 'print(1)'],
      template: 'ubuntu-22.04',
      network: 'egress',
      limits: { memoryMb: 512, cpus: 0.5, pids: 64, diskMb: 1024, timeoutSec: 300, outputBytes: 1_048_576 },
      env: { A: '1', B: 'x=y' },
      user: 'app:staff',
      hostname: 'box.local',
      workdir: '/srv/app',
      stdin: true,
    });
  });

  it.each<[string[], Partial<ReturnType<typeof parseRunArgs>>]>([
    [['--stdin', '--', 'cat'], { stdin: true }],
    [['-i', '--', 'cat'], { stdin: true }],
    [['--memory=1g', '--', 'x'], { limits: { memoryMb: 1024 } }],
    [['--memory', '1536k', '--', 'x'], { limits: { memoryMb: 2 } }],
    [['--memory', '1k', '--', 'x'], { limits: { memoryMb: 1 } }],
    [['--disk', '0.5g', '--', 'x'], { limits: { diskMb: 512 } }],
    [['--output', '100', '--', 'x'], { limits: { outputBytes: 100 } }],
    [['--timeout', '250ms', '--', 'x'], { limits: { timeoutSec: 0.25 } }],
    [['--timeout', '90', '--', 'x'], { limits: { timeoutSec: 90 } }],
    [['--cpus', '2', '--', 'x'], { limits: { cpus: 2 } }],
    [['--pids', '1000', '--', 'x'], { limits: { pids: 1000 } }],
    [['--net', 'private', '--', 'x'], { network: 'private' }],
    [['--net', 'none', '--', 'x'], { network: 'none' }],
    [['--user', '1000', '--', 'x'], { user: '1000' }],
    [['--user', '1000:1000', '--', 'x'], { user: '1000:1000' }],
    [['--workdir', '/', '--', 'x'], { workdir: '/' }],
    [['--hostname', 'a', '--', 'x'], { hostname: 'a' }],
  ])('%j', (args, expected) => {
    expect(parseRunArgs(args)).toMatchObject(expected);
  });

  it('collects repeated --env, last value wins, empty values allowed', () => {
    expect(parseRunArgs(['--env', 'A=1', '--env', 'B=', '--env', 'A=2', '--env', '_x=a b', '--', 'env']).env).toEqual({ A: '2', B: '', _x: 'a b' });
  });

  it('treats everything after -- as the command, even flags', () => {
    const r = parseRunArgs(['--memory', '64m', '--', 'ls', '--memory', '1g', '-i', '--', '-la']);
    expect(r.argv).toEqual(['ls', '--memory', '1g', '-i', '--', '-la']);
    expect(r.limits).toEqual({ memoryMb: 64 });
    expect(r.stdin).toBe(false);
  });

  it('accepts a command without -- when it has no dashes', () => {
    expect(parseRunArgs(['echo', 'hi']).argv).toEqual(['echo', 'hi']);
  });

  it.each([[[]], [['--']], [['--memory', '1g']], [['--', '']], [['-i', '--']]])('rejects %j: no command', (args) => {
    const e = thrown(() => parseRunArgs(args));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe('no command given: runbox run [flags] -- CMD [ARGS...]');
  });

  it.each([
    ['--memory', ['--memory', 'lots']],
    ['--memory', ['--memory', '0']],
    ['--memory', ['--memory=-1g']],
    ['--disk', ['--disk', '1q']],
    ['--output', ['--output', 'big']],
    ['--timeout', ['--timeout', 'soon']],
    ['--timeout', ['--timeout', '0s']],
    ['--timeout', ['--timeout', '5d']],
    ['--cpus', ['--cpus', 'abc']],
    ['--cpus', ['--cpus', '0']],
    ['--cpus', ['--cpus=-1']],
    ['--cpus', ['--cpus', '']],
    ['--pids', ['--pids', '1.5']],
    ['--pids', ['--pids', '0']],
    ['--pids', ['--pids', 'x']],
    ['--net', ['--net', 'public']],
    ['--net', ['--net', 'EGRESS']],
    ['--hostname', ['--hostname', 'under_score']],
    ['--hostname', ['--hostname', 'a..b']],
    ['--hostname', ['--hostname', 'x'.repeat(64)]],
    ['--user', ['--user', 'bob smith']],
    ['--user', ['--user', '']],
    ['--user', ['--user', 'a:b:c']],
    ['--workdir', ['--workdir', 'relative/dir']],
    ['--workdir', ['--workdir', '']],
    ['--env', ['--env', 'NOVALUE']],
    ['--env', ['--env', '=x']],
    ['--env', ['--env', '1A=x']],
    ['--env', ['--env', 'A-B=x']],
    ['--template', ['--template', 'Bad Name']],
    ['--memory', ['--memory']],
  ])('rejects a bad %s value %j, naming the flag', (flag, args) => {
    const e = thrown(() => parseRunArgs([...args, '--', 'true']));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toContain(flag);
  });

  it.each([
    [['--memory', 'lots'], '--memory: invalid size "lots" (examples: 256m, 1g, 512k)'],
    [['--disk', '0'], '--disk: invalid size "0": must be greater than zero'],
    [['--output', '0.5'], '--output: invalid size "0.5": must be greater than zero'],
    [['--timeout', 'soon'], '--timeout: invalid duration "soon" (examples: 30s, 5m, 1h)'],
    [['--cpus', 'abc'], '--cpus "abc": expected a positive number'],
    [['--pids', '1.5'], '--pids "1.5": expected a whole number'],
    [['--env', 'NOVALUE'], '--env "NOVALUE": expected K=V'],
    [['--workdir', 'rel'], '--workdir "rel": expected an absolute path'],
  ])('%j gives the message %j', (args, message) => {
    expect(thrown(() => parseRunArgs([...args, '--', 'true'])).message).toBe(message);
  });

  it.each([
    [['--bogus', '--', 'x'], "'--bogus'"],
    [['-x', '--', 'ls'], "'-x'"],
    [['--mem', '1g', '--', 'x'], "'--mem'"],
    [['ls', '-la'], "'-l'"],
  ])('rejects unknown flag in %j', (args, name) => {
    const e = thrown(() => parseRunArgs(args));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toContain(name);
  });

  it('rejects a value given to the boolean --stdin', () => {
    expect(thrown(() => parseRunArgs(['--stdin=yes', '--', 'x'])).code).toBe('invalid_argument');
  });
});

describe('exitStatus', () => {
  const base = { exitCode: null as number | null, signal: null as number | null, timedOut: false, oomKilled: false };
  it.each<[string, Partial<typeof base>, number]>([
    ['success', { exitCode: 0 }, 0],
    ['plain failure', { exitCode: 1 }, 1],
    ['exit 3', { exitCode: 3 }, 3],
    ['exit 255', { exitCode: 255 }, 255],
    ['killed by SIGKILL', { signal: 9 }, 137],
    ['killed by SIGTERM', { signal: 15 }, 143],
    ['killed by SIGINT', { signal: 2 }, 130],
    ['killed by SIGSEGV', { signal: 11 }, 139],
    ['timeout (killed)', { timedOut: true, signal: 9 }, 124],
    ['timeout even if it exited 0', { timedOut: true, exitCode: 0 }, 124],
    ['timeout wins over OOM', { timedOut: true, oomKilled: true, signal: 9 }, 124],
    ['OOM kill of the job', { oomKilled: true, signal: 9 }, 137],
    ['OOM with no status', { oomKilled: true }, 137],
    ['OOM with a normal exit keeps the code', { oomKilled: true, exitCode: 1 }, 1],
    ['OOM with exit 0 keeps 0', { oomKilled: true, exitCode: 0 }, 0],
    ['OOM and killed by any signal counts as the OOM kill', { oomKilled: true, signal: 15 }, 137],
    ['no status at all', {}, 125],
  ])('%s', (_what, over, status) => {
    expect(exitStatus({ ...base, ...over })).toBe(status);
  });

  it('documents the statuses in the usage text', () => {
    expect(RUN_USAGE).toContain('128+N if killed by signal N; 124 on timeout; 137 on OOM kill');
  });
});
