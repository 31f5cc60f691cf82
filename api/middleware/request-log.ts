import type { MiddlewareHandler } from 'hono';
import { newId } from '../../core/ids.js';
import type { Logger } from '../../core/log.js';
import type { ApiEnv } from '../deps.js';

/** An incoming X-Request-Id is kept when it is short and plain (it ends up in logs). */
const SANE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Request id (kept or generated, echoed in X-Request-Id) and one log line per request with the
 * tenant and job id when known. Never bodies, query strings or headers: they may carry secrets.
 */
export function requestLog(log: Logger): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const incoming = c.req.header('x-request-id');
    const requestId = incoming && SANE_ID.test(incoming) ? incoming : newId(8);
    c.set('requestId', requestId);
    c.set('log', log.child({ requestId }));
    c.header('X-Request-Id', requestId);
    const t0 = performance.now();
    await next();
    if (!c.res.headers.has('X-Request-Id')) c.res.headers.set('X-Request-Id', requestId);
    const status = c.res.status;
    const line = {
      requestId,
      method: c.req.method,
      path: c.req.path,
      status,
      ms: Math.round((performance.now() - t0) * 10) / 10,
      ...(c.get('tenant') ? { tenant: c.get('tenant') } : {}),
      ...(c.get('jobId') ? { jobId: c.get('jobId') } : {}),
    };
    if (status >= 500) log.warn(line, 'request failed');
    else log.info(line, 'request');
  };
}
