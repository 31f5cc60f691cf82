import { canonicalJson, sha256Hex } from './canonical-json.js';
import { invalidArgument, RunboxError } from './errors.js';
import { newId } from './ids.js';
import type { Job, JobRequest } from './job.js';
import { newJobRecord } from './job-record.js';
import { resolveLimits, type Limits } from './limits.js';
import type { Logger } from './log.js';
import type { JobQueue } from './queue.js';
import type { JobStore, QueuedQuota } from './store/jobs.js';
import { MiB } from './units.js';

/**
 * The one way a job enters runbox: used by the API (POST /v1/jobs), the test helpers and the
 * benchmarks, so that what they submit is what a client's request becomes.
 */
export interface SubmitDeps {
  jobs: JobStore;
  queue: JobQueue;
  limits: { defaultLimits: Limits; maxLimits: Limits };
  /** The tenant's queued-work caps (RUNBOX_TENANT_MAX_QUEUED(_BYTES)); none when absent. */
  quota?: QueuedQuota;
  /** Templates that exist; a request naming another is refused (`template_missing`). Unchecked when absent. */
  knownTemplates?: () => Promise<string[]>;
  log?: Logger;
}

export interface Submission {
  tenant: string;
  /** Already validated (JobRequestSchema). */
  request: JobRequest;
  /** The client's Idempotency-Key: the same key with the same request gives the same job. */
  idempotencyKey?: string;
}

/**
 * Checks a request against the host's templates and limits, stores its record (atomically within
 * the tenant's quota: QueuedQuotaExceeded otherwise) and queues it. An enqueue that fails undoes
 * the record (`unavailable`, nothing left behind); a repeated idempotent request whose first
 * enqueue was lost is queued again (BullMQ ignores an id it has). `created` is false for a
 * request the idempotency key had already seen.
 */
export async function submitJob(deps: SubmitDeps, s: Submission): Promise<{ job: Job; created: boolean }> {
  const { request: req, tenant } = s;
  if (deps.knownTemplates) {
    const known = await deps.knownTemplates();
    if (!known.includes(req.template)) {
      throw new RunboxError('template_missing', `template "${req.template}" does not exist; known templates: ${known.join(', ') || '(none)'}`, {
        meta: { template: req.template, known },
      });
    }
  }
  const limits = resolveLimits(req.limits, deps.limits.defaultLimits, deps.limits.maxLimits);
  checkFiles(req.files, limits);
  const idem = s.idempotencyKey ? { key: s.idempotencyKey, requestHash: sha256Hex(canonicalJson(req)) } : undefined;
  const { job, created } = await deps.jobs.create(tenant, newJobRecord(newId(10), req, limits), req, idem, deps.quota);
  if (created) {
    await enqueueOrDiscard(deps, job, tenant, idem?.key);
  } else if (job.status === 'queued') {
    await deps.queue.enqueue({ jobId: job.id, tenant }, job.priority);
  }
  return { job, created };
}

async function enqueueOrDiscard(deps: SubmitDeps, job: Job, tenant: string, idemKey: string | undefined): Promise<void> {
  try {
    await deps.queue.enqueue({ jobId: job.id, tenant }, job.priority);
  } catch (e) {
    deps.log?.error({ err: e, jobId: job.id }, 'enqueue failed');
    // Undo the create (its idempotency key too), so the refused request leaves nothing behind: no
    // record that never runs, nothing counted against the tenant's quota. Works on a full Redis.
    await deps.jobs
      .discard(tenant, job.id, idemKey)
      .catch((e2: unknown) => deps.log?.error({ err: e2, jobId: job.id }, 'undoing the create failed too: its record stays queued, without a queue entry'));
    throw new RunboxError('unavailable', 'the job could not be queued; retry later', { cause: e });
  }
}

/**
 * Decodes every file once to check it: base64 must be well-formed (Node's decoder silently skips
 * garbage), and the files together must fit the job's disk.
 */
export function checkFiles(files: JobRequest['files'], limits: Limits): void {
  let total = 0;
  const bad: Array<{ path: string; message: string }> = [];
  for (const [p, f] of Object.entries(files)) {
    if (f.encoding === 'base64') {
      const s = f.content.replace(/\s+/g, '');
      if (!isBase64(s)) bad.push({ path: `files[${JSON.stringify(p)}].content`, message: 'not valid base64' });
      else total += Buffer.byteLength(s, 'base64');
    } else {
      total += Buffer.byteLength(f.content, 'utf8');
    }
  }
  if (bad.length) throw invalidArgument('files', bad);
  const max = limits.diskMb * MiB;
  if (total > max) {
    throw new RunboxError('limit_exceeded', `files total ${total} bytes, more than the job's disk (limits.diskMb = ${limits.diskMb})`, {
      meta: { field: 'files', max },
    });
  }
}

/** Strict base64 (padding optional). No grouped regex: on megabytes that overflows V8's stack. */
function isBase64(s: string): boolean {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return false;
  return s.endsWith('=') ? s.length % 4 === 0 : s.length % 4 !== 1;
}
