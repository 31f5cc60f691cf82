import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../core/config.js';
import { execOk } from '../../runtime/exec.js';
import { gc, transferDir } from '../../runtime/gc.js';
import { testEngine, TEMPLATES_DIR, type TestEngine } from '../helpers/engine.js';
import { filesUnder, hostSnapshot } from '../helpers/host.js';
import { waitFor } from '../helpers/net.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('teardown');
  // Warm up once so that instance-level objects (golden image, bridge, firewall table) exist
  // before the "before" snapshot: those are shared per instance, not per VPS.
  await t.sh('true', { spec: { network: 'private' } });
});
afterAll(async () => {
  await t?.cleanup();
});

describe('teardown', () => {
  it('100 create/run/destroy cycles leave nothing behind', async () => {
    const before = await hostSnapshot(t.engine);
    const filesBefore = await filesUnder(t.stateDir);
    for (let i = 0; i < 100; i++) {
      const r = await t.sh('echo $$ > /tmp/pid; cat /tmp/pid', { spec: { network: i % 4 === 0 ? 'private' : 'none' } });
      expect(r.exitCode).toBe(0);
    }
    expect(await hostSnapshot(t.engine)).toEqual(before);
    expect(await filesUnder(t.stateDir)).toEqual(filesBefore);
  });

  it('destroy is idempotent and accepts unknown ids', async () => {
    const vps = await t.create();
    await t.engine.destroy(vps.id);
    await t.engine.destroy(vps.id);
    await t.engine.destroy('doesnotexist');
  });

  it('gc cleans up after a process that crashed while owning VPSs (a helper it left running, a disk it left frozen)', async () => {
    const before = await hostSnapshot(t.engine);
    // A separate process creates two VPSs (private and none network), starts a job, freezes one
    // VPS's disk and starts a helper in a process group of its own (as a move does with CRIU's
    // page server), and is SIGKILLed.
    const script = `
      import { RuncEngine } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/runtime/runc-engine.js'))};
      import { resolveTemplate } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/runtime/templates/store.js'))};
      import { createLogger } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/core/log.js'))};
      const e = new RuncEngine(${JSON.stringify({ ...t.engine.opts, log: undefined })});
      e.opts.log = createLogger('silent');
      const template = await resolveTemplate(${JSON.stringify(TEMPLATES_DIR)}, 'base');
      const spec = { template, hostname: 'orphan', memoryMb: 64, cpus: 1, pids: 64, diskMb: 32 };
      await e.create('orphan0000a1', { ...spec, network: 'private' });
      const b = await e.create('orphan0000b2', { ...spec, network: 'none' });
      b.run({ argv: ['sleep', '1000'], timeoutSec: 1000, outputBytes: 100 });
      const { execFileSync, spawn } = await import('node:child_process');
      execFileSync('fsfreeze', ['--freeze', e.layout.vps('orphan0000b2').layerMount]);
      spawn('tail', ['-f', e.layout.vps('orphan0000b2').meta], { detached: true, stdio: 'ignore' }).unref();
      console.log('ready');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    await waitFor(() => out.includes('ready'), 'the crashing process to create its VPSs', 20_000);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    const orphaned = await hostSnapshot(t.engine);
    expect(orphaned.runcContainers).toBe(before.runcContainers + 2);
    expect(orphaned.netns).toBe(before.netns + 2); // every VPS has a netns of ours, "none" ones too

    const report = await gc(t.engine);
    expect(report.vps.sort()).toEqual(['orphan0000a1', 'orphan0000b2']);
    expect(report.orphans).toEqual([expect.stringMatching(/ tail -f .*orphan0000b2\/vps\.json/)]);
    expect(report.thawed).toEqual([t.engine.layout.vps('orphan0000b2').layerMount]);
    expect(await hostSnapshot(t.engine)).toEqual(before);
    expect(await fs.readdir(t.engine.layout.vpsRoot)).toEqual([]);
    // No file system left alive behind the scenes (a frozen one survives its unmount, with its loop device).
    expect(execFileSync('losetup', ['-a']).toString()).not.toContain(t.stateDir);
  });

  it("gc removes migration dirs of processes that are gone (and what CRIU left mounted there), not a live one's", async () => {
    const live = await transferDir(t.engine.layout.transfersDir, 'in-live');
    const dead = path.join(t.engine.layout.transfersDir, '999999.1.in-dead.abc123');
    await fs.mkdir(path.join(dead, 'lazy-work', '.criu.cgyard.x'), { recursive: true });
    await execOk(['mount', '-t', 'tmpfs', 'none', path.join(dead, 'lazy-work', '.criu.cgyard.x')]);
    const report = await gc(t.engine);
    expect(report.transfers).toEqual([dead]);
    expect(await fs.readdir(t.engine.layout.transfersDir)).toEqual([path.basename(live)]);
    expect((await fs.readFile('/proc/self/mountinfo', 'utf8')).includes(dead)).toBe(false);
    await fs.rm(live, { recursive: true });
  });

  it('gc leaves VPSs of live processes alone', async () => {
    const vps = await t.create();
    try {
      const report = await gc(t.engine);
      expect(report.vps).toEqual([]);
      const r = await vps.run({ argv: ['echo', 'still fine'], timeoutSec: 10, outputBytes: 100 });
      expect(r.exitCode).toBe(0);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});
