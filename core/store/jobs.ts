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
/** Lua: takes a job out of its tenant's queued work (hash `q`: job → request bytes, '#' → total). */
const UNQUEUE = `
local function unqueue(q, job)
  local b = redis.call('HGET', q, job)
  if b then
    redis.call('HDEL', q, job)
    redis.call('HINCRBY', q, '#', -tonumber(b))
    if redis.call('HLEN', q) == 1 then redis.call('DEL', q) end
  end
end
`;

const TRANSITION = `${UNQUEUE}
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {err='not_found'} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {'conflict', cur} end
local s = ARGV[1]
redis.call('HSET', KEYS[1], 'status', s)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], cur, -1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', KEYS[4], ARGV[4])
-- The tenant's queued work (CREATE's quota): a job counts while it is queued, with its request's size.
if cur == 'queued' or s == 'queued' then
  local q = KEYS[6] .. (redis.call('HGET', KEYS[1], 'tenant') or '')
  if cur ~= 'queued' then
    local b = redis.call('STRLEN', KEYS[7])
    if redis.call('HSETNX', q, KEYS[1], b) == 1 then redis.call('HINCRBY', q, '#', b) end
  elseif s ~= 'queued' then
    unqueue(q, KEYS[1])
  end
end
-- The index of live jobs (on some host): what the reaper checks against host heartbeats.
if s == 'starting' or s == 'running' or s == 'checkpointing' or s == 'migrating' then
  redis.call('SADD', KEYS[5], KEYS[1])
else
  redis.call('SREM', KEYS[5], KEYS[1])
end
return {'ok', cur}
`;

/**
 * Create unless the idempotency key already names a job, or the tenant's queued work is at its cap
 * (ARGV[5] jobs, ARGV[6] request bytes; 0 = no cap). The tenant's queued hash (KEYS[7]) maps each
 * queued job's key to its request size, '#' to the total; TRANSITION removes a job that leaves
 * \`queued\`. At the cap it recounts from the entries (dropping any whose job is not queued), so
 * the quota heals itself instead of staying used up by entries a manual deletion left behind.
 * Reads come first: the first write (HSET of the job) is the one Redis refuses as a whole when it
 * is out of memory (maxmemory), so a create is all or nothing.
 */
const CREATE = `
if KEYS[5] ~= '' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {'exists', prev} end
end
local q, bytes, maxJobs, maxBytes = KEYS[7], string.len(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n = redis.call('HLEN', q) - redis.call('HEXISTS', q, '#')
local total = tonumber(redis.call('HGET', q, '#') or '0')
local function over() return (maxJobs > 0 and n + 1 > maxJobs) or (maxBytes > 0 and total + bytes > maxBytes) end
local stale = {}
if over() then
  n, total = 0, 0
  local all = redis.call('HGETALL', q)
  for i = 1, #all, 2 do
    if all[i] ~= '#' then
      if redis.call('HGET', all[i], 'status') == 'queued' then
        n, total = n + 1, total + tonumber(all[i + 1])
      else
        stale[#stale + 1] = all[i]
      end
    end
  end
end
local function heal()
  for _, k in ipairs(stale) do redis.call('HDEL', q, k) end
  if #stale > 0 then redis.call('HSET', q, '#', total) end
end
if over() then
  heal()
  if maxJobs > 0 and n + 1 > maxJobs then return {'quota', 'jobs', tostring(n), ARGV[5]} end
  return {'quota', 'bytes', tostring(total), ARGV[6]}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7, #ARGV - 1))
heal()
redis.call('HSET', q, KEYS[1], bytes, '#', total + bytes)
redis.call('SET', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
-- score: creation ms * 1000 + a sequence, so jobs created in the same millisecond keep their order
local seq = redis.call('INCR', KEYS[4] .. ':seq') % 1000
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) * 1000 + seq, ARGV[4])
redis.call('HINCRBY', KEYS[6], 'queued', 1)
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[4] .. '|' .. ARGV[#ARGV], 'EX', 86400) end
return {'created', ARGV[4]}
`;

/**
 * Undoes a create whose enqueue failed (e.g. Redis out of memory), if the job is still queued.
 * Deletes come first: Redis refuses a script's *first* write when out of memory only if that
 * command may grow memory (DEL, ZREM, HDEL may not; see scriptVerifyOOM in Redis's script.c), so
 * this runs to the end on a full Redis too and leaves nothing of the job behind.
 */
