import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isFilterProgram, readCachedFilter, seccompCacheFile, seccompCacheKey, writeCachedFilter } from '../../runtime/oci/seccomp-bpf.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-seccomp-cache-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const program = (n: number, fill = 1) => Buffer.alloc(n * 8, fill);

describe('the cached seccomp program', () => {
  it('a key per runc build, profile and architecture', () => {
    const a = seccompCacheKey('runc version 1.1.5\nlibseccomp: 2.5.4');
    expect(seccompCacheKey('runc version 1.1.5\nlibseccomp: 2.5.4\n')).toBe(a);
    expect(seccompCacheKey('runc version 1.1.6\nlibseccomp: 2.5.4')).not.toBe(a);
    expect(seccompCacheKey('runc version 1.1.5\nlibseccomp: 2.5.4', { other: 'profile' })).not.toBe(a);
    expect(seccompCacheKey('runc version 1.1.5\nlibseccomp: 2.5.4', undefined, 'arm64')).not.toBe(a);
  });

  it('only whole records, 1..4096 of them, are a program', () => {
    expect(isFilterProgram(program(1))).toBe(true);
    expect(isFilterProgram(program(4096))).toBe(true);
    expect(isFilterProgram(program(4097))).toBe(false);
    expect(isFilterProgram(Buffer.alloc(0))).toBe(false);
    expect(isFilterProgram(Buffer.alloc(12))).toBe(false);
  });

  it('round-trips; damage, truncation and a missing file read as none', async () => {
    const file = seccompCacheFile(dir, 'aaaa');
    await writeCachedFilter(file, program(10));
    expect(await readCachedFilter(file)).toEqual(program(10));
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    const raw = await fs.readFile(file);
    raw[40] = raw[40]! ^ 0xff;
    await fs.writeFile(file, raw);
    expect(await readCachedFilter(file)).toBeUndefined();
    await fs.writeFile(file, raw.subarray(0, 36));
    expect(await readCachedFilter(file)).toBeUndefined();
    expect(await readCachedFilter(path.join(dir, 'missing.bpf'))).toBeUndefined();
    await expect(writeCachedFilter(file, Buffer.alloc(7))).rejects.toThrow(/not a seccomp program/);
  });

  it('a program for a new key replaces the ones of older keys', async () => {
    await writeCachedFilter(seccompCacheFile(dir, 'bbbb'), program(3));
    await writeCachedFilter(seccompCacheFile(dir, 'cccc'), program(4));
    expect((await fs.readdir(dir)).sort()).toEqual(['seccomp-cccc.bpf']);
  });
});
