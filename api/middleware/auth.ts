import type { MiddlewareHandler } from 'hono';
import type { TokenAuth } from '../auth.js';
import type { ApiEnv } from '../deps.js';
import { ApiError } from '../problem.js';

/** `Authorization: Bearer <token>` → tenant; anything else is 401 with WWW-Authenticate. */
export function bearerAuth(tokens: TokenAuth): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const h = c.req.header('authorization');
    const m = h ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(h) : null;
    if (!m) {
      throw new ApiError('unauthorized', 'missing bearer token (send "Authorization: Bearer <token>")', {
        headers: { 'WWW-Authenticate': 'Bearer realm="runbox"' },
      });
    }
    const tenant = tokens.authenticate(m[1]!);
    if (!tenant) {
      throw new ApiError('unauthorized', 'invalid bearer token', {
        headers: { 'WWW-Authenticate': 'Bearer realm="runbox", error="invalid_token"' },
      });
    }
    c.set('tenant', tenant);
    await next();
  };
}
