import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testEngine, type TestEngine } from '../helpers/engine.js';

let t: TestEngine;
beforeAll(async () => {
  t = await testEngine('limits');
});
afterAll(async () => {
  await t?.cleanup();
});

describe('limits', () => {
  it('memory: a memory bomb is OOM-killed and reported', async () => {
    // tail buffers its input line by line; /dev/zero has no newline, so it grows without bound.
    const r = await t.sh('tail /dev/zero', { spec: { memoryMb: 64 } });
    expect(r.oomKilled).toBe(true);
    expect(r.signal).toBe(9);
    expect(r.exitCode).toBeNull();
    expect(r.usage.memoryPeakBytes).toBeGreaterThan(50 * 1024 * 1024);
    expect(r.usage.memoryPeakBytes).toBeLessThanOrEqual(64 * 1024 * 1024);
  });

  it('memory: usage within the limit is not an OOM', async () => {
    const r = await t.sh('head -c 20000000 /dev/zero | tail -c 1 | wc -c', { spec: { memoryMb: 64 } });
    expect(r.exitCode).toBe(0);
    expect(r.oomKilled).toBe(false);
  });

  it('pids: a fork bomb stays inside and is stopped by the timeout', async () => {
    const vps = await t.create({ pids: 64 });
    let maxPids = 0;
    const poll = setInterval(() => {
      void vps.usage().then((u) => (maxPids = Math.max(maxPids, u.pidsCurrent)), () => undefined);
    }, 10);
    try {
      const out: string[] = [];
      const r = await vps.run({
        argv: ['sh', '-c', 'bomb() { bomb | bomb & }; bomb & exec sleep 60'],
        // The main shell forks once (`bomb &`), then execs: once the pids limit is reached a fork
        // that fails ends a non-interactive ash. With `bomb; exec …` the main shell forked both
        // ends of the first pipeline itself, and the left end's bomb sometimes filled the limit
        // before the right end's fork (seen under load: the job ended in 115 ms, not timed out).
        timeoutSec: 3,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => out.push(d.toString()),
      });
      expect(r.timedOut, JSON.stringify({ exitCode: r.exitCode, signal: r.signal, out: out.join('').slice(-400) })).toBe(true);
      expect(out.join('')).toMatch(/can't fork: Resource temporarily unavailable/);
      // "can't fork" proves the limit was hit; sampling shows it was never exceeded.
      expect(maxPids).toBeLessThanOrEqual(64);
    } finally {
      clearInterval(poll);
      await t.engine.destroy(vps.id);
    }
    // The host still forks fine and the next VPS works.
    expect((await t.sh('echo alive')).stdout).toBe('alive\n');
  });

  it('cpu: a busy loop gets about the CPU share it was given', async () => {
    const r = await t.sh('end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done', { spec: { cpus: 0.25 } });
    expect(r.exitCode).toBe(0);
    const share = r.usage.cpuMs / r.usage.wallMs;
    expect(share).toBeGreaterThan(0.1);
    expect(share).toBeLessThan(0.4);
  });

  it('disk: writing past the layer size fails with ENOSPC inside; the host file stays small', async () => {
    const vps = await t.create({ diskMb: 32 });
    try {
      const out: string[] = [];
      const r = await vps.run({
        argv: ['sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo rc=$?; rm /big; echo again > /ok && cat /ok'],
        timeoutSec: 30,
        outputBytes: 1 << 20,
        onOutput: (_s, d) => out.push(d.toString()),
      });
      const text = out.join('');
      expect(text).toMatch(/No space left on device/);
      expect(text).toMatch(/rc=1/);
      expect(text).toMatch(/again/); // the VPS recovers once the file is gone
      expect(r.exitCode).toBe(0);
      const st = await fs.stat(t.engine.layout.vps(vps.id).image);
      expect(st.size).toBe(32 * 1024 * 1024);
      expect(st.blocks * 512).toBeLessThanOrEqual(33 * 1024 * 1024);
    } finally {
      await t.engine.destroy(vps.id);
    }
  });

  it('timeout: the whole VPS is killed at the wall-clock limit', async () => {
    const t0 = Date.now();
    const r = await t.sh('sleep 100 & sleep 100', { timeoutSec: 1 });
    expect(r.timedOut).toBe(true);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('output: captured output is capped and the cap is reported', async () => {
    const seen: number[] = [];
    const r = await t.sh('yes | head -c 5000000; echo done >&2', {
      outputBytes: 10_000,
      onOutput: (_s, d, offset) => seen.push(offset + d.length),
    });
    expect(r.exitCode).toBe(0);
    expect(r.outputTruncated).toBe(true);
    expect(r.outputBytes).toBe(10_000);
    expect(r.stdout.length + r.stderr.length).toBe(10_000);
    expect(Math.max(...seen)).toBe(10_000);
  });

  it('reports usage: CPU time and peak memory', async () => {
    // dd allocates its 40 MB block in memory; the loop burns CPU.
    const r = await t.sh('dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done');
    expect(r.exitCode).toBe(0);
    expect(r.usage.cpuMs).toBeGreaterThan(100);
    expect(r.usage.memoryPeakBytes).toBeGreaterThan(40 * 1024 * 1024);
  });

  it('reports exit codes and signals of the job', async () => {
    expect((await t.sh('exit 42')).exitCode).toBe(42);
    const killed = await t.sh('kill -TERM $$');
    expect(killed.exitCode).toBeNull();
    expect(killed.signal).toBe(15);
  });

  it('cancel: an abort kills the VPS promptly', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const t0 = Date.now();
    const r = await t.sh('sleep 100', { signal: ac.signal });
    expect(r.canceled).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1300);
  });
});
