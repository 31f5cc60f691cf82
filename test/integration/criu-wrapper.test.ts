import fs from 'node:fs/promises';
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
