import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpForMove } from '../../runtime/checkpoint/checkpoint.js';
import { freePort, lazyDumpForMove, postCopySupport, startLazyPages, usernsPostCopyRefusal, type LazyPages } from '../../runtime/checkpoint/lazy.js';
import { CRIU, testEngine, type TestEngine } from '../helpers/engine.js';
import { hostSnapshot } from '../helpers/host.js';
import { waitFor } from '../helpers/net.js';
import { execOk } from '../../runtime/exec.js';

/** A running VPS moved between two runtime instances (two "hosts" sharing this kernel). */
let a: TestEngine;
let b: TestEngine;
beforeAll(async () => {
  a = await testEngine('move-a');
  b = await testEngine('move-b');
});
afterAll(async () => {
  await a?.cleanup();
  await b?.cleanup();
});

describe('stop-and-copy move of a running VPS', () => {
  it('continues on the other host: same PIDs, memory, files, hostname, network config; output without gap or repeat', async () => {
    const before = [await hostSnapshot(a.engine), await hostSnapshot(b.engine)];
    const src = await a.create({ hostname: 'moving-box', network: 'private' });
    let out = '';
    const script = [
      'echo written-before > /tmp/state.txt',
      // Inode numbers of the job's files are kept (programs such as SQLite compare them).
      'ino=$(stat -c %i /tmp/state.txt); exec 3</tmp/state.txt; echo ready',
      'sleep 1000 & echo "bg=$!"',
      'i=0; while [ $i -lt 40 ]; do echo "$i $$ $(hostname) $(cat /tmp/state.txt)"; i=$((i+1)); sleep 0.05; done',
      'echo "bg-still=$(kill -0 $(pidof sleep) && echo yes)"',
      '[ "$(stat -c %i /tmp/state.txt)" = "$ino" ] && [ "$(stat -L -c %i /proc/self/fd/3)" = "$ino" ] && echo inode-kept',
      'ip addr show dev lo | grep -q "10.123.0.1/32" && ip route | grep -q "10.124.0.0/24 dev eth0 .*metric 7" && echo net-kept',
      // Its cgroup view: the VPS's own cgroup (limits of its spec) at the root of /sys/fs/cgroup.
      'echo "limits $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) $(cat /sys/fs/cgroup/pids/pids.max)"',
    ].join('; ');
    const first = src.run({ argv: ['sh', '-c', script], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (out += d.toString()) });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-move-'));
    try {
      await waitFor(() => out.split('\n').length > 10, 'ten lines on the source', 10_000);
      // Network configuration of the VPS's own netns (an address, a route, a firewall rule), made
      // from outside as a job with network rights would: it must be there after the move.
      const srcNs = `/run/netns/${src.info().network.netns}`;
      await execOk(['ip', '-n', src.info().network.netns!, '-batch', '-'], { input: 'addr add 10.123.0.1/32 dev lo\nroute add 10.124.0.0/24 dev eth0 metric 7\n' });
      await execOk(['nsenter', `--net=${srcNs}`, 'nft', '-f', '-'], { input: 'table inet jobfw {\n chain input {\n type filter hook input priority 0;\n tcp dport 7777 drop\n }\n}\n' });
      // As a move's target does before the freeze: the VPS's network, made ahead, while
      // the source still has its own (same VPS id, same network namespace of this test: the veth
      // names must not clash).
      await b.engine.prepareRestore(src.id, src.info().spec, { network: 'private', diskMb: src.info().spec.diskMb });
      const dumped = await dumpForMove(a.engine, src, dir);
      const offset = Buffer.byteLength(out); // everything the source produced before the freeze
      src.handOver();
      const handed = await first;
      expect(handed.migrated).toBe(true);
      const spec = src.info().spec;
      await a.engine.destroy(src.id);

      const dst = await b.engine.create(src.id, spec, { imagesDir: dumped.imagesDir, disk: { path: dumped.diskImage, move: false } }); // a copy: a second loop mount of the same file would share the source's (frozen) file system
      await dumped.releaseDisk();
      let resumedAt = -1;
      const rest = await dst.adopt(
        { argv: [], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (out += d.toString()), onResume: (o) => void (resumedAt = o) },
        { startedAt: handed.startedAt },
      );
      expect(resumedAt).toBe(offset); // the source delivered everything before the freeze
      expect(rest.exitCode).toBe(0);
      const lines = out.trim().split('\n');
      const pid = lines[2]!.split(' ')[1];
      expect(lines[0]).toBe('ready');
      expect(lines.slice(2, 42)).toEqual(Array.from({ length: 40 }, (_, i) => `${i} ${pid} moving-box written-before`));
      expect(lines.slice(-4)).toEqual(['bg-still=yes', 'inode-kept', 'net-kept', `limits ${spec.memoryMb * 1024 * 1024} ${spec.pids}`]);
      // ...and from the host: its processes are in the target's cgroup of that VPS.
      const cgroups = await fs.readFile(`/proc/${dst.initPid}/cgroup`, 'utf8');
      expect(cgroups).toContain(`memory:${b.engine.layout.vps(src.id).cgroupsPath}\n`);
      const rules = await execOk(['nsenter', `--net=/run/netns/${dst.info().network.netns}`, 'nft', 'list', 'ruleset']);
      expect(rules.stdout).toMatch(/tcp dport 7777 drop/);
    } finally {
      await b.engine.destroy(src.id);
      await fs.rm(dir, { recursive: true, force: true });
    }
    // The source was destroyed while its disk was still frozen for sending: an unmount alone
    // would leave the file system alive, detached, with its loop device, until reboot.
    expect([await hostSnapshot(a.engine), await hostSnapshot(b.engine)]).toEqual(before);
  });
});

