import type { Redis } from 'ioredis';
import { TENANT_CAP_DEFAULTS } from '../config.js';
import { Keys } from './keys.js';

/** How often an entry of the budget is checked for whether its job's artifacts still exist. */
export const ARTIFACT_RECHECK_MS = 10 * 60 * 1000;
/** Due entries one put checks (more only when the tenant is at its budget). */
const SWEEP_DUE = 64;

/**
 * Stores a job's files within its tenant's budget of artifact bytes held in Redis, atomically.
 * KEYS: job hash (its `tenant`), the job's artifact hash, budget hash prefix, check zset prefix.
 * ARGV: now ms, budget (0 = none), recheck ms, artifact key prefix, job id, then path/content pairs.
 *
 * The budget hash maps job id → bytes held, '#' → their total; the zset says when to look next
 * whether a job's artifact hash still exists. Artifacts leave Redis by expiring with the job's
 * result (JobStore.expire) or by deletion, never through this store, so entries are freed lazily:
 * a due entry whose hash is gone gives its bytes back; one whose hash has a TTL is rescheduled to
 * it. A tenant at its budget checks every entry first, so expired results never block new ones.
 * Returns {stored bytes, tenant total, skipped path, skipped size, ...}.
 */
const PUT = `
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if not tenant then return {'nojob'} end
local bytesKey, checkKey = KEYS[3] .. tenant, KEYS[4] .. tenant
local now, budget, recheck, artPrefix, jobId = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local total = tonumber(redis.call('HGET', bytesKey, '#') or '0')

-- Reads only (writes below): which entries to free, which to look at again when.
local gone, later = {}, {}
local function sweep(ids, reschedule)
  for _, id in ipairs(ids) do
    if id ~= jobId and not gone[id] then
      local ttl = redis.call('PTTL', artPrefix .. id)
      if ttl == -2 then
        gone[id] = true
        total = total - tonumber(redis.call('HGET', bytesKey, id) or '0')
      elseif reschedule then
        later[#later + 1] = now + (ttl > 0 and ttl or recheck)
        later[#later + 1] = id
      end
    end
  end
end

local files, need = {}, 0
for i = 6, #ARGV, 2 do
  local grow = #ARGV[i + 1] - redis.call('HSTRLEN', KEYS[2], ARGV[i])
  files[#files + 1] = {ARGV[i], ARGV[i + 1], grow}
  need = need + grow
end
sweep(redis.call('ZRANGEBYSCORE', checkKey, '-inf', now, 'LIMIT', 0, ${SWEEP_DUE}), true)
if budget > 0 and total + need > budget then sweep(redis.call('ZRANGE', checkKey, 0, -1), false) end

local held = tonumber(redis.call('HGET', bytesKey, jobId) or '0')
local added, store, out = 0, {}, {}
for _, f in ipairs(files) do
  if budget == 0 or total + added + f[3] <= budget then
    store[#store + 1] = f[1]
    store[#store + 1] = f[2]
    added = added + f[3]
  else
    out[#out + 1] = f[1]
    out[#out + 1] = tostring(#f[2])
  end
end
-- The first write is the content: on a Redis out of memory it is refused and nothing changes.
if #store > 0 then redis.call('HSET', KEYS[2], unpack(store)) end
for id in pairs(gone) do
  redis.call('HDEL', bytesKey, id)
  redis.call('ZREM', checkKey, id)
end
if #later > 0 then redis.call('ZADD', checkKey, unpack(later)) end
total = total + added
if held + added > 0 then
  redis.call('HSET', bytesKey, jobId, held + added, '#', total)
  redis.call('ZADD', checkKey, 'NX', now + recheck, jobId)
elseif next(gone) then
  redis.call('HSET', bytesKey, '#', total)
end
return {'ok', tostring(added), tostring(total), unpack(out)}
`;

export interface PutResult {
  /** Bytes stored now (what overwritten files held before is subtracted). */
  storedBytes: number;
  /** The tenant's artifact bytes in Redis after this put. */
  tenantBytes: number;
  /** Files left out because the tenant's budget could not hold them (in the order given). */
  skipped: Array<{ path: string; size: number }>;
}

/**
 * Where a job's collected files are kept: Redis (ArtifactStore, below) or an object store
 * (core/objects/artifacts.ts). The job's record lists them (path, size, mode).
 */
export interface ArtifactStorage {
  put(jobId: string, files: Array<{ path: string; content: Buffer }>): Promise<PutResult>;
  /** One file's bytes; null when there is none. `size` (the recorded one) bounds what is read. */
  get(jobId: string, path: string, size: number): Promise<Buffer | null>;
}

/**
 * Collected files of a job: one Redis hash per job, path → content. The worker caps what one job
 * collects (RUNBOX_MAX_ARTIFACT_BYTES); this store caps what one tenant holds in Redis across its
 * jobs (RUNBOX_TENANT_MAX_ARTIFACT_BYTES), see PUT.
 */
export class ArtifactStore implements ArtifactStorage {
  readonly keys: Keys;
  constructor(
    readonly redis: Redis,
    prefix: string,
    private readonly opts: { tenantMaxBytes?: number } = {},
  ) {
    this.keys = new Keys(prefix);
    redis.defineCommand('rbArtifactsPut', { numberOfKeys: 4, lua: PUT });
  }

  /**
   * Stores what fits in the job's tenant's budget, file by file in the given order (a file that
   * does not fit is skipped, later smaller ones may still fit), and says what it left out. The
   * job's record must exist (its tenant is read from it); if it does not, nothing is stored.
   */
  async put(jobId: string, files: Array<{ path: string; content: Buffer }>): Promise<PutResult> {
    if (files.length === 0) return { storedBytes: 0, tenantBytes: 0, skipped: [] };
    const k = this.keys;
    const budget = this.opts.tenantMaxBytes ?? TENANT_CAP_DEFAULTS.tenantMaxArtifactBytes;
    const args: Array<string | Buffer | number> = [Date.now(), budget, ARTIFACT_RECHECK_MS, k.artifacts(''), jobId];
    for (const f of files) args.push(f.path, f.content);
    const res = (await (this.redis as unknown as { rbArtifactsPut(...a: Array<string | Buffer | number>): Promise<string[]> }).rbArtifactsPut(
      k.job(jobId), k.artifacts(jobId), k.tenantArtifactBytes(''), k.tenantArtifactCheck(''), ...args,
    ));
    if (res[0] === 'nojob') return { storedBytes: 0, tenantBytes: 0, skipped: files.map((f) => ({ path: f.path, size: f.content.length })) };
    const skipped: PutResult['skipped'] = [];
    for (let i = 3; i < res.length; i += 2) skipped.push({ path: res[i]!, size: Number(res[i + 1]) });
    return { storedBytes: Number(res[1]), tenantBytes: Number(res[2]), skipped };
  }

  async get(jobId: string, path: string, _size?: number): Promise<Buffer | null> {
    return this.redis.hgetBuffer(this.keys.artifacts(jobId), path);
  }

  /** The tenant's artifact bytes held in Redis, as the budget counts them. */
  async tenantBytes(tenant: string): Promise<number> {
    return Number((await this.redis.hget(this.keys.tenantArtifactBytes(tenant), '#')) ?? 0);
  }
}
