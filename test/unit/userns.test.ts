import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { prepareUsernsImages, readUsernsImage, rewriteUsernsImage } from '../../runtime/userns/criu-image.js';
import { isSlotLease, slotMapping, USERNS_FIRST_HOST_ID, USERNS_SIZE, USERNS_SLOTS, UsernsRanges } from '../../runtime/userns/ranges.js';
import { usernsPostCopyRefusal } from '../../runtime/checkpoint/lazy.js';
import { vethIndex } from '../../runtime/net/network.js';

/** userns-14.img as CRIU 4.2.1 wrote it for a VPS in slot 11156 (0 → 1804861440, 65536 ids). */
const fixture = () => Buffer.from('1943565406494755' + '1c000000' + '0a0c0800108080d0dc0618808004' + '120c0800108080d0dc0618808004', 'hex');
const IMAGE = fixture();

describe('CRIU user namespace images', () => {
  it('reads the maps CRIU wrote', () => {
    const hostId = slotMapping(11156).hostId;
    expect(hostId).toBe(1804861440);
    expect(readUsernsImage(fixture())).toEqual({ uid: { hostId, count: 65536 }, gid: { hostId, count: 65536 } });
  });

  it('rewrites both maps to other host ids, and reads back what it wrote', () => {
    const m = slotMapping(16383);
    const out = rewriteUsernsImage(fixture(), m);
    expect(readUsernsImage(out)).toEqual({ uid: { hostId: m.hostId, count: USERNS_SIZE }, gid: { hostId: m.hostId, count: USERNS_SIZE } });
    // The same ids give the same bytes (an in-place restore changes nothing).
    expect(rewriteUsernsImage(fixture(), slotMapping(11156)).equals(fixture())).toBe(true);
  });

  it('refuses what is not a runbox VPS\'s image, with checkpoint_incompatible', () => {
    const bad = (b: Buffer) => expect(() => readUsernsImage(b)).toThrow(expect.objectContaining({ code: 'checkpoint_incompatible' }));
    bad(Buffer.alloc(0));
    bad(IMAGE.subarray(0, 20)); // truncated
    const wrongMagic = fixture();
    wrongMagic.writeUInt32LE(0x12345678, 4);
    bad(wrongMagic);
    const wrongSize = fixture();
    wrongSize.writeUInt32LE(27, 8);
    bad(wrongSize);
    // A map that does not start at 0 (first = 1).
    bad(Buffer.from('1943565406494755' + '1c000000' + '0a0c0801108080d0dc0618808004' + '120c0800108080d0dc0618808004', 'hex'));
    // Two uid extents.
    bad(Buffer.from('1943565406494755' + '2a000000' + '0a0c0800108080d0dc0618808004'.repeat(2) + '120c0800108080d0dc0618808004', 'hex'));
    // No gid map.
    bad(Buffer.from('1943565406494755' + '0e000000' + '0a0c0800108080d0dc0618808004', 'hex'));
    // A varint that runs past the end, and one beyond 32 bits.
    bad(Buffer.from('1943565406494755' + '02000000' + '0aff', 'hex'));
    bad(Buffer.from('1943565406494755' + '11000000' + '0a0f08001080808080801018808004' + '', 'hex'));
    // A different id count than the VPS has here.
    expect(() => rewriteUsernsImage(fixture(), { hostId: 2 ** 30, count: 4096 })).toThrow(expect.objectContaining({ code: 'checkpoint_incompatible' }));
  });

  it('remaps the one image of a checkpoint dir and gives the dir to the VPS root, and refuses a dir without or with two, or one with an image where none may be', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-userns-img-'));
    try {
      await prepareUsernsImages(dir, undefined); // no user namespace: fine without one
      await expect(prepareUsernsImages(dir, slotMapping(3))).rejects.toMatchObject({ code: 'checkpoint_incompatible' });
      await fs.writeFile(path.join(dir, 'userns-14.img'), fixture(), { mode: 0o600 });
      await expect(prepareUsernsImages(dir, undefined)).rejects.toMatchObject({ code: 'checkpoint_incompatible' }); // has one
      await prepareUsernsImages(dir, slotMapping(3));
      expect(readUsernsImage(await fs.readFile(path.join(dir, 'userns-14.img'))).uid.hostId).toBe(slotMapping(3).hostId);
      // Given to the VPS's root, readable.
      const st = await fs.stat(path.join(dir, 'userns-14.img'));
      expect([st.uid, st.mode & 0o777]).toEqual([slotMapping(3).hostId, 0o644]);
      await fs.writeFile(path.join(dir, 'userns-15.img'), fixture());
      await expect(prepareUsernsImages(dir, slotMapping(3))).rejects.toMatchObject({ code: 'checkpoint_incompatible' });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('user namespace id ranges', () => {
  it('maps slots to distinct ranges above 2^30 and below 2^31', () => {
    expect(slotMapping(0)).toEqual({ slot: 0, hostId: USERNS_FIRST_HOST_ID, count: USERNS_SIZE });
    const last = slotMapping(USERNS_SLOTS - 1);
    expect(last.hostId + last.count).toBe(2 ** 31);
    expect(() => slotMapping(USERNS_SLOTS)).toThrow();
    expect(() => slotMapping(-1)).toThrow();
    expect(isSlotLease(slotMapping(7))).toBe(true);
    expect(isSlotLease({ slot: 7, hostId: 0, count: USERNS_SIZE })).toBe(false); // a record naming host root
    expect(isSlotLease({ slot: 7, hostId: slotMapping(7).hostId, count: 2 ** 32 })).toBe(false);
  });

  it('allocates each slot once machine-wide, gives it back only to its owner, and lists an instance\'s', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-userns-slots-'));
    try {
      let r = 0;
      const seq = () => (r++ % 2) * 0.5; // two instances that start probing at the same slots
      const a = new UsernsRanges('aaaaaa', dir, seq);
      const b = new UsernsRanges('bbbbbb', dir, seq);
      const got = await Promise.all([a.allocate('vps1'), b.allocate('vps2'), a.allocate('vps3'), b.allocate('vps4')]);
      expect(new Set(got.map((g) => g.slot)).size).toBe(4);
      await b.release(got[0]!.slot, 'vps1'); // not b's: kept
      expect((await a.held()).map((h) => h.vpsId).sort()).toEqual(['vps1', 'vps3']);
      await a.release(got[0]!.slot, 'vps1');
      await a.release(got[0]!.slot, 'vps1'); // idempotent
      expect((await a.held()).map((h) => h.vpsId)).toEqual(['vps3']);
      expect((await b.held()).map((h) => h.vpsId).sort()).toEqual(['vps2', 'vps4']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('user namespaces and the rest', () => {
  it('post-copy is refused for userns VPSs unless unprivileged userfaultfd is on', () => {
    expect(usernsPostCopyRefusal('1')).toBeUndefined();
    expect(usernsPostCopyRefusal('0')).toMatch(/vm\.unprivileged_userfaultfd=1 \(it is 0/);
    expect(usernsPostCopyRefusal('')).toMatch(/it is unknown/);
  });

  it('gives veth ends high interface indexes, distinct per end and VPS', () => {
    const idx = [vethIndex('a1b2c3d4', 'vps'), vethIndex('a1b2c3d4', 'host'), vethIndex('a1b2c3d5', 'vps')];
    for (const i of idx) {
      expect(i).toBeGreaterThanOrEqual(2 ** 30);
      expect(i).toBeLessThan(2 ** 31);
    }
    expect(new Set(idx).size).toBe(3);
    expect(vethIndex('a1b2c3d4', 'vps')).toBe(idx[0]);
  });
});