describe('a restore prepared ahead (network made before the checkpoint exists)', () => {
  it('is idempotent, made afresh for another plan, and released by destroy without leftovers', async () => {
    const before = await hostSnapshot(b.engine);
    const spec = { template: await b.base(), hostname: 'prep', network: 'private' as const, memoryMb: 128, cpus: 1, pids: 64, diskMb: 64 };
    const id = 'prep0000aaaa';
    await b.engine.prepareRestore(id, spec, { network: 'private', diskMb: 64 });
    const first = JSON.parse(await fs.readFile(path.join(b.engine.layout.vps(id).dir, 'vps.json'), 'utf8')) as { network: { address: string } };
    await b.engine.prepareRestore(id, spec, { network: 'private', diskMb: 64 }); // the same plan: kept as it is
    const again = JSON.parse(await fs.readFile(path.join(b.engine.layout.vps(id).dir, 'vps.json'), 'utf8')) as { network: { address: string } };
    expect(again.network.address).toBe(first.network.address);
    // A VPS in a user namespace gets its netns from CRIU at the restore (inside that namespace):
    // only the address and the pins are made ahead.
    const aheadNetns = (await b.engine.usernsEnabled()) ? 0 : 1;
    expect((await hostSnapshot(b.engine)).netns).toBe(before.netns + aheadNetns);
    await b.engine.prepareRestore(id, { ...spec, diskMb: 128 }, { network: 'none', diskMb: 128 }); // another plan: replaced
    expect((await hostSnapshot(b.engine)).links).toBe(before.links); // no veth for "none"
    expect((await hostSnapshot(b.engine)).netns).toBe(before.netns + aheadNetns);
    await expect(b.engine.create(id, spec)).rejects.toMatchObject({ code: 'conflict' }); // only a restore takes it
    await b.engine.destroy(id);
    expect(await hostSnapshot(b.engine)).toEqual(before);
  });
});

