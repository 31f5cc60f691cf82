import type { Context, MiddlewareHandler } from 'hono';
import type { TokenAuth } from '../auth.js';
import type { ApiEnv } from '../deps.js';
import { ApiError } from '../problem.js';

const bearer = (c: Context<ApiEnv>): string => {
  const h = c.req.header('authorization');
  const m = h ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(h) : null;
  if (!m) {
    throw new ApiError('unauthorized', 'missing bearer token (send "Authorization: Bearer <token>")', {
      headers: { 'WWW-Authenticate': 'Bearer realm="runbox"' },
    });
  }
  return m[1]!;
};

const invalid = () =>
  new ApiError('unauthorized', 'invalid bearer token', { headers: { 'WWW-Authenticate': 'Bearer realm="runbox", error="invalid_token"' } });

/** `Authorization: Bearer <token>` → tenant and role; anything else is 401 with WWW-Authenticate. */
export function bearerAuth(tokens: TokenAuth): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const token = bearer(c);
    const who = tokens.authenticate(token);
    if (!who) {
      if (tokens.isMetricsToken(token)) throw new ApiError('forbidden', 'this token (RUNBOX_METRICS_TOKEN) may only read /metrics');
      throw invalid();
    }
    c.set('tenant', who.tenant);
    c.set('admin', who.admin);
    await next();
  };
}

/** Throws 403 `forbidden` unless the request's token has the admin role; `what` says what was refused. */
export function assertAdmin(c: Context<ApiEnv>, what: string, hint?: string): void {
  if (!c.get('admin')) throw new ApiError('forbidden', `${what} needs a token with the admin role (tenant:admin=token)${hint ? `; ${hint}` : ''}`);
}

/** Admin tokens only (after bearerAuth). */
export function adminOnly(what: string): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    assertAdmin(c, what);
    await next();
  };
}

/**
 * GET /metrics: the metrics-only token (RUNBOX_METRICS_TOKEN, for a Prometheus scraper) or any
 * admin token. Metrics span every tenant and host, so a tenant's own token gets 403.
 */
export function metricsAuth(tokens: TokenAuth): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const token = bearer(c);
    if (!tokens.isMetricsToken(token)) {
      const who = tokens.authenticate(token);
      if (!who) throw invalid();
      if (!who.admin) throw new ApiError('forbidden', '/metrics needs RUNBOX_METRICS_TOKEN or a token with the admin role');
      c.set('tenant', who.tenant);
      c.set('admin', true);
    }
    await next();
  };
}