const DISCARD = `${UNQUEUE}
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local q = KEYS[7] .. redis.call('HGET', KEYS[1], 'tenant')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
if KEYS[5] ~= '' and string.find(redis.call('GET', KEYS[5]) or '', ARGV[1] .. '|', 1, true) == 1 then redis.call('DEL', KEYS[5]) end
unqueue(q, KEYS[1])
redis.call('HINCRBY', KEYS[6], 'queued', -1)
return 1
`;

/** The tenant's queued work is at a cap (RUNBOX_TENANT_MAX_QUEUED / _BYTES): nothing was stored. */
export class QueuedQuotaExceeded extends Error {
  constructor(
    readonly quota: 'jobs' | 'bytes',
    readonly used: number,
    readonly limit: number,
  ) {
    super(`queued ${quota} quota reached (${used} of ${limit})`);
    this.name = 'QueuedQuotaExceeded';
  }
}

export interface QueuedQuota {
  /** Most jobs a tenant may have queued (0: no cap). */
  maxQueued: number;
  /** Most bytes of stored requests of a tenant's queued jobs (0: no cap). */
  maxQueuedBytes: number;
}

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
    redis.defineCommand('rbTransition', { numberOfKeys: 7, lua: TRANSITION });
    redis.defineCommand('rbCreate', { numberOfKeys: 7, lua: CREATE });
    redis.defineCommand('rbDiscard', { numberOfKeys: 7, lua: DISCARD });
  }

  /**
   * Stores a new queued job. With an idempotency key, a second create returns the first job
   * (`created: false`); the same key with a different request is a conflict. With `quota`, a
   * tenant whose queued work is at a cap gets QueuedQuotaExceeded (checked atomically).
   */
  async create(
    tenant: string,
    job: Job,
    request: JobRequest,
    idem?: { key: string; requestHash: string },
    quota: QueuedQuota = { maxQueued: 0, maxQueuedBytes: 0 },
  ): Promise<{ job: Job; created: boolean }> {
    const fields: string[] = ['tenant', tenant, 'status', job.status];
    for (const f of JSON_FIELDS) fields.push(f, JSON.stringify(job[f]));
    const k = this.keys;
    const hist = JSON.stringify(job.history[0]);
    const res = (await (this.redis as unknown as RedisScripts).rbCreate(
      k.job(job.id), k.request(job.id), k.history(job.id), k.tenantJobs(tenant), idem ? k.idempotency(tenant, idem.key) : '', k.statusCounts(), k.tenantQueued(tenant),
      JSON.stringify(request), hist, Date.parse(job.createdAt), job.id, quota.maxQueued, quota.maxQueuedBytes, ...fields, idem?.requestHash ?? '',
    )) as string[];
    if (res[0] === 'created') return { job, created: true };
    if (res[0] === 'quota') throw new QueuedQuotaExceeded(res[1] as 'jobs' | 'bytes', Number(res[2]), Number(res[3]));
    const [prevId, prevHash] = res[1]!.split('|');
    if (prevHash !== idem?.requestHash) {
      throw new RunboxError('conflict', 'this Idempotency-Key was already used with a different request', { meta: { jobId: prevId } });
    }
    const prev = await this.get(prevId!);
    if (!prev) throw new RunboxError('conflict', 'this Idempotency-Key names a job that no longer exists');
    return { job: prev.job, created: false };
  }

  /**
   * Removes a job that was created but could not be queued, so a failed create leaves nothing
   * (also on a Redis that is out of memory). Only while it is still queued; returns whether it did.
   */
  async discard(tenant: string, id: string, idemKey?: string): Promise<boolean> {
    const k = this.keys;
    const r = await (this.redis as unknown as RedisScripts).rbDiscard(
      k.job(id), k.request(id), k.history(id), k.tenantJobs(tenant), idemKey ? k.idempotency(tenant, idemKey) : '', k.statusCounts(), k.tenantQueued(''),
      id,
    );
    return r === 1;
  }

  /** The tenant's queued jobs and the bytes of their requests, as the quota counts them. */
  async queuedUsage(tenant: string): Promise<{ jobs: number; bytes: number }> {
    const h = await this.redis.hgetall(this.keys.tenantQueued(tenant));
    return { jobs: Object.keys(h).filter((f) => f !== '#').length, bytes: Number(h['#'] ?? 0) };
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
      k.job(id), k.history(id), k.statusCounts(), k.eventsChannel(), k.liveJobs(), k.tenantQueued(''), k.request(id),
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
  rbDiscard(...args: Array<string | number>): Promise<unknown>;
}
