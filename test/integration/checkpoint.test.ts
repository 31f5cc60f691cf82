import fs from 'node:fs/promises';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpoint, restore } from '../../runtime/checkpoint/checkpoint.js';
import { CRIU, testEngine, type TestEngine } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('checkpoint');
});
afterAll(async () => {
  await t?.cleanup();
});

describe('checkpoint and restore (CRIU) on the same host', () => {
  it("every VPS names the engine's CRIU configuration, which locks the network with nftables where CRIU can", async () => {
    const vps = await t.create();
    try {
      const config = JSON.parse(await fs.readFile(t.engine.layout.vps(vps.id).config, 'utf8')) as { annotations?: Record<string, string> };
      // crun: the VPS's own file (a link to the engine's), where a dump or restore adds what crun has no flags for.
      const named = t.engine.runc.kind === 'crun' ? t.engine.layout.vps(vps.id).criuConfig : t.engine.layout.criuConfig;
      expect(config.annotations?.['org.criu.config']).toBe(named);
      const nft = spawnSync(CRIU, ['check', '--network-lock', 'nftables']).status === 0;
      expect((await fs.readFile(named, 'utf8')).includes('network-lock nftables')).toBe(nft);
      expect(await fs.readFile(named, 'utf8')).toBe(await fs.readFile(t.engine.layout.criuConfig, 'utf8'));
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it('a counter loop continues where it stopped: no gap, no repeat', async () => {
    const vps = await t.create({ network: 'private', hostname: 'counter-box' });
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'echo state > /tmp/before; i=0; while [ $i -lt 60 ]; do echo "$i $(hostname) $(cat /sys/fs/cgroup/pids/pids.max)"; i=$((i+1)); sleep 0.05; done'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    try {
      await waitFor(() => out.split('\n').length > 10, 'ten lines of output', 10_000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      expect(cp.sizeBytes).toBeGreaterThan(0);
      const linesAtCheckpoint = out.split('\n').length;
      await new Promise((r) => setTimeout(r, 300));
      expect(out.split('\n').length).toBe(linesAtCheckpoint); // frozen: nothing runs
      await restore(t.engine, vps, cp.imagePath);
      const r = await running;
      expect(r.exitCode).toBe(0);
      const lines = out.trim().split('\n');
      // ...seeing its own cgroup (its pids limit) before and after: not the host's.
      expect(lines).toEqual(Array.from({ length: 60 }, (_, i) => `${i} counter-box 256`));
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it("a restore connects the agent to this host's pipes even when runc's record of them is wrong (descriptors.json from the agent's own fds)", async () => {
    const vps = await t.create();
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.05; done'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    try {
      await waitFor(() => out.split('\n').length > 5, 'output', 10_000);
      // What runc recorded when a CRIU wrapper had its stdin on a file for a moment (issue 12).
      // runc keeps them in state.json as an array, crun in its status file as a JSON text.
      const crun = t.engine.runc.kind === 'crun';
      const stateFile = path.join(t.engine.runc.root, vps.id, crun ? 'status' : 'state.json');
      const state = JSON.parse(await fs.readFile(stateFile, 'utf8')) as { external_descriptors: string[] | string };
      const recorded = (crun ? JSON.parse(state.external_descriptors as string) : state.external_descriptors) as string[];
      const wrong = ['/proc/sys/kernel/random/boot_id', recorded[1]!, '/dev/null'];
      state.external_descriptors = crun ? JSON.stringify(wrong) : wrong;
      await fs.writeFile(stateFile, JSON.stringify(state));
      const cp = await checkpoint(t.engine, vps, { leaveRunning: false });
      expect(JSON.parse(await fs.readFile(path.join(cp.imagePath, 'descriptors.json'), 'utf8'))).toEqual([expect.stringMatching(/^pipe:/), expect.stringMatching(/^pipe:/), expect.stringMatching(/^pipe:/)]);
      await restore(t.engine, vps, cp.imagePath); // refused if the agent's stdin were not this host's pipe
      expect((await running).exitCode).toBe(0);
      expect(out.trim().split('\n')).toEqual(Array.from({ length: 30 }, (_, i) => String(i)));
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it('a checkpoint with leave-running does not disturb the job', async () => {
    const vps = await t.create();
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'i=0; while [ $i -lt 20 ]; do echo $i; i=$((i+1)); sleep 0.05; done'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    try {
      await waitFor(() => out.split('\n').length > 3, 'output', 10_000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: true });
      expect(cp.leaveRunning).toBe(true);
      const r = await running;
      expect(r.exitCode).toBe(0);
      expect(out.trim().split('\n')).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});

describe('output offsets across a restore', () => {
  it('a VPS restored from an older checkpoint says where its output resumes: cut back there, nothing lost or repeated', async () => {
    const vps = await t.create();
    let out = '';
    const first = vps.run({
      argv: ['sh', '-c', 'i=0; while [ $i -lt 40 ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done'],
      timeoutSec: 60,
      outputBytes: 1 << 20,
      onOutput: (_s, d) => (out += d.toString()),
    });
    try {
      await waitFor(() => out.split('\n').length > 8, 'eight lines', 10_000);
      const cp = await checkpoint(t.engine, vps, { leaveRunning: true });
      await waitFor(() => out.split('\n').length > 16, 'more lines after the checkpoint', 10_000);
      // The "host crash": the VPS's processes die; the checkpoint is all that is left of them.
      await vps.killAll();
      await first;
      const before = out;
      await restore(t.engine, vps, cp.imagePath);
      const seen: Buffer[] = [];
      vps.channel.on((f) => {
        if (f.type === 'stdout') seen.push(f.data);
      });
      const total = await vps.queryOutputTotal();
      const early = Buffer.concat(seen).length; // written after the restore, before the answer
      const resumeAt = total - early;
      expect(resumeAt).toBeGreaterThan(0);
      expect(resumeAt).toBeLessThan(Buffer.byteLength(before));
      await waitFor(() => Buffer.concat(seen).toString().includes('line 39'), 'the restored job to finish', 20_000);
      const log = Buffer.from(before).subarray(0, resumeAt).toString() + Buffer.concat(seen).toString();
      expect(log.trim().split('\n')).toEqual(Array.from({ length: 40 }, (_, i) => `line ${i}`));
    } finally {
      await t.engine.destroy(vps.id);
    }
  });
});
