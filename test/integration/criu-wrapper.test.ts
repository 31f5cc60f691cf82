import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CRIU } from '../helpers/engine.js';

// The CRIU wrapper written by scripts/install-criu.sh keeps CRIU's kernel-feature cache on hosts
// whose /run is not a tmpfs (CRIU itself refuses to save it there): about 40 ms less per dump,
// restore and lazy-pages start.
const KDAT = '/run/criu.kdat';
const STAMP = '/run/runbox-criu.kdat.boot';
const runTmpfs = execFileSync('stat', ['-f', '-c', '%T', '/run']).toString().trim() === 'tmpfs';

/** Whether a CRIU run took its kernel features from the cache (CRIU logs to stderr at -v4). */
function loadsCache(): boolean {
  const r = spawnSync(CRIU, ['check', '-v4'], { encoding: 'utf8' });
  return r.stderr.includes(`Loaded kdat cache from ${KDAT}`);
}

describe.skipIf(runTmpfs)('CRIU wrapper: kernel-feature cache on a non-tmpfs /run', () => {
  it('CRIU loads the cache the wrapper made for this boot', async () => {
    expect(loadsCache()).toBe(true);
    const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    expect((await fs.readFile(STAMP, 'utf8')).trim()).toBe(bootId);
  });

  it('a cache from another boot is made again before CRIU reads it', async () => {
    await fs.writeFile(STAMP, '00000000-0000-0000-0000-000000000000\n');
    await fs.writeFile(KDAT, 'not a kdat cache from this boot');
    expect(loadsCache()).toBe(true);
    expect((await fs.stat(KDAT)).size).toBeGreaterThan(100);
  });

  it('a removed cache is made again', async () => {
    await fs.rm(KDAT, { force: true });
    expect(loadsCache()).toBe(true);
  });
});

describe('CRIU wrapper: its own stdio', () => {
  // runc records what the criu process it started has as fds 0-2 as the container's stdio (the
  // next checkpoint's descriptors.json). A wrapper that redirected one of them for a moment (a
  // `read <file` builtin) got that recorded, and a later restore left the agent's stdin on a pipe
  // nobody writes (issue 12's EPIPE). dash applies even a simple command's redirections in the
  // shell itself around the fork: every redirect must be in a subshell.
  it('never moves fd 0, 1 or 2 of its own process before it execs criu, the cache-making path included', async () => {
    const trace = path.join(os.tmpdir(), `runbox-wrapper-strace-${process.pid}.txt`);
    await fs.writeFile(STAMP, '00000000-0000-0000-0000-000000000000\n'); // the longest path: the cache is made again
    try {
      const r = spawnSync('strace', ['-qq', '-e', 'trace=dup2,dup3,fcntl,execve', '-o', trace, CRIU, '--version'], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      const calls = (await fs.readFile(trace, 'utf8')).split('\n');
      const untilCriu = calls.slice(0, calls.findIndex((l, i) => i > 0 && l.startsWith('execve(')));
      expect(untilCriu.length).toBeGreaterThan(0);
      expect(untilCriu.filter((l) => /^dup[23]\(\d+, [012][,)]/.test(l) || /^fcntl\(\d+, F_DUPFD(_CLOEXEC)?, [012]\)/.test(l))).toEqual([]);
      if (!runTmpfs) expect((await fs.readFile(STAMP, 'utf8')).trim()).toBe((await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim());
    } finally {
      await fs.rm(trace, { force: true });
    }
  });
});
