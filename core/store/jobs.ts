import type { Redis } from 'ioredis';
import { RunboxError } from '../errors.js';
import { allowedFrom } from '../job-state.js';
import { JobSchema, type Job, type JobRequest, type JobStatus } from '../job.js';
import { Keys } from './keys.js';

/**
 * Jobs in Redis. A job is a hash: `tenant`, `status`, and every other Job field JSON-encoded;
 * its status history is a list beside it, its request a string beside it (it may be large, and
 * most reads do not need it). Status changes go through one Lua script that checks the allowed
 * transition, writes the fields, appends history, counts statuses and publishes an event, all
 * atomically: a cancel racing a finish cannot both win.
 */
const TRANSITION = `
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {err='not_found'} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {'conflict', cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], cur, -1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', KEYS[4], ARGV[4])
-- The index of live jobs (on some host): what the reaper checks against host heartbeats.
local s = ARGV[1]
if s == 'starting' or s == 'running' or s == 'checkpointing' or s == 'migrating' then
  redis.call('SADD', KEYS[5], KEYS[1])
else
  redis.call('SREM', KEYS[5], KEYS[1])
end
return {'ok', cur}
`;

/** Create unless the idempotency key already names a job. Returns {id, created}. */
const CREATE = `
if KEYS[5] ~= '' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {'exists', prev} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5, #ARGV - 1))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
-- score: creation ms * 1000 + a sequence, so jobs created in the same millisecond keep their order
local seq = redis.call('INCR', KEYS[4] .. ':seq') % 1000
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) * 1000 + seq, ARGV[4])
redis.call('HINCRBY', KEYS[6], 'queued', 1)
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[4] .. '|' .. ARGV[#ARGV], 'EX', 86400) end
return {'created', ARGV[4]}
`;

const JSON_FIELDS = [
  'template', 'network', 'priority', 'labels', 'limits', 'host', 'attempt', 'exitCode', 'signal', 'oomKilled', 'error', 'createdAt',
  'startedAt', 'finishedAt', 'usage', 'outputBytes', 'outputTruncated', 'artifacts', 'artifactsTruncated', 'cancelRequested',
  'runAs', 'progress', 'checkpoints', 'migrations',
] as const;
type JsonField = (typeof JSON_FIELDS)[number];
export type JobPatch = Partial<Pick<Job, JsonField>>;

export interface StoredJob {
  job: Job;
  tenant: string;
}

