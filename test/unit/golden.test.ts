import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { pruneGolden } from '../../runtime/storage/layer.js';

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
});
