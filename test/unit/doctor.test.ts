import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatDoctor, nonRootCheckpointCheck, ociRuntimeCheck, parseCriuMajor, runDoctor, usernsCheck, type DoctorCheck } from '../../runtime/host/doctor.js';

describe('formatDoctor', () => {
  it('prints one line per check with marks and fix hints, then a summary', () => {
    const checks: DoctorCheck[] = [
      { name: 'running as root', ok: true, detail: 'uid 0' },
      { name: 'overlayfs', ok: false, detail: 'not in /proc/filesystems', fix: 'modprobe overlay' },
      { name: 'user namespaces', ok: false, optional: true, detail: 'disabled', fix: 'sysctl user.max_user_namespaces=15000' },
    ];
    const lines = formatDoctor(checks).split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toBe('✓ running as root: uid 0');
    expect(lines[1]).toBe('✗ overlayfs: not in /proc/filesystems (fix: modprobe overlay)');
    expect(lines[2]).toContain('✗ user namespaces: disabled [optional]');
    expect(lines[2]).toContain('fix: sysctl');
    expect(lines[3]).toBe('1 required check failed.');
  });

  it('does not show fix hints for passing checks and says when all required checks pass', () => {
    const out = formatDoctor([
      { name: 'a', ok: true, detail: 'fine', fix: 'never shown' },
      { name: 'b', ok: false, optional: true, detail: 'off' },
    ]);
    expect(out).not.toContain('never shown');
    expect(out.split('\n').at(-1)).toBe('All required checks passed (1 optional feature missing).');
  });
});

describe('nonRootCheckpointCheck', () => {
  it('says what a host without CAP_SYS_RESOURCE cannot checkpoint, and what happens to such jobs', () => {
    expect(nonRootCheckpointCheck(true)).toMatchObject({ ok: true, optional: true });
    const off = nonRootCheckpointCheck(false);
    expect(off).toMatchObject({ ok: false, optional: true });
    expect(off.detail).toMatch(/non-root user .* cannot be checkpointed or moved here.*checkpoint_unsupported/);
    // In user namespaces host root holds the capability over the VPS's ids.
    expect(nonRootCheckpointCheck(false, true)).toMatchObject({ ok: true, detail: expect.stringMatching(/user namespaces/) });
  });
});

describe('usernsCheck', () => {
  it('reports the setting, what happens where the host cannot, and why', () => {
    expect(usernsCheck('off', undefined, undefined)).toMatchObject({ ok: true, optional: true, detail: expect.stringMatching(/host root/) });
    expect(usernsCheck('auto', undefined, undefined)).toMatchObject({ ok: true, detail: expect.stringMatching(/own range/) });
    const noIdmap = usernsCheck('auto', undefined, 'mount_setattr: Invalid argument');
    expect(noIdmap).toMatchObject({ ok: false, optional: true, detail: expect.stringMatching(/without user namespaces.*idmapped mounts fail: mount_setattr/) });
    expect(usernsCheck('on', 'unshare: Operation not permitted', undefined)).toMatchObject({
      ok: false,
      optional: false,
      detail: expect.stringMatching(/VPS creation fails.*user namespaces cannot be created/),
      fix: expect.stringMatching(/max_user_namespaces/),
    });
  });
});

describe('parseCriuMajor', () => {
  it('reads the major version from criu --version output', () => {
    expect(parseCriuMajor('Version: 4.1.1\n')).toBe(4);
    expect(parseCriuMajor('Version: 3.17.1')).toBe(3);
    expect(parseCriuMajor('criu: not found')).toBeNull();
  });
});

describe('runDoctor', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'runbox-doctor-'));
  afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

  it('returns a check list without throwing, with the root check ok on this machine', async () => {
    const checks = await runDoctor({
      criuPath: '/nonexistent/criu', // a failed probe must become a failed check, not an exception
      stateDir,
      agentPath: '/nonexistent/runbox-agent',
    });
    const byName = new Map(checks.map((c) => [c.name, c]));
    expect(byName.get('running as root')?.ok).toBe(true);
    expect(byName.get('state dir writable')?.ok).toBe(true);
    expect(byName.get('criu version')?.ok).toBe(false);
    expect(byName.get('criu version')?.fix).toBeTruthy();
    expect(byName.get('agent binary')?.ok).toBe(false);
    for (const c of checks) {
      expect(typeof c.name).toBe('string');
      expect(typeof c.ok).toBe('boolean');
      expect(typeof c.detail).toBe('string');
    }
    expect(formatDoctor(checks).split('\n')).toHaveLength(checks.length + 1);
  }, 20_000);
});

describe('ociRuntimeCheck', () => {
  it('says which runtime VPSs get and why; a forced crun that cannot run fails with the reason', () => {
    expect(ociRuntimeCheck({ runtime: 'runc' })).toMatchObject({ ok: true, detail: expect.stringMatching(/^runc \(runc\): RUNBOX_RUNTIME=runc/) });
    expect(ociRuntimeCheck({ runtime: 'auto', crunPath: '/nonexistent/crun' })).toMatchObject({ ok: true, detail: expect.stringMatching(/^runc .*not an executable/) });
    expect(ociRuntimeCheck({ runtime: 'crun', crunPath: '/nonexistent/crun' })).toMatchObject({ ok: false, detail: expect.stringMatching(/RUNBOX_RUNTIME=crun, but/), fix: expect.any(String) });
  });
});
