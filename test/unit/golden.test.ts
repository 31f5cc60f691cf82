import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { goldenImage, isMountPoint, pruneGolden, staleGoldenWork } from '../../runtime/storage/layer.js';
import { mount, umount } from '../../runtime/native/sys.js';
import { selfRef } from '../../runtime/host/proc.js';

describe('golden disk images', () => {
  it('keeps the most recently used ones, one per size, and removes the rest', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-golden-'));
    try {
      for (let i = 1; i <= 20; i++) {
        const f = path.join(dir, `layer-${i}m.ext4`);
        await fs.writeFile(f, '');
        await fs.utimes(f, new Date(i * 1000), new Date(i * 1000)); // size i was used at second i
      }
      await fs.writeFile(path.join(dir, 'unrelated'), '');
      const removed = await pruneGolden(dir, 16);
      expect(removed.map((f) => path.basename(f)).sort()).toEqual(['layer-1m.ext4', 'layer-2m.ext4', 'layer-3m.ext4', 'layer-4m.ext4']);
      expect((await fs.readdir(dir)).length).toBe(17);
      expect(await pruneGolden(dir, 16)).toEqual([]);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a variant holds its upper/work dirs, mount points and files, owned by 0, in a file of its own', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-golden-'));
    const mnt = path.join(dir, 'look');
    try {
      const file = await goldenImage({ cacheDir: dir }, 16, { tag: 'test', dirs: [['/sys', 0o555], ['/sys/firmware', 0o755]], files: ['/dev/null'] });
      expect(path.basename(file)).toBe('layer-16m-test.ext4');
      expect(await fs.readdir(dir)).toEqual(['layer-16m-test.ext4']); // no temporary left
      await fs.mkdir(mnt);
      const { mountLoop } = await import('../../runtime/native/sys.js');
      await mountLoop(file, mnt, 'ext4', { readOnly: true });
      try {
        expect((await fs.readdir(mnt)).sort()).toEqual(['lost+found', 'upper', 'work']);
        expect((await fs.stat(path.join(mnt, 'upper/sys'))).mode & 0o777).toBe(0o555);
        expect((await fs.stat(path.join(mnt, 'upper/sys/firmware'))).isDirectory()).toBe(true);
        const f = await fs.stat(path.join(mnt, 'upper/dev/null'));
        expect([f.isFile(), f.size, f.uid]).toEqual([true, 0, 0]);
      } finally {
        await umount(mnt);
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("gc removes what a dead process left while making one (its temporary image, the mount it filled it through), not a live one's", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-golden-'));
    try {
      const me = selfRef();
      const dead = path.join(dir, 'layer-64m-userns.ext4.999999999-1.abcd.tmp');
      const deadMount = `${dead}.mnt-Xy12ab`;
      const live = path.join(dir, `layer-64m.ext4.${me.pid}-${me.start}.efgh.tmp`);
      await fs.writeFile(dead, '');
      await fs.mkdir(deadMount);
      await mount('tmpfs', deadMount, 'tmpfs', { data: 'size=1m' });
      await fs.writeFile(live, '');
      await fs.writeFile(path.join(dir, 'layer-64m.ext4'), '');
      const removed = await staleGoldenWork(dir);
      expect(removed.sort()).toEqual([dead, deadMount].sort());
      expect(await isMountPoint(deadMount)).toBe(false);
      expect((await fs.readdir(dir)).sort()).toEqual([path.basename(live), 'layer-64m.ext4'].sort());
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
