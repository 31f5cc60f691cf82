import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpoint, restore } from '../../runtime/checkpoint/checkpoint.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';
import { waitFor } from '../helpers/net.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('checkpoint');
});
afterAll(async () => {
  await t?.cleanup();
});

describe('checkpoint and restore (CRIU) on the same host', () => {
  it('a counter loop continues where it stopped: no gap, no repeat', async () => {
    const vps = await t.create({ network: 'private', hostname: 'counter-box' });
    let out = '';
    const running = vps.run({
      argv: ['sh', '-c', 'echo state > /tmp/before; i=0; while [ $i -lt 60 ]; do echo "$i $(hostname)"; i=$((i+1)); sleep 0.05; done'],
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
      expect(lines).toEqual(Array.from({ length: 60 }, (_, i) => `${i} counter-box`));
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
