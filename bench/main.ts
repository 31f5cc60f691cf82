#!/usr/bin/env node
/**
 * Benchmark harness: `npm run bench -- NAME [--key value ...]`, `npm run bench -- list`.
 * Results: one JSON object per line on stdout; progress and notes on stderr.
 */
import { errorMessage } from '../core/errors.js';
import { checkpointBench, type ListBenchmark } from './checkpoint.js';
import { checkpointStoreBench } from './checkpoint-store.js';
import { coldRun } from './cold-run.js';
import { e2eLatency } from './e2e-latency.js';
import { idleDensity } from './idle-density.js';
import { migrateBench } from './migrate.js';
import { pool } from './pool.js';
import { soak } from './soak.js';
import { templateCreate } from './template-create.js';
import { throughput } from './throughput.js';
import { BenchContext, installSignalHandlers, Interrupted, interrupted, note, type Benchmark } from './lib.js';

/** Each benchmark gets an address range of its own (no network is used by the current ones). */
const BENCHMARKS: Array<{ bench: Benchmark | ListBenchmark; netCidr: string }> = [
  { bench: coldRun, netCidr: '10.250.0.0/24' },
  { bench: idleDensity, netCidr: '10.250.2.0/24' },
  { bench: pool, netCidr: '10.250.3.0/24' },
  { bench: throughput, netCidr: '10.250.4.0/24' },
  { bench: e2eLatency, netCidr: '10.250.5.0/24' },
  { bench: templateCreate, netCidr: '10.250.6.0/24' },
  { bench: checkpointBench, netCidr: '10.250.7.0/24' },
  { bench: migrateBench, netCidr: '10.250.8.0/24' },
  { bench: soak, netCidr: '10.250.9.0/24' },
  { bench: checkpointStoreBench, netCidr: '10.250.10.0/24' },
];

/** Comma-separated integer lists (`--sizes 64,256`) of the benchmarks that take them. */
const listOptionsOf = (bench: Benchmark | ListBenchmark) => ('listOptions' in bench ? bench.listOptions : {});
const nameOptionsOf = (bench: Benchmark | ListBenchmark) => ('listOptions' in bench ? (bench.nameOptions ?? {}) : {});

function usage(): string {
  const lines = ['usage: npm run bench -- NAME [--key value ...] | list', 'benchmarks:'];
  for (const { bench } of BENCHMARKS) {
    lines.push(`  ${bench.name.padEnd(14)} ${bench.description}`);
    for (const [k, o] of Object.entries(bench.options)) lines.push(`    --${k} N`.padEnd(20) + `${o.help} (default ${o.default})`);
    for (const [k, o] of Object.entries(listOptionsOf(bench))) lines.push(`    --${k} N,M`.padEnd(20) + `${o.help} (default ${o.default.join(',')})`);
    for (const [k, o] of Object.entries(nameOptionsOf(bench))) lines.push(`    --${k} A,B`.padEnd(20) + `${o.help}: ${o.choices.join(', ')} (default ${o.default.join(',')})`);
  }
  return lines.join('\n');
}

