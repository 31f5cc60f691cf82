import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../core/log.js';
import { startWithPipes } from '../../runtime/runc-vps.js';

const alive = async (pid: number) => {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && !/^\d+ \(.*\) Z/.test(stat);
};

describe('runc start deadline', () => {
  it('a run or restore that does not finish in time fails, and its whole process group is killed (CRIU with it)', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-deadline-'));
    try {
      const pids = path.join(dir, 'pids');
      // Stands for runc restore waiting on the CRIU it started: a shell and its child, both stuck.
      const argv = ['/bin/sh', '-c', `sleep 60 & echo $$ $! > ${pids}; wait`];
      const t0 = Date.now();
      await expect(startWithPipes(argv, createLogger('silent'), 500)).rejects.toMatchObject({ code: 'unavailable', message: expect.stringMatching(/did not finish within 0.5 s/) });
      expect(Date.now() - t0).toBeLessThan(5000);
      const [shell, child] = (await fs.readFile(pids, 'utf8')).trim().split(' ').map(Number);
      for (let i = 0; i < 50 && ((await alive(shell!)) || (await alive(child!))); i++) await new Promise((r) => setTimeout(r, 20));
      expect(await alive(shell!)).toBe(false);
      expect(await alive(child!)).toBe(false);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
