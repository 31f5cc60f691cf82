import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testEngine, type TestEngine } from '../helpers/engine.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('isolation');
});
afterAll(async () => {
  await t?.cleanup();
});

describe('a VPS is isolated', () => {
  it('runs its agent as PID 1 and shows only its own processes', async () => {
    const r = await t.sh('echo "self=$$"; cat /proc/1/cmdline | tr "\\0" " "; echo; ps -o pid,comm | tail -n +2 | wc -l');
    expect(r.exitCode).toBe(0);
    const [self, init, count] = r.stdout.trim().split('\n');
    expect(Number(self!.split('=')[1])).toBeLessThan(20); // a fresh pid namespace numbers from 1
    expect(init!.trim()).toBe('/.runbox/agent');
    // agent, sh, ps, tail, wc: nothing of the host
    expect(Number(count)).toBeLessThanOrEqual(5);
  });

  it('has the standard device nodes, a sticky world-writable /dev/shm and a working /dev/pts', async () => {
    const r = await t.sh(
      'ls /dev | sort | tr "\\n" " "; echo; stat -c %a /dev/shm; echo x > /dev/null && head -c 4 /dev/zero | wc -c; ' +
        'head -c 8 /dev/urandom | wc -c; stat -c %t:%T /dev/null; [ -c /dev/pts/ptmx ] && echo pts',
    );
    expect(r.exitCode).toBe(0);
    const [list, shmMode, zero, random, nullDev, pts] = r.stdout.trim().split('\n');
    for (const dev of ['full', 'null', 'ptmx', 'pts', 'random', 'shm', 'tty', 'urandom', 'zero', 'mqueue']) expect(list!.split(' ')).toContain(dev);
    expect([shmMode, zero, random, nullDev, pts]).toEqual(['1777', '4', '8', '1:3', 'pts']);
  });

  it('has its own hostname (UTS namespace)', async () => {
    const r = await t.sh('hostname; cat /proc/sys/kernel/hostname', { spec: { hostname: 'box-one' } });
    expect(r.stdout.trim().split('\n')).toEqual(['box-one', 'box-one']);
  });

  it('cannot change the hostname without CAP_SYS_ADMIN', async () => {
    const r = await t.sh('hostname evil 2>&1; hostname');
    expect(r.stdout).toMatch(/not permitted/i);
    expect(r.stdout.trim().split('\n').pop()).not.toBe('evil');
  });

  it('has its own IPC namespace: System V and POSIX objects of one VPS are invisible to another', async () => {
    const a = await t.create();
    const b = await t.create();
    try {
      const ra = t.engine.get(a.id)!.run({
        argv: ['sh', '-c', 'echo marker > /dev/shm/a-only && cat /proc/sysvipc/shm | wc -l && sleep 1'],
        timeoutSec: 10,
        outputBytes: 1000,
      });
      const out: string[] = [];
      const rb = await b.run({
        argv: ['sh', '-c', 'ls /dev/shm; cat /proc/sysvipc/shm | wc -l; cat /proc/sysvipc/msg | wc -l'],
        timeoutSec: 10,
        outputBytes: 1000,
        onOutput: (_s, d) => out.push(d.toString()),
      });
      await ra;
      expect(rb.exitCode).toBe(0);
      // Only the header lines: no segment or queue of the host or of VPS a.
      expect(out.join('').trim().split('\n')).toEqual(['1', '1']);
    } finally {
      await t.engine.destroy(a.id);
      await t.engine.destroy(b.id);
    }
  });

  it('writes go to its own layer: invisible to other VPSs and to the template', async () => {
    const a = await t.sh('echo secret > /etc/written-by-a; echo x > /tmp/a; cat /etc/written-by-a');
    expect(a.stdout.trim()).toBe('secret');
    const b = await t.sh('ls /etc/written-by-a /tmp/a 2>&1; true');
    expect(b.stdout).toMatch(/No such file/);
    const tpl = await t.base();
    await expect(fs.access(path.join(tpl.rootfs, 'etc/written-by-a'))).rejects.toThrow();
  });

  it('sees nothing of the host filesystem', async () => {
    const r = await t.sh('ls /; ls /home; cat /proc/mounts | cut -d" " -f2 | sort | tr "\\n" " "');
    expect(r.stdout).not.toMatch(/\bwork\b|\bvar\/lib\/runbox|runbox-test/);
    expect(r.stdout).toMatch(/\/sys\/fs\/cgroup/);
  });

  it('runs as a non-root user from the template with --user', async () => {
    const r = await t.sh('id -u; id -g; id -Gn; echo $HOME; touch /root/x 2>&1; true', { user: 'runbox' });
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(0, 4)).toEqual(['1000', '1000', 'runbox users', '/home/runbox']);
    expect(lines[4]).toMatch(/Permission denied/);
  });

  it('runs as uid:gid and as nobody', async () => {
    expect((await t.sh('id -u; id -g', { user: '65534:65534' })).stdout.trim()).toBe('65534\n65534');
    expect((await t.sh('id -un', { user: 'nobody' })).stdout.trim()).toBe('nobody');
  });

  it('reports an unknown user as a start failure', async () => {
    const r = await t.run(['true'], { user: 'no-such-user' });
    expect(r.error?.code).toBe('start_failed');
    expect(r.error?.message).toMatch(/unknown user/);
    expect(r.exitCode).toBe(126);
  });

  it('reports a missing command as exit 127', async () => {
    const r = await t.run(['/bin/definitely-not-here']);
    expect(r.exitCode).toBe(127);
    expect(r.error?.message).toMatch(/No such file/);
  });

  it('passes env, workdir and stdin', async () => {
    const r = await t.run(['sh', '-c', 'echo "$GREETING from $(pwd)"; cat; env | sort | cut -d= -f1 | tr "\\n" " "'], {
      env: { GREETING: 'hello' },
      workdir: '/tmp',
      stdin: Buffer.from('piped input\n'),
    });
    expect(r.stdout).toContain('hello from /tmp\npiped input\n');
    expect(r.stdout.trim().split('\n').pop()!.trim().split(' ')).toEqual(['GREETING', 'HOME', 'PATH', 'PWD', 'SHLVL']);
  });

  it('writes files through the agent, refusing a planted symlink', async () => {
    const r = await t.run(['sh', '-c', 'cat /work/in.txt; ls -l /work/run.sh | cut -c1-10; /work/run.sh'], {
      inside: async (vps) => {
        await vps.writeFile('/work/in.txt', Buffer.from('file content\n'));
        await vps.writeFile('/work/run.sh', Buffer.from('#!/bin/sh\necho script ran\n'), 0o755);
      },
    });
    expect(r.stdout).toBe('file content\n-rwxr-xr-x\nscript ran\n');
  });
});
