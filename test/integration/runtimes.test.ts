import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import os from 'node:os';
import path from 'node:path';
import { checkpoint, restore, snapshot } from '../../runtime/checkpoint/checkpoint.js';
import { newId } from '../../core/ids.js';
import { runcList } from '../../runtime/oci/runc.js';
import { resolveOciRuntime, type OciRuntimeKind } from '../../runtime/oci/runtime-choice.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { hostSnapshot } from '../helpers/host.js';
import { waitFor } from '../helpers/net.js';

/**
 * The same VPS behaviour under each OCI runtime runbox can use (oci/runtime-choice.ts): whichever
 * one a host picks, a VPS is made, isolated, limited, checkpointed and removed alike. The rest of
 * the suite runs under the default (RUNBOX_RUNTIME, auto); this file runs both everywhere crun
 * works (setup installs it), so runc stays covered on hosts whose default is crun.
 */
const crunWorks = (() => {
  try {
    return resolveOciRuntime('crun', { runc: 'runc', crun: process.env.RUNBOX_CRUN }).kind === 'crun';
  } catch {
    return false;
  }
})();

describe.each<OciRuntimeKind>(['runc', 'crun'])('VPSs under %s', (kind) => {
  let t: TestEngine;
  beforeAll(async () => {
    if (kind === 'crun' && !crunWorks) return;
    t = await testEngine(`rt-${kind}`, { runtime: kind });
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it.skipIf(kind === 'crun' && !crunWorks)('this runtime runs the VPS; its limits, filter and namespaces hold; nothing is left after it', async () => {
    expect(t.engine.runc.kind).toBe(kind);
    const before = await hostSnapshot(t.engine);
    let hostname = '';
    const r = await t.sh(
      [
        'echo "pid1=$(cat /proc/1/comm) host=$(hostname)"',
        'echo "limits $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max) $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"',
        'unshare -U true 2>/dev/null && echo userns-allowed || echo userns-refused',
        'grep -q "^Seccomp:[[:space:]]*2" /proc/self/status && echo filtered',
        'id -u',
      ].join('; '),
      {
        spec: { memoryMb: 96, pids: 40 },
        inside: async (vps) => {
          hostname = vps.info().spec.hostname;
          // The container is this runtime's: it is in this runtime's state (--root), nowhere else.
          expect((await runcList(t.engine.runc)).map((c) => c.id)).toEqual([vps.id]);
          expect(t.engine.runc.root.endsWith(`/${kind}`)).toBe(true);
        },
      },
    );
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual([`pid1=agent host=${hostname}`, `limits ${96 * 1024 * 1024} 40`, 'userns-refused', 'filtered', '0']);
    expect(await hostSnapshot(t.engine)).toEqual(before);
  });

  it.skipIf(kind === 'crun' && !crunWorks)('a checkpoint and a restore on the same host: the job goes on, in its own cgroup', async () => {
    const vps = await t.create({ pids: 33 });
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'i=0; while [ $i -lt 30 ]; do echo "$i $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"; i=$((i+1)); sleep 0.05; done'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    try {
      await waitFor(() => out.split('\n').length > 5, 'output', 10_000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      await restore(t.engine, vps, cp.imagePath);
      expect((await running).exitCode).toBe(0);
      expect(out.trim().split('\n')).toEqual(Array.from({ length: 30 }, (_, i) => `${i} 33`));
      await fs.rm(cp.imagePath, { recursive: true, force: true });
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});

describe('between runtimes', () => {
  it.skipIf(!crunWorks)("a runc VPS's checkpoint does not restore under crun: the create fails and leaves nothing behind (crun's nested cgroup included)", async () => {
    // Without user namespaces: a runc VPS in one (its netns CRIU's, no external mounts of the
    // runtime's own) restores under crun (hosts still refuse such moves: the `runtime` check), and
    // this case is about what a failed crun restore leaves.
    const r = await testEngine('rt-from', { runtime: 'runc', userns: 'off' });
    const c = await testEngine('rt-to', { runtime: 'crun', userns: 'off' });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-rt-'));
    try {
      const vps = await r.create();
      const running = vps.run({ argv: ['sleep', '30'], timeoutSec: 60, outputBytes: 1024 });
      await fs.mkdir(path.join(dir, 'images')); // as the checkpoint store's stage() makes it
      const snap = await snapshot(r.engine, vps, { imagesDir: path.join(dir, 'images'), diskImage: path.join(dir, 'disk.img') });
      const before = await hostSnapshot(c.engine);
      await expect(c.engine.create(newId(), vps.info().spec, { imagesDir: path.join(dir, 'images'), disk: { path: path.join(dir, 'disk.img'), move: false } })).rejects.toThrow(/restore failed/);
      expect(await hostSnapshot(c.engine)).toEqual(before);
      const cgroupsLeft = (await fs.readdir(`/sys/fs/cgroup/memory${c.engine.layout.cgroupParent}`, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory());
      expect(cgroupsLeft).toEqual([]);
      expect(snap.imagesBytes).toBeGreaterThan(0);
      await r.engine.destroy(vps.id);
      await running;
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
      await r.cleanup();
      await c.cleanup();
    }
  });
});
