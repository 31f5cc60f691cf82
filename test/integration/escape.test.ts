import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testEngine, type TestEngine } from '../helpers/engine.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('escape');
});
afterAll(async () => {
  await t?.cleanup();
});

/** Runs a script as root in a fresh VPS; returns its combined output. */
async function attempt(script: string): Promise<string> {
  const r = await t.sh(`${script} 2>&1; echo "still-here rc=$?"`);
  expect(r.exitCode).toBe(0);
  return r.stdout + r.stderr;
}

describe('escape attempts by root inside a VPS fail', () => {
  it('cannot mount anything', async () => {
    const out = await attempt('mkdir -p /mnt/x && mount -t tmpfs none /mnt/x');
    expect(out).toMatch(/Operation not permitted|permission denied/i);
    expect(out).toMatch(/rc=[1-9]/);
  });

  it('cannot load kernel modules', async () => {
    const out = await attempt('echo not-a-module > /tmp/x.ko; insmod /tmp/x.ko');
    expect(out).toMatch(/Operation not permitted|not permitted/);
  });

  it('cannot reboot the host (and the VPS survives the attempt)', async () => {
    const out = await attempt('reboot -f');
    expect(out).toMatch(/still-here/);
    expect(out).toMatch(/Operation not permitted|rc=[1-9]/);
  });

  it('cannot open host block devices, even after mknod', async () => {
    const dev = fs.readdirSync('/sys/block').find((d) => !d.startsWith('loop') && !d.startsWith('ram')) ?? 'vda';
    const [maj, min] = fs.readFileSync(`/sys/block/${dev}/dev`, 'utf8').trim().split(':');
    const out = await attempt(`ls /dev; mknod /tmp/disk b ${maj} ${min}; head -c 512 /tmp/disk | wc -c`);
    expect(out).toMatch(/Operation not permitted/);
    expect(out).not.toMatch(new RegExp(`\\b${dev}\\b|\\bmem\\b|\\bkmsg\\b`));
  });

  it('cannot write /proc/sysrq-trigger or /proc/sys', async () => {
    const out = await attempt('echo h > /proc/sysrq-trigger; echo 1 > /proc/sys/kernel/panic; cat /proc/sys/kernel/panic');
    // On kernels without sysrq the file does not exist at all; where it exists runc makes it read-only.
    expect(out).toMatch(/sysrq-trigger: (Read-only file system|nonexistent directory|No such file or directory|Permission denied)/);
    expect(out).toMatch(/panic: Read-only file system/);
  });

  it('cannot write the cgroup filesystem (release_agent escape, CVE-2022-0492)', async () => {
    const out = await attempt(
      'ls /sys/fs/cgroup; for f in /sys/fs/cgroup/*/release_agent; do echo /evil > $f; done; mkdir /sys/fs/cgroup/memory/x',
    );
    expect(out).toMatch(/Read-only file system/);
    expect(out).not.toMatch(/rc=0/);
  });

  it('sees masked kernel interfaces as empty', async () => {
    const out = await attempt('head -c 16 /proc/kcore | wc -c; cat /proc/keys | wc -c; ls /sys/firmware | wc -l');
    expect(out.split('\n').slice(0, 3)).toEqual(['0', '0', '0']);
  });

  it('cannot read the kernel log or create user namespaces', async () => {
    const out = await attempt('dmesg | head -1; unshare -U -r id');
    expect(out).toMatch(/dmesg: klogctl: Operation not permitted/);
    expect(out).toMatch(/unshare: (unshare|unshare\(0x10000000\)): Operation not permitted/);
  });

  it('cannot kill its own PID 1 from inside', async () => {
    const out = await attempt('kill -9 1; sleep 0.2; cat /proc/1/cmdline');
    expect(out).toMatch(/\/\.runbox\/agent/);
  });

  it('has no dangerous capabilities and no_new_privs set', async () => {
    const out = await attempt('grep -E "^(CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/self/status');
    const caps = BigInt(`0x${/CapBnd:\s+([0-9a-f]+)/.exec(out)![1]}`);
    for (const [name, bit] of [['SYS_ADMIN', 21n], ['SYS_MODULE', 16n], ['SYS_BOOT', 22n], ['SYS_RAWIO', 17n], ['SYS_PTRACE', 19n], ['DAC_READ_SEARCH', 2n], ['SYS_TIME', 25n]] as const) {
      expect((caps >> bit) & 1n, name).toBe(0n);
    }
    expect(out).toMatch(/NoNewPrivs:\s+1/);
    expect(out).toMatch(/Seccomp:\s+2/);
  });
});
