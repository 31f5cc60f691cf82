import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startApi, type RunningApi } from '../../api/server.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { harness, TOKENS, worker, type Harness } from './harness.js';

let redis: TestRedis;
let h: Harness;
let api: RunningApi | undefined;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});
beforeEach(() => {
  h = harness(redis, { sse: { pollMs: 20, heartbeatMs: 100 } });
});
afterEach(async () => {
  await api?.close();
  api = undefined;
  await h.close();
});

interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

/** Reads an SSE response message by message; comments are counted, not returned. */
class SseReader {
  private buf = '';
  private readonly decoder = new TextDecoder();
  comments = 0;
  constructor(private readonly reader: ReadableStreamDefaultReader<Uint8Array>) {}

  /** The next message, or null when the server ended the stream. */
  async next(timeoutMs = 5000): Promise<SseEvent | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const sep = this.buf.indexOf('\n\n');
      if (sep >= 0) {
        const block = this.buf.slice(0, sep);
        this.buf = this.buf.slice(sep + 2);
        const ev: SseEvent = { data: '' };
        const data: string[] = [];
        let comment = true;
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          comment = false;
          const [k, ...rest] = line.split(':');
          const v = rest.join(':').replace(/^ /, '');
          if (k === 'data') data.push(v);
          else if (k === 'id') ev.id = v;
          else if (k === 'event') ev.event = v;
        }
        if (comment) {
          this.comments++;
          continue;
        }
        ev.data = data.join('\n');
        return ev;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for an SSE message`);
      const r = await Promise.race([this.reader.read(), new Promise<'timeout'>((res) => setTimeout(() => res('timeout'), left))]);
      if (r === 'timeout') continue;
      if (r.done) return null;
      this.buf += this.decoder.decode(r.value, { stream: true });
    }
  }

  /** Messages until (and including) `event: end`, then checks the stream closes. */
  async untilEnd(): Promise<SseEvent[]> {
    const out: SseEvent[] = [];
    for (;;) {
      const ev = await this.next();
      if (!ev) throw new Error('stream ended without an end event');
      out.push(ev);
      if (ev.event === 'end') break;
    }
    expect(await this.next()).toBeNull();
    return out;
  }
}

async function openSse(path: string, headers: Record<string, string> = {}): Promise<{ res: Response; sse: SseReader; abort: () => void }> {
  const ac = new AbortController();
  const res = await fetch(`${api!.url}${path}`, { headers: { Authorization: `Bearer ${TOKENS.a}`, Accept: 'text/event-stream', ...headers }, signal: ac.signal });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  return { res, sse: new SseReader(res.body!.getReader()), abort: () => ac.abort() };
}

const output = (ev: SseEvent) => JSON.parse(ev.data) as { stream: string; data: string; offset: number };

describe('GET /v1/jobs/:id/logs', () => {
  it('returns the combined output as text', async () => {
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    await worker.output(h.deps, job.id, [['stdout', 'hello\n'], ['stderr', 'oops\n'], ['stdout', 'héllo\n']]);
    const res = await h.call(`/v1/jobs/${job.id}/logs`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(await res.text()).toBe('hello\noops\nhéllo\n');
  });

  it('streams SSE events in order with end offsets as ids, then an end event', async () => {
    api = await startApi(h.deps, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    await worker.output(h.deps, job.id, [['stdout', 'one\n'], ['stderr', 'two\n'], ['stdout', 'three\n']]);
    await worker.finish(h.deps, job.id, 3);

    const { sse } = await openSse(`/v1/jobs/${job.id}/logs`);
    const events = await sse.untilEnd();
    expect(events.map((e) => [e.event, e.id])).toEqual([['output', '4'], ['output', '8'], ['output', '14'], ['end', undefined]]);
    expect(events.slice(0, 3).map(output)).toEqual([
      { stream: 'stdout', data: 'one\n', offset: 0 },
      { stream: 'stderr', data: 'two\n', offset: 4 },
      { stream: 'stdout', data: 'three\n', offset: 8 },
    ]);
    expect(JSON.parse(events[3]!.data)).toMatchObject({ status: 'failed', exitCode: 3 });
  });

  it('resumes after Last-Event-ID (or ?offset) without repeating what was seen', async () => {
    api = await startApi(h.deps, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    await worker.output(h.deps, job.id, [['stdout', 'one\n'], ['stderr', 'two\n'], ['stdout', 'three\n']]);

    const first = await openSse(`/v1/jobs/${job.id}/logs`);
    const seen = await first.sse.next();
    expect(seen?.id).toBe('4');
    first.abort();

    const resumed = await openSse(`/v1/jobs/${job.id}/logs`, { 'Last-Event-ID': seen!.id! });
    const rest = await resumed.sse.untilEnd();
    expect(rest.filter((e) => e.event === 'output').map((e) => output(e).data)).toEqual(['two\n', 'three\n']);
    expect(JSON.parse(rest.at(-1)!.data)).toMatchObject({ status: 'running' });

    const byQuery = await openSse(`/v1/jobs/${job.id}/logs?offset=8`);
    expect((await byQuery.sse.untilEnd()).filter((e) => e.event === 'output').map((e) => output(e).data)).toEqual(['three\n']);
  });

  it('follows new output until the job ends, with keepalive comments', async () => {
    api = await startApi(h.deps, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    let offset = await worker.output(h.deps, job.id, [['stdout', 'a\n']]);

    const { sse } = await openSse(`/v1/jobs/${job.id}/logs?follow=1`);
    expect((await sse.next())!).toMatchObject({ event: 'status', data: JSON.stringify({ status: 'running', progress: null }) });
    expect(output((await sse.next())!)).toMatchObject({ data: 'a\n', offset: 0 });
    await new Promise((r) => setTimeout(r, 250)); // > heartbeat (100 ms): at least one comment
    offset = await worker.output(h.deps, job.id, [['stderr', 'b\n']], offset);
    const b = (await sse.next())!;
    expect([b.id, output(b).data]).toEqual(['4', 'b\n']);
    await worker.output(h.deps, job.id, [['stdout', 'c\n']], offset);
    await worker.finish(h.deps, job.id, 0);
    const rest = (await sse.untilEnd()).filter((e) => e.event !== 'status');
    expect(rest.map((e) => e.event)).toEqual(['output', 'end']);
    expect(output(rest[0]!).data).toBe('c\n');
    expect(JSON.parse(rest[1]!.data)).toMatchObject({ status: 'succeeded', exitCode: 0 });
    expect(sse.comments).toBeGreaterThan(0);
  });

  it('following, says what the job waits for before it has output (status and progress, e.g. its template being built)', async () => {
    api = await startApi(h.deps, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await h.deps.jobs.transition(job.id, 'starting', { host: 'host-1', attempt: 1 }, { host: 'host-1', note: 'building template python' });
    await h.deps.jobs.update(job.id, { progress: 'building template python: debootstrap, rootfs 12 MB' });
    const { sse } = await openSse(`/v1/jobs/${job.id}/logs?follow=1`);
    expect(JSON.parse((await sse.next())!.data)).toEqual({ status: 'starting', progress: 'building template python: debootstrap, rootfs 12 MB' });
    await h.deps.jobs.update(job.id, { progress: 'building template python: apt-get install, 3/40 packages' });
    expect(JSON.parse((await sse.next())!.data)).toEqual({ status: 'starting', progress: 'building template python: apt-get install, 3/40 packages' });
    await h.deps.jobs.transition(job.id, 'running', { startedAt: new Date().toISOString(), progress: null });
    expect(JSON.parse((await sse.next())!.data)).toEqual({ status: 'running', progress: null });
    await worker.finish(h.deps, job.id, 0);
    const rest = await sse.untilEnd();
    expect(rest.map((e) => e.event)).toEqual(['status', 'end']);
  });

  it('follows as plain text too', async () => {
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    const offset = await worker.output(h.deps, job.id, [['stdout', 'x\n']]);
    const res = h.call(`/v1/jobs/${job.id}/logs?follow=1`);
    setTimeout(() => {
      void worker.output(h.deps, job.id, [['stdout', 'y\n']], offset).then(() => worker.finish(h.deps, job.id));
    }, 100);
    expect(await (await res).text()).toBe('x\ny\n');
  });

  it('ends open follow streams when the server closes', async () => {
    api = await startApi(h.deps, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    const { sse } = await openSse(`/v1/jobs/${job.id}/logs?follow=1`);
    const t0 = Date.now();
    expect((await sse.next())?.event).toBe('status');
    const closing = api.close();
    expect(await sse.next()).toBeNull(); // closed without an end event: the client resumes elsewhere
    await closing;
    expect(Date.now() - t0).toBeLessThan(2000);
    api = undefined;
  });

  it('stops reading when the client disconnects', async () => {
    let reads = 0;
    const logs = h.deps.logs;
    const counting = Object.assign(Object.create(logs) as typeof logs, {
      read: (...a: Parameters<typeof logs.read>) => (reads++, logs.read(...a)),
    });
    api = await startApi({ ...h.deps, logs: counting }, { host: '127.0.0.1', port: 0 });
    const job = await h.create({ command: ['sh'] });
    await worker.start(h.deps, job.id);
    const { sse, abort } = await openSse(`/v1/jobs/${job.id}/logs?follow=1`);
    await new Promise((r) => setTimeout(r, 100));
    expect(reads).toBeGreaterThan(1); // polling
    abort();
    await expect(sse.next()).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 100));
    const after = reads;
    await new Promise((r) => setTimeout(r, 200));
    expect(reads).toBe(after);
  });

  it('rejects a malformed Last-Event-ID with 400', async () => {
    const job = await h.create({ command: ['sh'] });
    const res = await h.call(`/v1/jobs/${job.id}/logs`, { headers: { Accept: 'text/event-stream', 'Last-Event-ID': 'abc' } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { errors: Array<{ path: string }> }).errors[0]?.path).toBe('Last-Event-ID');
  });
});
