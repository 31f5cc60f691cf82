import { HTTPException } from 'hono/http-exception';
import { describe, expect, it } from 'vitest';
import { ApiError, toProblem } from '../../api/problem.js';
import { ERROR_CODES, RunboxError } from '../../core/errors.js';

describe('toProblem', () => {
  it('maps every error kind to its status exactly once', () => {
    const statuses = Object.fromEntries(ERROR_CODES.map((c) => [c, toProblem(new RunboxError(c, 'x'), 'r').status]));
    expect(statuses).toEqual({
      invalid_argument: 400,
      not_found: 404,
      conflict: 409,
      limit_exceeded: 422,
      unavailable: 503,
      internal: 500,
      template_missing: 422,
      host_lost: 503,
      checkpoint_incompatible: 409,
      host_unsupported: 501,
      checkpoint_unsupported: 409,
    });
    expect(toProblem(new ApiError('payload_too_large', 'x'), 'r').status).toBe(413);
    expect(toProblem(new ApiError('rate_limited', 'x', { headers: { 'Retry-After': '1' } }), 'r')).toMatchObject({ status: 429, headers: { 'Retry-After': '1' } });
    expect(toProblem(new ApiError('unauthorized', 'x'), 'r')).toMatchObject({ status: 401, headers: { 'WWW-Authenticate': 'Bearer realm="runbox"' } });
    expect(toProblem(new ApiError('quota_exceeded', 'x', { headers: { 'Retry-After': '10' } }), 'r')).toMatchObject({ status: 429, headers: { 'Retry-After': '10' } });
  });

  it('builds the RFC 9457 body with meta after the standard members, which meta cannot override', () => {
    const p = toProblem(new RunboxError('limit_exceeded', 'too big', { meta: { field: 'limits.cpus', status: 'ignored', code: 'ignored' } }), 'req-1');
    expect(p.body).toEqual({
      type: 'https://runbox.dev/problems/limit_exceeded',
      title: 'Limit exceeded',
      status: 422,
      code: 'limit_exceeded',
      detail: 'too big',
      requestId: 'req-1',
      field: 'limits.cpus',
    });
    expect(Object.keys(p.body).slice(0, 6)).toEqual(['type', 'title', 'status', 'code', 'detail', 'requestId']);
  });

  it('hides internals of 5xx and unknown errors but keeps the request id', () => {
    for (const err of [new Error('ECONNREFUSED 10.0.0.5:6379'), new RunboxError('internal', 'open /var/lib/runbox/x', { meta: { path: '/var' } }), 'a string']) {
      const p = toProblem(err, 'req-9');
      expect(p.status).toBe(500);
      expect(p.body.detail).toBe('internal error; see the server log for request req-9');
      expect(p.body).not.toHaveProperty('path');
    }
    // unavailable explains itself (what is down), it names nothing internal.
    expect(toProblem(new RunboxError('unavailable', 'no worker host has a live heartbeat'), 'r').body.detail).toBe('no worker host has a live heartbeat');
  });

  it('maps a Redis that refuses writes (maxmemory) to 503 unavailable saying so, wherever the error is in the cause chain', () => {
    const oom = Object.assign(new Error("OOM command not allowed when used memory > 'maxmemory'."), { name: 'ReplyError' });
    const execAbort = Object.assign(new Error('EXECABORT Transaction discarded because of previous errors.'), { previousErrors: [oom] });
    for (const err of [oom, execAbort, new RunboxError('unavailable', 'the job could not be queued; retry later', { cause: oom })]) {
      const p = toProblem(err, 'r');
      expect(p).toMatchObject({ status: 503, headers: { 'Retry-After': '30' }, body: { code: 'unavailable' } });
      expect(p.body.detail).toMatch(/Redis is full \(maxmemory reached\).*RUNBOX_REDIS_MAXMEMORY/);
    }
    expect(toProblem(new Error('EXECABORT Transaction discarded because of previous errors.'), 'r').status).toBe(500);
  });

  it("maps Hono's HTTPExceptions", () => {
    expect(toProblem(new HTTPException(413), 'r').body.code).toBe('payload_too_large');
    expect(toProblem(new HTTPException(400, { message: 'Malformed JSON in request body' }), 'r').body).toMatchObject({ code: 'invalid_argument', detail: 'Malformed JSON in request body' });
    expect(toProblem(new HTTPException(418), 'r').status).toBe(500);
  });
});
