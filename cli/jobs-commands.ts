import { RunboxError } from '../core/errors.js';
import type { Job, JobRequestInput } from '../core/job.js';
import { ApiClient } from './http-client.js';
import { exitStatus, parseRunArgs } from './run-args.js';
import { one, strict, table } from './args.js';

/** Flags only `submit` has; everything else is shared with `runbox run`. */
const SUBMIT_FLAGS: Record<string, 'string' | 'boolean'> = { wait: 'string', priority: 'string', label: 'string', artifact: 'string', follow: 'boolean', json: 'boolean' };

export const SUBMIT_USAGE = `usage: runbox submit [run flags] [--wait SEC] [--follow] [--priority N] [--label K=V] [--artifact PATH] [--json] -- CMD [ARGS...]
  (run flags as in "runbox run --help"). Prints the job id; with --wait or --follow waits for the
  end, prints the output (--follow streams it live) and exits with the job's exit status.`;

export function splitSubmitArgs(args: string[]): { submit: Record<string, string[] | boolean>; rest: string[] } {
  const submit: Record<string, string[] | boolean> = {};
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      rest.push(...args.slice(i));
      break;
    }
    const name = a.startsWith('--') ? a.slice(2).split('=')[0]! : a === '-f' ? 'follow' : '';
    const kind = SUBMIT_FLAGS[name];
    if (!kind) {
      rest.push(a);
      continue;
    }
    if (kind === 'boolean') submit[name] = true;
    else {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : args[++i];
      if (v === undefined) throw new RunboxError('invalid_argument', `--${name} needs a value`);
      submit[name] = [...((submit[name] as string[]) ?? []), v];
    }
  }
  return { submit, rest };
}