function parseOptions(bench: Benchmark | ListBenchmark, args: string[]): { opts: Record<string, number>; lists: Record<string, number[]>; names: Record<string, string[]> } {
  const out: Record<string, number> = {};
  const lists: Record<string, number[]> = {};
  const names: Record<string, string[]> = {};
  for (const [k, o] of Object.entries(bench.options)) out[k] = o.default;
  for (const [k, o] of Object.entries(listOptionsOf(bench))) lists[k] = [...o.default];
  for (const [k, o] of Object.entries(nameOptionsOf(bench))) names[k] = [...o.default];
  for (let i = 0; i < args.length; i += 2) {
    const flag = args[i]!;
    const m = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(flag);
    if (!m) throw new UsageError(`unexpected argument "${flag}"`);
    const key = m[1]!;
    const def = bench.options[key];
    const listDef = listOptionsOf(bench)[key];
    const nameDef = nameOptionsOf(bench)[key];
    if (nameDef) {
      let raw = m[2];
      if (raw === undefined) raw = args[i + 1];
      else i--;
      if (!raw) throw new UsageError(`--${key} needs a value`);
      const vs = [...new Set(raw.split(','))];
      const bad = vs.filter((v) => !nameDef.choices.includes(v));
      if (bad.length) throw new UsageError(`--${key}: unknown ${bad.join(', ')} (choices: ${nameDef.choices.join(', ')})`);
      names[key] = vs;
      continue;
    }
    if (listDef) {
      let raw = m[2];
      if (raw === undefined) raw = args[i + 1];
      else i--;
      if (raw === undefined) throw new UsageError(`--${key} needs a value`);
      const vs = raw.split(',').map(Number);
      if (vs.some((v) => !Number.isInteger(v) || v < listDef.min)) throw new UsageError(`--${key} must be comma-separated integers ≥ ${listDef.min}, got "${raw}"`);
      lists[key] = vs;
      continue;
    }
    if (!def) throw new UsageError(`${bench.name} has no option --${key} (options: ${[...Object.keys(bench.options), ...Object.keys(listOptionsOf(bench)), ...Object.keys(nameOptionsOf(bench))].map((k) => `--${k}`).join(', ') || 'none'})`);
    let raw = m[2];
    if (raw === undefined) raw = args[i + 1];
    else i--; // --key=value takes one slot
    if (raw === undefined) throw new UsageError(`--${key} needs a value`);
    const v = Number(raw);
    if (!Number.isInteger(v) || v < def.min) throw new UsageError(`--${key} must be an integer ≥ ${def.min}, got "${raw}"`);
    out[key] = v;
  }
  return { opts: out, lists, names };
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === 'list') {
    for (const { bench } of BENCHMARKS) process.stdout.write(`${bench.name.padEnd(14)} ${bench.description}\n`);
    return 0;
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stderr.write(`${usage()}\n`);
    return name === undefined ? 2 : 0;
  }
  const entry = BENCHMARKS.find((b) => b.bench.name === name);
  if (!entry) {
    process.stderr.write(`bench: unknown benchmark "${name}" (known: ${BENCHMARKS.map((b) => b.bench.name).join(', ')}; see "list")\n`);
    return 2;
  }
  let opts: Record<string, number>;
  let lists: Record<string, number[]>;
  let names: Record<string, string[]>;
  try {
    ({ opts, lists, names } = parseOptions(entry.bench, rest));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`bench: ${e.message}\n${usage()}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: must run as root (it creates containers, mounts and cgroups)\n');
    return 2;
  }

  const ctx = await BenchContext.create(entry.bench.name, entry.netCidr);
  installSignalHandlers(() => ctx.cleanup());
  note(`${entry.bench.name} ${JSON.stringify({ ...opts, ...lists, ...names })}; state dir ${ctx.stateDir}`);
  let code = 0;
  try {
    const bench = entry.bench;
    if ('listOptions' in bench) await bench.run(ctx, opts, lists, names);
    else await bench.run(ctx, opts);
  } catch (e) {
    if (e instanceof Interrupted) code = 130;
    else {
      process.stderr.write(`bench: ${entry.bench.name} failed: ${e instanceof Error ? (e.stack ?? e.message) : errorMessage(e)}\n`);
      code = 1;
    }
  } finally {
    const leaks = await ctx.cleanup();
    if (leaks.length) {
      for (const l of leaks) process.stderr.write(`bench: LEAK/cleanup problem: ${l}\n`);
      code ||= 1;
    } else note('cleanup done; leak check clean (runc lists empty, no new netns, no mounts/loop devices/cgroups left)');
  }
  if (interrupted() && code === 0) code = 130;
  return code;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench: ${errorMessage(e)}\n`);
    process.exitCode = 1;
  },
);
