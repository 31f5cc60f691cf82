import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, expect } from 'vitest';
import { EnvSchema, REPO_ROOT, runtimeConfigFromEnv } from '../../core/config.js';

function thrownMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(Error);
    return (e as Error).message;
  }
  throw new Error('expected a throw');
}

describe('REPO_ROOT', () => {
  it('is the repository root when running from source', () => {
    expect(REPO_ROOT).toBe(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..'));
  });
});

describe('runtimeConfigFromEnv', () => {
  it('fills every default from an empty environment', () => {
    expect(runtimeConfigFromEnv({})).toEqual({
      stateDir: '/var/lib/runbox',
      templatesDir: '/var/lib/runbox/templates',
      runcPath: 'runc',
      criuPath: '/opt/runbox/criu/bin/criu',
      crunPath: '/opt/runbox/criu/bin/crun',
      runtime: 'auto',
      userns: 'auto',
      agentPath: path.join(REPO_ROOT, 'build/runbox-agent'),
      netCidr: '10.88.0.0/16',
      egressAllow: [],
      vpsTun: false,
      logLevel: 'info',
      defaultLimits: { memoryMb: 256, cpus: 1, pids: 256, diskMb: 256, timeoutSec: 300, outputBytes: 16_777_216 },
      maxLimits: { memoryMb: 8192, cpus: 16, pids: 32768, diskMb: 65536, timeoutSec: 86400, outputBytes: 1_073_741_824 },
    });
  });

  it('ignores unrelated variables', () => {
    expect(runtimeConfigFromEnv({ PATH: '/bin', HOME: '/root', RUNBOX_UNKNOWN: 'x' })).toEqual(runtimeConfigFromEnv({}));
  });

  it('applies every override, coercing numbers', () => {
    const cfg = runtimeConfigFromEnv({
      RUNBOX_STATE_DIR: '/srv/runbox/',
      RUNBOX_RUNC: '/usr/local/sbin/runc',
      RUNBOX_CRIU: '/usr/sbin/criu',
      RUNBOX_RUNTIME: 'runc',
      RUNBOX_USERNS: 'off',
      RUNBOX_CRUN: '/usr/bin/crun',
      RUNBOX_AGENT: '/opt/agent/../agent/runbox-agent',
      RUNBOX_NET_CIDR: '172.30.0.0/20',
      RUNBOX_LOG_LEVEL: 'debug',
      RUNBOX_DEFAULT_MEMORY_MB: '128',
      RUNBOX_DEFAULT_CPUS: '0.5',
      RUNBOX_DEFAULT_PIDS: '64',
      RUNBOX_DEFAULT_DISK_MB: '512',
      RUNBOX_DEFAULT_TIMEOUT_SEC: '2.5',
      RUNBOX_DEFAULT_OUTPUT_BYTES: '1024',
      RUNBOX_MAX_MEMORY_MB: '4096',
      RUNBOX_MAX_CPUS: '3.5',
      RUNBOX_MAX_PIDS: '1000',
      RUNBOX_MAX_DISK_MB: '2048',
      RUNBOX_MAX_TIMEOUT_SEC: '600',
      RUNBOX_MAX_OUTPUT_BYTES: '2048',
      RUNBOX_EGRESS_ALLOW: '10.20.0.0/16, 192.168.1.5',
      RUNBOX_VPS_TUN: '1',
    });
    expect(cfg).toEqual({
      stateDir: '/srv/runbox',
      templatesDir: '/srv/runbox/templates',
      runcPath: '/usr/local/sbin/runc',
      criuPath: '/usr/sbin/criu',
      crunPath: '/usr/bin/crun',
      runtime: 'runc',
      userns: 'off',
      agentPath: '/opt/agent/runbox-agent',
      netCidr: '172.30.0.0/20',
      egressAllow: ['10.20.0.0/16', '192.168.1.5'],
      vpsTun: true,
      logLevel: 'debug',
      defaultLimits: { memoryMb: 128, cpus: 0.5, pids: 64, diskMb: 512, timeoutSec: 2.5, outputBytes: 1024 },
      maxLimits: { memoryMb: 4096, cpus: 3.5, pids: 1000, diskMb: 2048, timeoutSec: 600, outputBytes: 2048 },
    });
  });

  it.each([
    ['RUNBOX_EGRESS_ALLOW', '10.0.0.0/33'],
    ['RUNBOX_EGRESS_ALLOW', '10.0.0.0/8 }; flush ruleset'],
    ['RUNBOX_EGRESS_ALLOW', 'metadata.internal'],
    ['RUNBOX_VPS_TUN', 'true'],
  ])('refuses %s=%s', (name, value) => {
    expect(thrownMessage(() => runtimeConfigFromEnv({ [name]: value }))).toContain(name);
  });

  it('resolves a relative state dir against the working directory', () => {
    expect(runtimeConfigFromEnv({ RUNBOX_STATE_DIR: 'rel/state' }).stateDir).toBe(path.resolve('rel/state'));
  });

  it.each(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const)('accepts log level %s', (level) => {
    expect(runtimeConfigFromEnv({ RUNBOX_LOG_LEVEL: level }).logLevel).toBe(level);
  });

  it.each(['10.88.0.0/16', '10.88.0.0/24', '192.168.0.0/19'])('accepts network %s', (cidr) => {
    expect(runtimeConfigFromEnv({ RUNBOX_NET_CIDR: cidr }).netCidr).toBe(cidr);
  });

  it.each([
    ['RUNBOX_STATE_DIR', ''],
    ['RUNBOX_RUNC', ''],
    ['RUNBOX_NET_CIDR', '10.88.0.0/8'],
    ['RUNBOX_NET_CIDR', '10.88.0.0/25'],
    ['RUNBOX_NET_CIDR', '10.88.0.0'],
    ['RUNBOX_NET_CIDR', 'ten'],
    ['RUNBOX_LOG_LEVEL', 'verbose'],
    ['RUNBOX_LOG_LEVEL', 'INFO'],
    ['RUNBOX_DEFAULT_MEMORY_MB', 'abc'],
    ['RUNBOX_DEFAULT_MEMORY_MB', '0'],
    ['RUNBOX_DEFAULT_MEMORY_MB', '-5'],
    ['RUNBOX_DEFAULT_MEMORY_MB', '1.5'],
    ['RUNBOX_DEFAULT_CPUS', 'lots'],
    ['RUNBOX_DEFAULT_CPUS', '0'],
    ['RUNBOX_DEFAULT_PIDS', '12x'],
    ['RUNBOX_MAX_TIMEOUT_SEC', '-1'],
    ['RUNBOX_MAX_OUTPUT_BYTES', '1.25'],
  ])('rejects %s=%j with a readable error naming the variable', (name, value) => {
    const msg = thrownMessage(() => runtimeConfigFromEnv({ [name]: value }));
    const lines = msg.split('\n');
    expect(lines[0]).toBe('invalid configuration:');
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(new RegExp(`^  ${name}: \\S`));
  });

  it('explains the expected CIDR form', () => {
    expect(thrownMessage(() => runtimeConfigFromEnv({ RUNBOX_NET_CIDR: '10.0.0.0/8' }))).toBe(
      'invalid configuration:\n  RUNBOX_NET_CIDR: an IPv4 CIDR from /16 to /24, e.g. 10.88.0.0/16',
    );
  });

  it('lists every invalid variable, one per line', () => {
    const msg = thrownMessage(() =>
      runtimeConfigFromEnv({ RUNBOX_DEFAULT_CPUS: 'x', RUNBOX_LOG_LEVEL: 'loud', RUNBOX_MAX_PIDS: '0', RUNBOX_RUNC: '/ok/runc' }),
    );
    const lines = msg.split('\n');
    expect(lines[0]).toBe('invalid configuration:');
    expect(lines.slice(1).map((l) => /^ {2}(\w+): /.exec(l)?.[1]).sort()).toEqual([
      'RUNBOX_DEFAULT_CPUS',
      'RUNBOX_LOG_LEVEL',
      'RUNBOX_MAX_PIDS',
    ]);
  });

  it('every variable of EnvSchema is documented in README.md', () => {
    const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const missing = Object.keys(EnvSchema.shape).filter((name) => !readme.includes(`\`${name}\``));
    expect(missing).toEqual([]);
  });
});