export class JobStore {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
    redis.defineCommand('rbTransition', { numberOfKeys: 5, lua: TRANSITION });
    redis.defineCommand('rbCreate', { numberOfKeys: 6, lua: CREATE });
  }

  /**
   * Stores a new queued job. With an idempotency key, a second create returns the first job
   * (`created: false`); the same key with a different request is a conflict.
   */
  async create(tenant: string, job: Job, request: JobRequest, idem?: { key: string; requestHash: string }): Promise<{ job: Job; created: boolean }> {
    const fields: string[] = ['tenant', tenant, 'status', job.status];
    for (const f of JSON_FIELDS) fields.push(f, JSON.stringify(job[f]));
    const k = this.keys;
    const hist = JSON.stringify(job.history[0]);
    const res = (await (this.redis as unknown as RedisScripts).rbCreate(
      k.job(job.id), k.request(job.id), k.history(job.id), k.tenantJobs(tenant), idem ? k.idempotency(tenant, idem.key) : '', k.statusCounts(),
      JSON.stringify(request), hist, Date.parse(job.createdAt), job.id, ...fields, idem?.requestHash ?? '',
    )) as [string, string];
    if (res[0] === 'created') return { job, created: true };
    const [prevId, prevHash] = res[1].split('|');
    if (prevHash !== idem?.requestHash) {
      throw new RunboxError('conflict', 'this Idempotency-Key was already used with a different request', { meta: { jobId: prevId } });
    }
    const prev = await this.get(prevId!);
    if (!prev) throw new RunboxError('conflict', 'this Idempotency-Key names a job that no longer exists');
    return { job: prev.job, created: false };
  }

  async get(id: string): Promise<StoredJob | null> {
    const [[, h], [, hist]] = (await this.redis.multi().hgetall(this.keys.job(id)).lrange(this.keys.history(id), 0, -1).exec()) as [
      [null, Record<string, string>],
      [null, string[]],
    ];
    if (!h || !h.status) return null;
    const raw: Record<string, unknown> = { id, status: h.status, history: hist.map((x) => JSON.parse(x)) };
    for (const f of JSON_FIELDS) raw[f] = h[f] === undefined ? undefined : JSON.parse(h[f]);
    return { job: JobSchema.parse(raw), tenant: h.tenant! };
  }

  async getRequest(id: string): Promise<JobRequest | null> {
    const raw = await this.redis.get(this.keys.request(id));
    return raw ? (JSON.parse(raw) as JobRequest) : null;
  }

  /**
   * Atomically moves a job to `to` if its current status allows it (or is one of `from`), writing
   * `patch`. Returns the previous status, or throws `conflict` naming the current one.
   */
  async transition(id: string, to: JobStatus, patch: JobPatch = {}, opts: { from?: JobStatus[]; host?: string | null; note?: string } = {}): Promise<JobStatus> {
    const from = opts.from ?? allowedFrom(to);
    const at = new Date().toISOString();
    const hist = JSON.stringify({ status: to, at, ...(opts.host !== undefined ? { host: opts.host } : {}), ...(opts.note ? { note: opts.note } : {}) });
    const args: string[] = [];
    for (const [k, v] of Object.entries(patch)) args.push(k, JSON.stringify(v));
    const k = this.keys;
    const res = (await (this.redis as unknown as RedisScripts).rbTransition(
      k.job(id), k.history(id), k.statusCounts(), k.eventsChannel(), k.liveJobs(),
      to, from.join(','), hist, JSON.stringify({ id, status: to }), ...args,
    ).catch((e: Error) => {
      if (/not_found/.test(e.message)) throw new RunboxError('not_found', `job ${id} not found`);
      throw e;
    })) as [string, JobStatus];
    if (res[0] === 'conflict') throw new RunboxError('conflict', `job ${id} is ${res[1]}; cannot become ${to}`, { meta: { status: res[1] } });
    return res[1];
  }

  /** Writes fields without a status change (e.g. checkpoints, cancelRequested). */
  async update(id: string, patch: JobPatch): Promise<void> {
    const args: string[] = [];
    for (const [k, v] of Object.entries(patch)) args.push(k, JSON.stringify(v));
    if (args.length) await this.redis.hset(this.keys.job(id), ...args);
  }

  /**
   * Newest first. `cursor` ("<index score>:<id>", from the previous page) continues strictly after
   * that job, also among jobs created in the same millisecond. Filters are applied while scanning.
   */
  async list(
    tenant: string,
    opts: { limit: number; cursor?: string; status?: JobStatus; labels?: Record<string, string> },
  ): Promise<{ jobs: Job[]; nextCursor: string | null }> {
    const out: Job[] = [];
    const after = parseCursor(opts.cursor);
    let max = after ? String(after.score) : '+inf';
    let skipSameScore = after; // members sort by id (descending) within one score
    for (let round = 0; round < 50 && out.length < opts.limit; round++) {
      const batch = await this.redis.zrevrangebyscore(this.keys.tenantJobs(tenant), max, '-inf', 'WITHSCORES', 'LIMIT', 0, opts.limit * 2 + 1);
      if (batch.length === 0) return { jobs: out, nextCursor: null };
      let last: { id: string; score: number } | undefined;
      for (let i = 0; i < batch.length; i += 2) {
        const id = batch[i]!;
        const score = Number(batch[i + 1]);
        last = { id, score };
        if (skipSameScore && score === skipSameScore.score && id >= skipSameScore.id) continue;
        const s = await this.get(id);
        if (!s) continue;
        if (opts.status && s.job.status !== opts.status) continue;
        if (opts.labels && Object.entries(opts.labels).some(([k, v]) => s.job.labels[k] !== v)) continue;
        out.push(s.job);
        if (out.length === opts.limit) return { jobs: out, nextCursor: `${score}:${id}` };
      }
      // Continue from the last member seen (inclusive score, skipping members up to it).
      max = String(last!.score);
      skipSameScore = last;
    }
    return { jobs: out, nextCursor: null };
  }

  /** Lets a finished job's data expire after `ttlSec` (its log and artifacts too). */
  async expire(id: string, ttlSec: number): Promise<void> {
    const k = this.keys;
    await this.redis
      .multi()
      .expire(k.job(id), ttlSec)
      .expire(k.history(id), ttlSec)
      .expire(k.request(id), ttlSec)
      .expire(k.log(id), ttlSec)
      .expire(k.artifacts(id), ttlSec)
      .exec();
  }

  /** Drops index entries of jobs older than the retention time (their data has expired). */
  async pruneIndex(tenant: string, olderThanMs: number): Promise<void> {
    await this.redis.zremrangebyscore(this.keys.tenantJobs(tenant), '-inf', `(${olderThanMs * 1000}`);
  }

  /** Ids of jobs that are starting, running, checkpointing or migrating somewhere. */
  async liveJobIds(): Promise<string[]> {
    const keys = await this.redis.smembers(this.keys.liveJobs());
    return keys.map((k) => k.slice(this.keys.job('').length));
  }

  async statusCounts(): Promise<Record<string, number>> {
    const h = await this.redis.hgetall(this.keys.statusCounts());
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }
}

function parseCursor(c: string | undefined): { score: number; id: string } | undefined {
  if (!c) return undefined;
  const m = /^(\d+):([a-z0-9]+)$/.exec(c);
  if (!m) throw new RunboxError('invalid_argument', `invalid cursor "${c}" (use nextCursor from the previous page)`);
  return { score: Number(m[1]), id: m[2]! };
}

interface RedisScripts {
  rbTransition(...args: Array<string | number>): Promise<unknown>;
  rbCreate(...args: Array<string | number>): Promise<unknown>;
}
