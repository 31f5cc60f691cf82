import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../core/config.js';
import { newId } from '../core/ids.js';
import type { ObjectStoreLocation } from '../core/objects/location.js';
import { S3ObjectStore } from '../core/objects/s3.js';
import { snapshot } from '../runtime/checkpoint/checkpoint.js';
import { DirectoryCheckpointStore, type CheckpointMeta, type CheckpointStore } from '../runtime/checkpoint/store.js';
import type { RuncEngine } from '../runtime/runc-engine.js';
import type { RuncVps } from '../runtime/runc-vps.js';
import { ObjectCheckpointStore } from '../worker/object-checkpoints.js';
import { compileMemJob, criuEngine, memJobSpec, SIZES_OPTION, startMemJob, summary, type ListBenchmark } from './checkpoint.js';
import { checkInterrupted, MiB, note, report } from './lib.js';

const NAME = 'checkpoint-store';

/** The embedded S3 server in a process of its own (as `runbox cluster up` runs it beside the hosts' workers). */
async function startServer(dir: string): Promise<{ location: ObjectStoreLocation; child: ChildProcess }> {
  const script = `import { startEmbeddedS3 } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/cli/embedded-s3.js'))};
const s = await startEmbeddedS3(${JSON.stringify(dir)});
process.stdout.write(JSON.stringify(s.location) + '\\n');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`the S3 server exited (${code})`)));
  });
  return { location: JSON.parse(line) as ObjectStoreLocation, child };
}

interface Pass {
  frozenMs: number;
  snapshotMs: number;
  commitMs: number;
  restorableMs: number;
  dataBytes: number;
}

/** One checkpoint of the running job into `store` (snapshot, then commit), then a restore's read of it. */
async function pass(engine: RuncEngine, store: CheckpointStore, vps: RuncVps, jobId: string, seq: number, caps: { memoryMb: number; diskMb: number }): Promise<Pass> {
  const staged = await store.stage(jobId, seq);
  const t0 = Date.now();
  const snap = await snapshot(engine, vps, staged);
  const t1 = Date.now();
  const spec = vps.info().spec;
  const meta: CheckpointMeta = {
    id: newId(6), jobId, seq, createdAt: new Date().toISOString(), host: 'bench',
    template: { name: spec.template.name, hash: spec.template.hash }, network: { mode: 'none' }, hostname: spec.hostname,
    outputOffset: 0, frozenMs: snap.frozenMs, imagesBytes: snap.imagesBytes, diskBytes: snap.diskBytes,
  };
  await store.commit(jobId, meta, staged.dir);
  const t2 = Date.now();
  const cp = await store.restorable(jobId, caps);
  const t3 = Date.now();
  await cp!.release();
  await store.prune(jobId, 1);
  return { frozenMs: snap.frozenMs, snapshotMs: t1 - t0, commitMs: t2 - t1, restorableMs: t3 - t2, dataBytes: snap.imagesBytes + snap.diskBytes };
}

export const checkpointStoreBench: ListBenchmark = {
  name: NAME,
  description: 'a checkpoint of a job holding N MB into the object store (embedded S3 server, own process) vs the directory store, alternating in one run: frozen time, snapshot, upload (commit), download+verify',
  options: {
    runs: { default: 5, min: 1, help: 'measured checkpoints per store and size' },
  },
  listOptions: { sizes: { ...SIZES_OPTION, default: [64] } },
  async run(ctx, opts, lists) {
    const program = await compileMemJob(path.join(ctx.stateDir, 'memjob'));
    const e = await criuEngine(ctx, 'engine');
    const server = await startServer(path.join(ctx.stateDir, 's3'));
    const objects = new S3ObjectStore(server.location);
    try {
      await objects.ensureBucket();
      const stores: Record<'dir' | 's3', CheckpointStore> = {
        dir: new DirectoryCheckpointStore(path.join(ctx.stateDir, 'dir-store')),
        s3: new ObjectCheckpointStore(objects, path.join(ctx.stateDir, 's3-local')),
      };
      for (const size of lists?.sizes ?? [64]) {
        const id = newId();
        const spec = await memJobSpec(ctx, id, size);
        const caps = { memoryMb: spec.memoryMb, diskMb: spec.diskMb };
        const { vps, running } = await startMemJob(e.engine, spec, id, program, size);
        const jobId = `bench${newId(6)}`;
        const samples: Record<'dir' | 's3', Pass[]> = { dir: [], s3: [] };
        try {
          for (let i = 0; i < opts.runs! + 1; i++) {
            for (const kind of (i % 2 ? ['s3', 'dir'] : ['dir', 's3']) as Array<'dir' | 's3'>) {
              checkInterrupted();
              const p = await pass(e.engine, stores[kind], vps, `${jobId}${kind}`, i + 1, caps);
              note(`${size} MB ${kind} ${i === 0 ? 'warm-up' : `${i}/${opts.runs}`}: frozen ${p.frozenMs} ms, snapshot ${p.snapshotMs} ms, commit ${p.commitMs} ms, restorable ${p.restorableMs} ms (${(p.dataBytes / MiB).toFixed(1)} MiB)`);
              if (i > 0) samples[kind].push(p);
            }
          }
        } finally {
          await e.engine.destroy(id);
          await running.catch(() => undefined);
          for (const kind of ['dir', 's3'] as const) await stores[kind].removeAll(`${jobId}${kind}`);
        }
        const m = (kind: 'dir' | 's3', f: (p: Pass) => number) => summary(samples[kind].map(f)).p50;
        const emit = (metric: string, f: (p: Pass) => number) =>
          report(NAME, { metric: `${size}mb_${metric}_p50`, value: m('s3', f), unit: 'ms', baseline: m('dir', f) });
        emit('frozen', (p) => p.frozenMs);
        emit('checkpoint_total', (p) => p.snapshotMs + p.commitMs);
        emit('commit', (p) => p.commitMs);
        emit('restorable', (p) => p.restorableMs);
        const rate = (f: (p: Pass) => number) => summary(samples.s3.map((p) => p.dataBytes / MiB / (f(p) / 1000))).p50;
        report(NAME, { metric: `${size}mb_upload_rate_p50`, value: rate((p) => p.commitMs), unit: 'MiB/s' });
        report(NAME, { metric: `${size}mb_download_verify_rate_p50`, value: rate((p) => p.restorableMs), unit: 'MiB/s' });
        report(NAME, { metric: `${size}mb_data_p50`, value: summary(samples.s3.map((p) => p.dataBytes / MiB)).p50, unit: 'MiB' });
      }
    } finally {
      objects.close();
      server.child.kill('SIGTERM');
      const leaks = await e.cleanup();
      if (leaks.length) throw new Error(`leaks: ${leaks.join('; ')}`);
      await fs.rm(path.join(ctx.stateDir, 's3'), { recursive: true, force: true });
    }
  },
};