describe('post-copy move (lazy pages) of a running VPS', () => {
  // In user namespaces CRIU restores lazily only with vm.unprivileged_userfaultfd=1, which runbox
  // leaves as the host has it (checkpoint/lazy.ts): where it is 0, hosts with user namespaces move
  // by stop-and-copy (the refusal is tested below) and the lazy mechanism is tested without.
  let la: TestEngine;
  let lb: TestEngine;
  let own = false;
  beforeAll(async () => {
    const support = await postCopySupport(CRIU, true);
    expect(support, support.detail).toMatchObject({ ok: true });
    const unprivileged = (await fs.readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').catch(() => '0')).trim();
    own = (await a.engine.usernsEnabled()) && usernsPostCopyRefusal(unprivileged) !== undefined;
    [la, lb] = own ? [await testEngine('lazy-a', { userns: 'off' }), await testEngine('lazy-b', { userns: 'off' })] : [a, b];
  });
  afterAll(async () => {
    if (own) await Promise.all([la?.cleanup(), lb?.cleanup()]);
  });

  it('is refused on a host whose VPSs have user namespaces unless unprivileged userfaultfd is on, with the reason', async () => {
    const unprivileged = (await fs.readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').catch(() => '0')).trim();
    const support = await postCopySupport(CRIU, false, { userns: true });
    if (unprivileged === '1') expect(support.ok).toBe(true);
    else expect(support).toEqual({ ok: false, detail: expect.stringMatching(/unprivileged_userfaultfd=1 \(it is 0.*stop and copy/) });
  });

  const script = [
    'buf=$(head -c 300000 /dev/urandom | od -An -tx1 | tr -d " \\n")',
    'sum1=$(echo "$buf" | md5sum | cut -d" " -f1)',
    'i=0; while [ $i -lt 40 ]; do echo "$i $$"; i=$((i+1)); sleep 0.05; done',
    'sum2=$(echo "$buf" | md5sum | cut -d" " -f1)',
    '[ "$sum1" = "$sum2" ] && echo memory-intact',
  ].join('; ');
  const expected = (out: string) => {
    const lines = out.trim().split('\n');
    const pid = lines[0]!.split(' ')[1];
    expect(lines).toEqual([...Array.from({ length: 40 }, (_, i) => `${i} ${pid}`), 'memory-intact']);
  };

  it('restores on the other host at once and pulls the memory from the source: same output, memory intact', async () => {
    const src = await la.create({ hostname: 'lazy-box' });
    let out = '';
    const first = src.run({ argv: ['sh', '-c', script], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (out += d.toString()) });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-lazy-'));
    let pages: LazyPages | undefined;
    try {
      await waitFor(() => out.split('\n').length > 10, 'ten lines on the source', 10_000);
      // As a move's target does before the freeze: the VPS's network and disk, made ahead (create
      // below would fail with "already exists" if it did not take them).
      await lb.engine.prepareRestore(src.id, src.info().spec, { network: 'none', diskMb: src.info().spec.diskMb });
      if (!(await lb.engine.usernsEnabled())) expect(await fs.readdir('/run/netns')).toContain(lb.engine.net.netnsName(src.id));
      const source = { address: '127.0.0.1', port: await freePort('127.0.0.1') };
      const dumped = await lazyDumpForMove(la.engine, src, dir, source);
      pages = await startLazyPages(CRIU, { imagesDir: dumped.imagesDir, workDir: path.join(dir, 'lazy-work'), source });
      const dst = await lb.engine.create(src.id, src.info().spec, { imagesDir: dumped.imagesDir, disk: { path: dumped.diskImage, move: false }, lazyPagesWorkDir: pages.workDir });
      await dumped.releaseDisk();
      src.handOver();
      const handed = await first;
      expect(handed.migrated).toBe(true);
      const rest = await dst.adopt({ argv: [], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (out += d.toString()) }, { startedAt: handed.startedAt });
      await Promise.all([pages.done, dumped.transferred]); // every page arrived; the source's processes ended
      expect(rest.exitCode).toBe(0);
      expected(out);
    } finally {
      await pages?.stop();
      await la.engine.destroy(src.id);
      await lb.engine.destroy(src.id);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('cancelled before the target restored: the VPS thaws on its source and goes on, nothing lost', async () => {
    const src = await la.create();
    let out = '';
    const run = src.run({ argv: ['sh', '-c', script], timeoutSec: 60, outputBytes: 1 << 20, onOutput: (_s, d) => (out += d.toString()) });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-lazy-'));
    try {
      await waitFor(() => out.split('\n').length > 10, 'ten lines on the source', 10_000);
      const dumped = await lazyDumpForMove(la.engine, src, dir, { address: '127.0.0.1', port: await freePort('127.0.0.1') });
      await dumped.cancel();
      await expect(dumped.transferred).rejects.toThrow(/page transfer/);
      const r = await run;
      expect(r.exitCode).toBe(0);
      expected(out);
    } finally {
      await la.engine.destroy(src.id);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
