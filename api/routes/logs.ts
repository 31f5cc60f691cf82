import { Hono } from 'hono';
import { stream, streamSSE } from 'hono/streaming';
import { tenantCaps } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { toEvent } from '../../core/store/logs.js';
import { anySignal } from '../abort.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { tailLogs } from '../log-tail.js';
import { ownJob } from '../own-job.js';
import { ApiError } from '../problem.js';
import { invalid } from '../validate.js';

export const SSE_POLL_MS = 100;
export const SSE_HEARTBEAT_MS = 15_000;
/** Retry-After of a refused follower: other streams of the tenant end when their jobs do. */
const FOLLOWER_RETRY_SEC = 5;

/**
 * GET /v1/jobs/:id/logs. Plain text by default; `Accept: text/event-stream` gives SSE:
 *   id: <end offset>   (byte offset just past this chunk: resume with Last-Event-ID = it)
 *   event: output      data: {"stream":"stdout","data":"...","offset":<start offset>}
 * and a final `event: end` with the job's status. `?offset=N` / Last-Event-ID: N start at the
 * first chunk whose offset is >= N. `?follow=1` keeps streaming until the job ends, and adds
 *   event: status      data: {"status":"starting","progress":"building template python: …"}
 * whenever the job's status or progress changes (what it waits for before it has output).
 */
export function logRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  const pollMs = deps.sse?.pollMs ?? SSE_POLL_MS;
  const heartbeatMs = deps.sse?.heartbeatMs ?? SSE_HEARTBEAT_MS;
  const followers = new FollowerSlots(tenantCaps(deps.config).tenantMaxFollowers);

  app.get('/:id/logs', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    await ownJob(deps.jobs, c.get('tenant'), id);
    const sse = (c.req.header('accept') ?? '').includes('text/event-stream');
    const from = parseOffset(c.req.header('last-event-id'), 'Last-Event-ID') ?? parseOffset(c.req.query('offset'), 'offset') ?? 0;
    const follow = parseFollow(c.req.query('follow'));
    // A follower holds a connection and polls Redis until the job ends: capped per tenant. Taken
    // last (nothing after it can throw before the stream starts), released when the stream ends.
    const release = follow || sse ? followers.take(c.get('tenant')) : () => undefined;
    const signal = anySignal([deps.shutdown, c.req.raw.signal]);
    const status = async () => (await deps.jobs.get(id))?.job.status ?? null;
    const chunks = (statusOf: () => Promise<Job['status'] | null> = status) => tailLogs(deps.logs, id, from, { follow, pollMs, signal: signal.signal, status: statusOf });
    if (!sse) {
      // Streamed chunk by chunk even without follow: output may be up to maxLimits.outputBytes.
      c.header('Content-Type', 'text/plain; charset=utf-8');
      return stream(c, async (s) => {
        s.onAbort(signal.abort);
        try {
          for await (const ch of chunks()) await s.write(new Uint8Array(ch.data));
        } catch (e) {
          c.get('log').error({ err: e, jobId: id }, 'log stream failed');
        } finally {
          release();
          signal.dispose();
        }
      });
    }
    return streamSSE(c, async (s) => {
      s.onAbort(signal.abort);
      const beat = setInterval(() => void s.write(': keepalive\n\n'), heartbeatMs);
      // Following: what the job is doing before it has output (its template being built, …) as
      // `event: status`, whenever its status or progress changes.
      let said = '';
      const statusWithEvents = async () => {
        const job = (await deps.jobs.get(id))?.job ?? null;
        const now = JSON.stringify({ status: job?.status ?? null, progress: job?.progress ?? null });
        if (job && now !== said) {
          said = now;
          await s.writeSSE({ event: 'status', data: now });
        }
        return job?.status ?? null;
      };
      try {
        for await (const ch of chunks(follow ? statusWithEvents : status)) {
          await s.writeSSE({ id: String(ch.offset + ch.data.length), event: 'output', data: JSON.stringify(toEvent(ch)) });
        }
        if (!signal.signal.aborted) {
          const job = (await deps.jobs.get(id))?.job ?? null;
          await s.writeSSE({ event: 'end', data: JSON.stringify(endEvent(job)) });
        }
      } catch (e) {
        // The status line is long gone: say so in-band, without internals.
        c.get('log').error({ err: e, jobId: id }, 'log stream failed');
        await s.writeSSE({ event: 'error', data: JSON.stringify({ code: 'internal', requestId: c.get('requestId') }) });
      } finally {
        clearInterval(beat);
        release();
        signal.dispose();
      }
    });
  });

  return app;
}

/**
 * Concurrent log followers (SSE streams, `?follow=1`) per tenant in this API process. Counted in
 * memory: a slot lives exactly as long as its connection, and a crashed process frees its own.
 */
export class FollowerSlots {
  private readonly held = new Map<string, number>();
  constructor(private readonly max: number) {}

  /** A release function (idempotent), or a 429 quota_exceeded when the tenant holds `max`. */
  take(tenant: string): () => void {
    const n = this.held.get(tenant) ?? 0;
    if (this.max > 0 && n >= this.max) {
      throw new ApiError(
        'quota_exceeded',
        `tenant "${tenant}" already follows ${n} log streams on this server, the most allowed (RUNBOX_TENANT_MAX_FOLLOWERS=${this.max}); close one, or read the log without follow`,
        { meta: { quota: 'followers', limit: this.max, used: n }, headers: { 'Retry-After': String(FOLLOWER_RETRY_SEC) } },
      );
    }
    this.held.set(tenant, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.held.get(tenant) ?? 1) - 1;
      if (left > 0) this.held.set(tenant, left);
      else this.held.delete(tenant);
    };
  }

  count(tenant: string): number {
    return this.held.get(tenant) ?? 0;
  }
}

export function endEvent(job: Job | null): Record<string, unknown> {
  if (!job) return { status: null };
  const { status, exitCode, signal, oomKilled, error, outputBytes, outputTruncated, finishedAt } = job;
  return { status, exitCode, signal, oomKilled, error, outputBytes, outputTruncated, finishedAt };
}

function parseOffset(raw: string | undefined, where: string): number | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d{1,15}$/.test(raw.trim())) throw invalid(where, [{ path: where, message: 'a byte offset (a non-negative integer)' }]);
  return Number(raw.trim());
}

function parseFollow(raw: string | undefined): boolean {
  if (raw === undefined || raw === '0' || raw === 'false') return false;
  if (raw === '' || raw === '1' || raw === 'true') return true;
  throw invalid('follow', [{ path: 'follow', message: 'follow=1 or follow=0' }]);
}
