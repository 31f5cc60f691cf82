import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveTemplate } from '../../runtime/templates/store.js';
import { USERNS_FIRST_HOST_ID, USERNS_SIZE, VPS_USER_LIMITS } from '../../runtime/userns/ranges.js';
import { newId } from '../../core/ids.js';
import { checkpoint, dumpForMove, restore } from '../../runtime/checkpoint/checkpoint.js';
import { hostSnapshot } from '../helpers/host.js';
import { waitFor } from '../helpers/net.js';
import { TEMPLATES_DIR, testEngine, type TestEngine } from '../helpers/engine.js';

/**
 * Root in a VPS is not root on the host (issue 15): every VPS has its own user namespace and its
 * own range of host ids. These checks look from the host, where a mapping shows.
 */
let t: TestEngine;
/** The same host without user namespaces: what the checks below must tell apart. */
let plain: TestEngine;
beforeAll(async () => {
  // On, whatever RUNBOX_USERNS the suite runs under (the rest of it follows the variable).
  t = await testEngine('userns', { userns: 'on' });
  plain = await testEngine('userns-off', { userns: 'off' });
});
afterAll(async () => {
  await t?.cleanup();
  await plain?.cleanup();
});

/** Uid line of /proc/<pid>/status: real, effective, saved, fs. */
async function hostUids(pid: number): Promise<number[]> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  return /^Uid:\s+(.*)$/m.exec(status)![1]!.trim().split(/\s+/).map(Number);
}

/**
 * Two python VPSs of `e`, both running as root inside: `hog` runs first and holds on (until
 * killed) once it printed `marker`; then `other` runs to its end. Their outputs, and other's exit.
 */
async function hogThenOther(e: TestEngine, hog: string, other: string, marker: string): Promise<{ hog: string; other: string; otherExit: number | null }> {
  const python = await resolveTemplate(TEMPLATES_DIR, 'python');
  const [h, o] = [await e.create({ template: python }), await e.create({ template: python })];
  try {
    const hogOut: Buffer[] = [];
    const hogRun = h.run({ argv: ['python3', '-c', hog], user: 'root', timeoutSec: 30, outputBytes: 1 << 20, onOutput: (_s, d) => hogOut.push(Buffer.from(d)) });
    await waitFor(() => Buffer.concat(hogOut).toString().includes(marker), `the hog's "${marker}"`, 10_000);
    const otherOut: Buffer[] = [];
    const r = await o.run({ argv: ['python3', '-c', other], user: 'root', timeoutSec: 30, outputBytes: 1 << 20, onOutput: (_s, d) => otherOut.push(Buffer.from(d)) });
    await h.killAll();
    await hogRun;
    return { hog: Buffer.concat(hogOut).toString(), other: Buffer.concat(otherOut).toString(), otherExit: r.exitCode };
  } finally {
    await e.engine.destroy(h.id);
    await e.engine.destroy(o.id);
  }
}