export function buildJobRequest(args: string[]): { body: JobRequestInput; wait?: number; follow: boolean; json: boolean } {
  const { submit, rest } = splitSubmitArgs(args);
  const r = parseRunArgs(rest);
  const labels: Record<string, string> = {};
  for (const kv of (submit.label as string[]) ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new RunboxError('invalid_argument', `--label "${kv}": expected K=V`);
    labels[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const last = (k: string) => (submit[k] as string[] | undefined)?.at(-1);
  const wait = last('wait') === undefined ? undefined : Number(last('wait'));
  if (wait !== undefined && !(wait >= 0 && wait <= 300)) throw new RunboxError('invalid_argument', '--wait: expected seconds between 0 and 300');
  const priority = last('priority') === undefined ? undefined : Number(last('priority'));
  if (priority !== undefined && !(Number.isInteger(priority) && priority >= 0 && priority <= 100)) {
    throw new RunboxError('invalid_argument', '--priority: expected a whole number from 0 to 100');
  }
  const body: JobRequestInput = {
    template: r.template,
    command: r.argv,
    env: r.env,
    network: r.network,
    limits: Object.keys(r.limits).length ? r.limits : undefined,
    user: r.user,
    hostname: r.hostname,
    workdir: r.workdir,
    labels,
    artifacts: (submit.artifact as string[]) ?? [],
    ...(priority !== undefined ? { priority } : {}),
  };
  return { body, wait, follow: submit.follow === true, json: submit.json === true };
}

export async function submitCommand(args: string[]): Promise<number> {
  if (args[0] === '--help' || args[0] === '-h') return (process.stdout.write(`${SUBMIT_USAGE}\n`), 0);
  const { body, wait, follow, json } = buildJobRequest(args);
  const client = ApiClient.fromEnv();
  if (parseRunArgs(splitSubmitArgs(args).rest).stdin) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    body.stdin = Buffer.concat(chunks).toString('utf8');
  }
  const query = wait !== undefined && !follow ? `?wait=${wait}` : '';
  let job = await client.json<Job>('POST', `/v1/jobs${query}`, body);
  if (!follow && wait === undefined) {
    process.stdout.write(json ? `${JSON.stringify(job, null, 2)}\n` : `${job.id}\n`);
    return 0;
  }
  if (follow) {
    await streamLogs(client, job.id, true);
    job = await client.json<Job>('GET', `/v1/jobs/${job.id}`);
  } else if (!isTerminalStatus(job.status)) {
    process.stderr.write(`runbox: job ${job.id} is still ${job.status} after ${wait}s\n`);
    return 124;
  } else {
    process.stdout.write(Buffer.from(await (await client.request('GET', `/v1/jobs/${job.id}/logs`)).arrayBuffer()));
  }
  if (json) process.stdout.write(`${JSON.stringify(job, null, 2)}\n`);
  return jobExitStatus(job);
}

export function jobExitStatus(job: Job): number {
  if (job.status === 'canceled') return 130;
  if (job.error && job.exitCode === null && !job.oomKilled && job.status !== 'timed_out') {
    process.stderr.write(`runbox: job ${job.id} ${job.status}: ${job.error.message}\n`);
    return 125;
  }
  if (job.error) process.stderr.write(`runbox: ${job.error.message}\n`);
  return exitStatus({ exitCode: job.exitCode, signal: job.signal, timedOut: job.status === 'timed_out', oomKilled: job.oomKilled });
}

const isTerminalStatus = (s: string) => ['succeeded', 'failed', 'canceled', 'timed_out'].includes(s);

/** Prints the job's output; with `follow`, streams it live over SSE until the job ends. */
export async function streamLogs(client: ApiClient, id: string, follow: boolean): Promise<void> {
  if (!follow) {
    process.stdout.write(Buffer.from(await (await client.request('GET', `/v1/jobs/${id}/logs`)).arrayBuffer()));
    return;
  }
  const res = await client.request('GET', `/v1/jobs/${id}/logs?follow=1`, undefined, { accept: 'text/event-stream' });
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let sep: number;
    while ((sep = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, sep);
      buf = buf.slice(sep + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (event === 'end') return;
      if (event === 'status' && data) {
        const e = JSON.parse(data) as { status: string; progress: string | null };
        if (e.progress) process.stderr.write(`runbox: ${e.progress}\n`);
      }
      if (event === 'output' && data) {
        const e = JSON.parse(data) as { stream: string; data: string };
        (e.stream === 'stderr' ? process.stderr : process.stdout).write(e.data);
      }
    }
  }
}

export async function logsCommand(args: string[]): Promise<number> {
  const { values, positionals } = strict(args, { follow: { type: 'boolean', short: 'f' } }, 'runbox logs [-f] JOB_ID');
  const id = one(positionals, 'runbox logs [-f] JOB_ID');
  await streamLogs(ApiClient.fromEnv(), id, values.follow === true);
  return 0;
}

export async function statusCommand(args: string[]): Promise<number> {
  const id = one(strict(args, {}, 'runbox status JOB_ID').positionals, 'runbox status JOB_ID');
  const job = await ApiClient.fromEnv().json<Job>('GET', `/v1/jobs/${encodeURIComponent(id)}`);
  process.stdout.write(`${JSON.stringify(job, null, 2)}\n`);
  return 0;
}

export async function cancelCommand(args: string[]): Promise<number> {
  const id = one(strict(args, {}, 'runbox cancel JOB_ID').positionals, 'runbox cancel JOB_ID');
  const job = await ApiClient.fromEnv().json<Job>('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
  process.stdout.write(`${job.id} ${job.status}${job.cancelRequested && job.status !== 'canceled' ? ' (cancel requested)' : ''}\n`);
  return 0;
}

export async function checkpointCommand(args: string[]): Promise<number> {
  const id = one(strict(args, {}, 'runbox checkpoint JOB_ID').positionals, 'runbox checkpoint JOB_ID');
  const cp = await ApiClient.fromEnv().json<{ id: string; sizeBytes: number; outputOffset: number }>('POST', `/v1/jobs/${encodeURIComponent(id)}/checkpoint`);
  process.stdout.write(`checkpoint ${cp.id} of job ${id}: ${cp.sizeBytes} bytes, output offset ${cp.outputOffset}\n`);
  return 0;
}

export async function migrateCommand(args: string[]): Promise<number> {
  const usage = 'runbox migrate JOB_ID [--to HOST] [--mode auto|post-copy|stop-and-copy]';
  const { values, positionals } = strict(args, { to: { type: 'string' }, mode: { type: 'string' } }, usage);
  const id = one(positionals, usage);
  const modes = ['auto', 'post-copy', 'stop-and-copy'];
  if (values.mode !== undefined && !modes.includes(String(values.mode))) throw new RunboxError('invalid_argument', `--mode must be auto, post-copy or stop-and-copy\nusage: ${usage}`);
  const body = { ...(values.to ? { host: values.to } : {}), ...(values.mode ? { mode: values.mode } : {}) };
  const job = await ApiClient.fromEnv().json<Job>('POST', `/v1/jobs/${encodeURIComponent(id)}/migrate`, body);
  const m = job.migrations.at(-1);
  process.stdout.write(m ? `job ${id} moved ${m.from} → ${m.to} in ${m.totalMs} ms (frozen ${m.frozenMs} ms, ${m.mode})\n` : `job ${id} on ${job.host}\n`);
  return 0;
}

export async function drainCommand(args: string[], verb: 'drain' | 'resume'): Promise<number> {
  const host = one(strict(args, {}, `runbox ${verb} HOST`).positionals, `runbox ${verb} HOST`);
  const r = await ApiClient.fromEnv().json<{ moved?: string[]; stayed?: Array<{ jobId: string; reason: string }> }>('POST', `/v1/hosts/${encodeURIComponent(host)}/${verb}`);
  if (verb === 'resume') process.stdout.write(`host ${host} takes jobs again\n`);
  else {
    process.stdout.write(`host ${host} drained: ${r.moved?.length ?? 0} jobs moved\n`);
    for (const s of r.stayed ?? []) process.stdout.write(`  ${s.jobId} stayed: ${s.reason}\n`);
  }
  return r.stayed?.length ? 1 : 0;
}

export async function lsCommand(args: string[]): Promise<number> {
  const usage = 'runbox ls [--status S] [--label K=V] [--limit N] [--json]';
  const { values } = strict(args, { status: { type: 'string' }, label: { type: 'string', multiple: true }, limit: { type: 'string' }, json: { type: 'boolean' } }, usage);
  const q = new URLSearchParams();
  if (values.status) q.set('status', values.status as string);
  for (const l of (values.label as string[]) ?? []) q.append('label', l);
  if (values.limit) q.set('limit', values.limit as string);
  const r = await ApiClient.fromEnv().json<{ jobs: Job[] }>('GET', `/v1/jobs${q.size ? `?${q}` : ''}`);
  if (values.json) process.stdout.write(`${JSON.stringify(r.jobs, null, 2)}\n`);
  else {
    const rows = r.jobs.map((j) => [j.id, j.status, j.exitCode === null ? '-' : String(j.exitCode), j.template, j.host ?? '-', j.createdAt]);
    process.stdout.write(table(['ID', 'STATUS', 'EXIT', 'TEMPLATE', 'HOST', 'CREATED'], rows));
  }
  return 0;
}

export async function hostsCommand(args: string[]): Promise<number> {
  strict(args, {}, 'runbox hosts');
  const r = await ApiClient.fromEnv().json<{ hosts: Array<{ id: string; address?: string | null; running: number; capacity: number; draining: boolean; pools: Array<{ template: string; network: string; idle: number; inUse: number }> }> }>('GET', '/v1/hosts');
  // Addresses are shown to admin tokens only (the API leaves the field out for the others).
  const admin = r.hosts.some((h) => 'address' in h);
  const rows = r.hosts.map((h) => [
    h.id,
    ...(admin ? [h.address ?? '-'] : []),
    `${h.running}/${h.capacity}`,
    h.draining ? 'draining' : 'active',
    h.pools.map((p) => `${p.template}:${p.network} idle=${p.idle} busy=${p.inUse}`).join(', '),
  ]);
  process.stdout.write(table(['HOST', ...(admin ? ['ADDRESS'] : []), 'JOBS', 'STATE', 'POOLS'], rows));
  return 0;
}