describe('user namespaces (RUNBOX_USERNS, default auto)', () => {
  it('work on this host (auto takes them)', async () => {
    expect(await t.engine.usernsEnabled()).toBe(true);
    const auto = await testEngine('userns-auto', { userns: 'auto' });
    try {
      expect(await auto.engine.usernsEnabled()).toBe(true);
    } finally {
      await auto.cleanup();
    }
  });

  it("runs a VPS's processes as its own unprivileged host ids, with root inside mapped to them", async () => {
    const a = await t.create();
    const b = await t.create();
    try {
      const [ra, rb] = [(await t.engine.readRecord(a.id))!.userns!, (await t.engine.readRecord(b.id))!.userns!];
      for (const r of [ra, rb]) {
        expect(r.count).toBe(USERNS_SIZE);
        expect(r.hostId).toBeGreaterThanOrEqual(USERNS_FIRST_HOST_ID);
      }
      // Distinct and not overlapping.
      expect(Math.abs(ra.hostId - rb.hostId)).toBeGreaterThanOrEqual(USERNS_SIZE);
      // The init (the agent, root inside) is the range's first id on the host, not 0.
      expect(await hostUids(a.initPid!)).toEqual([ra.hostId, ra.hostId, ra.hostId, ra.hostId]);
      // And inside: root, with the map naming the same range.
      const out: Buffer[] = [];
      const r = await a.run({
        argv: ['sh', '-c', 'id -u; cat /proc/self/uid_map /proc/self/gid_map; sleep 0.3 & echo $!; wait'],
        timeoutSec: 30,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => out.push(Buffer.from(d)),
      });
      expect(r.exitCode).toBe(0);
      const lines = Buffer.concat(out).toString().trim().split('\n').map((l) => l.trim().split(/\s+/).join(' '));
      expect(lines.slice(0, 3)).toEqual(['0', `0 ${ra.hostId} ${USERNS_SIZE}`, `0 ${ra.hostId} ${USERNS_SIZE}`]);
    } finally {
      await t.engine.destroy(a.id);
      await t.engine.destroy(b.id);
    }
  });

  it('shows a job process of a non-root user inside as that user plus the base on the host', async () => {
    const vps = await t.create();
    try {
      const pidFile = '/tmp/job.pid';
      const run = vps.run({ argv: ['sh', '-c', `echo $$ > ${pidFile}; sleep 3`], user: '1000:1000', timeoutSec: 30, outputBytes: 1 << 20 });
      const base = (await t.engine.readRecord(vps.id))!.userns!.hostId;
      // The agent's child runs as 1000 inside: find it among the VPS's host processes.
      let uids: number[] | undefined;
      for (let i = 0; i < 100 && !uids; i++) {
        const procs = (await fs.readFile(path.join('/sys/fs/cgroup/pids', t.engine.layout.vps(vps.id).cgroupsPath, 'cgroup.procs'), 'utf8').catch(() => ''))
          .split('\n')
          .filter(Boolean)
          .map(Number);
        for (const pid of procs) {
          const u = await hostUids(pid).catch(() => undefined);
          if (u && u[0] !== base) uids = u;
        }
        if (!uids) await new Promise((r) => setTimeout(r, 30));
      }
      expect(uids).toEqual([base + 1000, base + 1000, base + 1000, base + 1000]);
      await vps.killAll();
      await run;
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it("stores a file made by root inside as the VPS's root on the host, and as 0 on its disk image", async () => {
    const vps = await t.create();
    const p = t.engine.layout.vps(vps.id);
    try {
      const base = (await t.engine.readRecord(vps.id))!.userns!.hostId;
      const r = await vps.run({ argv: ['sh', '-c', 'echo x > /root-made; chown 1000:1000 /root-made2 2>/dev/null; echo y > /user-made; chown 1000:1000 /user-made'], timeoutSec: 30, outputBytes: 1 << 20 });
      expect(r.exitCode).toBe(0);
      const viaRoot = await fs.stat(path.join(p.rootfs, 'root-made'));
      expect([viaRoot.uid, viaRoot.gid]).toEqual([base, base]);
      expect((await fs.stat(path.join(p.rootfs, 'user-made'))).uid).toBe(base + 1000);
      // The disk keeps the ids the VPS sees (a disk that moves to another range stays right).
      const onDisk = await fs.stat(path.join(p.layerMount, 'upper', 'root-made'));
      expect([onDisk.uid, onDisk.gid]).toEqual([0, 0]);
      expect((await fs.stat(path.join(p.layerMount, 'upper', 'user-made'))).uid).toBe(1000);
      // The template's files appear as the VPS's, unchanged underneath.
      expect((await fs.stat(path.join(p.rootfs, 'bin'))).uid).toBe(base);
      const tpl = await resolveTemplate(TEMPLATES_DIR, 'base');
      expect((await fs.stat(path.join(tpl.rootfs, 'bin'))).uid).toBe(0);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it("keeps other host users out of a VPS's files: its root dir is its root's alone", async () => {
    const vps = await t.create();
    try {
      const p = t.engine.layout.vps(vps.id);
      const base = (await t.engine.readRecord(vps.id))!.userns!.hostId;
      const dir = await fs.stat(p.rootDir);
      expect([dir.uid, dir.mode & 0o777]).toEqual([base, 0o700]);
      expect((await fs.stat(t.engine.layout.rootsDir)).mode & 0o777).toBe(0o711);
      // The state dir holding its disk stays closed.
      expect((await fs.stat(t.stateDir)).mode & 0o077).toBe(0);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it.each([
    ['in user namespaces', true],
    ['without (the contrast: both VPSs are host root)', false],
  ] as const)("pipe pages, a per-user count: one VPS that exhausts its user's leaves another's alone %s", async (_label, userns) => {
    // fs.pipe-user-pages-soft (16384 pages here) is counted per host user: once a user holds that
    // many pipe pages, each new pipe of that user gets 2 pages (this kernel) instead of 16. Both
    // VPSs run python as root inside.
    const soft = Number(await fs.readFile('/proc/sys/fs/pipe-user-pages-soft', 'utf8'));
    const script = (pipes: number, hold: number) =>
      `import os, fcntl, time\nkeep = [os.pipe() for _ in range(${pipes})]\nr, w = os.pipe()\nprint("size=%d" % fcntl.fcntl(w, 1032), flush=True)\ntime.sleep(${hold})\n`;
    const r = await hogThenOther(userns ? t : plain, script(Math.ceil(soft / 16) + 64, 20), script(0, 0), 'size=');
    // The hog is over its user's budget: its own new pipe is small.
    const hogSize = Number(/size=(\d+)/.exec(r.hog)?.[1]);
    expect(hogSize).toBeGreaterThan(0);
    expect(hogSize).toBeLessThan(65536);
    expect(r.otherExit).toBe(0);
    const otherSize = Number(/size=(\d+)/.exec(r.other)?.[1]);
    if (userns) expect(otherSize).toBe(65536);
    else expect(otherSize).toBe(hogSize); // the same host user: the hog's exhaustion is the other's too
  });

  it("caps each VPS's inotify instances in its own user namespace: one that takes all of its own leaves another its share", async () => {
    // inotify counts are kept up the user-namespace tree to its owner (host root): without a cap of
    // each VPS's own, the first VPS takes host root's budget (fs.inotify.max_user_instances) from
    // every other VPS. Without user namespaces there is no cap of its own (the hog takes 1000).
    const script = (n: number, hold: number) =>
      `import ctypes, time\nlibc = ctypes.CDLL(None, use_errno=True)\nfds = []\nfor i in range(${n}):\n    fd = libc.inotify_init()\n    if fd < 0:\n        break\n    fds.append(fd)\nprint("made", len(fds), flush=True)\ntime.sleep(${hold})\n`;
    const r = await hogThenOther(t, script(1000, 20), script(100, 0), 'made');
    expect(r.hog).toBe(`made ${VPS_USER_LIMITS.max_inotify_instances}\n`);
    expect(r.otherExit).toBe(0);
    expect(r.other).toBe('made 100\n');
  });

  it("keeps the VPS's caps out of its own reach, and puts them back after a restore", async () => {
    const vps = await t.create();
    const out: Buffer[] = [];
    try {
      const run = vps.run({
        argv: ['sh', '-c', '(echo 100000 > /proc/sys/user/max_inotify_instances) 2>&1 | grep -q . && echo refused; cat /proc/sys/user/max_inotify_instances; sleep 1; cat /proc/sys/user/max_inotify_instances /proc/sys/user/max_inotify_watches'],
        timeoutSec: 30,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => out.push(Buffer.from(d)),
      });
      await waitFor(() => Buffer.concat(out).toString().split('\n').length >= 2, "the caps job's first line", 4000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      await restore(t.engine, vps, cp.imagePath);
      expect((await run).exitCode).toBe(0);
      const caps = VPS_USER_LIMITS;
      // Refused (read-only /proc/sys, and no CAP_SYS_RESOURCE in its namespace), the cap in force before and after.
      expect(Buffer.concat(out).toString().trim().split('\n')).toEqual(['refused', String(caps.max_inotify_instances), String(caps.max_inotify_instances), String(caps.max_inotify_watches)]);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it('checkpoints and restores a job of a non-root user (CRIU reads its rlimits through its user namespace, owned by host root)', async () => {
    // Without a user namespace CRIU needs CAP_SYS_RESOURCE for that, which root lacks on these
    // hosts (core/checkpointable.ts); in one, host root holds every capability over the VPS's ids.
    const vps = await t.create({ template: await resolveTemplate(TEMPLATES_DIR, 'python'), network: 'private' });
    const out: Buffer[] = [];
    try {
      const run = vps.run({
        argv: ['sh', '-c', 'id -u; i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.05; done'],
        user: '1000',
        timeoutSec: 30,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => out.push(Buffer.from(d)),
      });
      await waitFor(() => Buffer.concat(out).toString().split('\n').length >= 6, "the non-root job's first five lines", 4000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      await restore(t.engine, vps, cp.imagePath);
      const r = await run;
      expect(r.exitCode).toBe(0);
      const lines = Buffer.concat(out).toString().trim().split('\n');
      expect(lines).toEqual(['1000', ...Array.from({ length: 30 }, (_, i) => String(i))]);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it("refuses a checkpoint whose user namespace image is not one runbox writes, or of the other kind, before any restore, and leaves nothing", async () => {
    const dumpOf = async (e: TestEngine) => {
      const vps = await e.create({ network: 'private' });
      const run = vps.run({ argv: ['sleep', '30'], timeoutSec: 60, outputBytes: 1 << 20 });
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-userns-cp-'));
      const dumped = await dumpForMove(e.engine, vps, dir);
      vps.handOver();
      await run;
      await e.engine.destroy(vps.id);
      return { dir, spec: vps.info().spec, dumped };
    };
    const ours = await dumpOf(t);
    const theirs = await dumpOf(plain);
    try {
      const restoreOn = (e: TestEngine, d: typeof ours) =>
        e.engine.create(newId(), d.spec, { imagesDir: d.dumped.imagesDir, disk: { path: d.dumped.diskImage, move: false }, address: undefined });
      const before = [await hostSnapshot(t.engine), await hostSnapshot(plain.engine)];
      // Kinds do not cross.
      await expect(restoreOn(plain, ours)).rejects.toMatchObject({ code: 'checkpoint_incompatible' });
      await expect(restoreOn(t, theirs)).rejects.toMatchObject({ code: 'checkpoint_incompatible' });
      // A forged image: a second uid extent (ids beyond the VPS's range), then one mapping from 1.
      const img = (await fs.readdir(ours.dumped.imagesDir)).find((n) => /^userns-\d+\.img$/.test(n))!;
      const file = path.join(ours.dumped.imagesDir, img);
      const good = await fs.readFile(file);
      const entry = good.subarray(12);
      const extent = entry.subarray(0, 14); // 0a 0c <12-byte uid extent>
      const twice = Buffer.concat([extent, entry]);
      const head = Buffer.from(good.subarray(0, 12));
      head.writeUInt32LE(twice.length, 8);
      await fs.writeFile(file, Buffer.concat([head, twice]));
      await expect(restoreOn(t, ours)).rejects.toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringMatching(/more than one uid extent/) });
      const fromOne = Buffer.from(good);
      fromOne[12 + 3] = 1; // uid extent: first = 1 (0a 0c 08 <first> ...)
      await fs.writeFile(file, fromOne);
      await expect(restoreOn(t, ours)).rejects.toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringMatching(/does not start at 0/) });
      expect([await hostSnapshot(t.engine), await hostSnapshot(plain.engine)]).toEqual(before);
    } finally {
      for (const d of [ours, theirs]) {
        await d.dumped.releaseDisk();
        await fs.rm(d.dir, { recursive: true, force: true });
      }
    }
  });

  it('gives every id range back when its VPS goes, and gc frees the ranges of VPSs that are gone', async () => {
    const before = await t.engine.usernsRanges.held();
    const vps = await t.create();
    const lease = (await t.engine.readRecord(vps.id))!.userns!;
    expect((await t.engine.usernsRanges.held()).map((h) => h.slot)).toContain(lease.slot);
    await t.engine.destroy(vps.id);
    expect(await t.engine.usernsRanges.held()).toEqual(before);
    // A slot whose VPS never got a record (a crash in between): gc frees it.
    const orphan = await t.engine.usernsRanges.allocate(newId());
    const { gc } = await import('../../runtime/gc.js');
    const report = await gc(t.engine);
    expect(report.userns).toContain(orphan.slot);
    expect(await t.engine.usernsRanges.held()).toEqual(before);
  });
});
