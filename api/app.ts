import { Hono } from 'hono';
import { RunboxError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { Keys } from '../core/store/keys.js';
import type { ApiDeps, ApiEnv, RouteDeps } from './deps.js';
import { bearerAuth } from './middleware/auth.js';
import { limitBody } from './middleware/body-limit.js';
import { rateLimit } from './middleware/rate-limit.js';
import { requestLog } from './middleware/request-log.js';
import { problemResponse, toProblem } from './problem.js';
import { artifactRoutes } from './routes/artifacts.js';
import { checkpointRoutes } from './routes/checkpoints.js';
import { docsRoutes } from './routes/docs.js';
import { hostRoutes } from './routes/hosts.js';
import { jobRoutes } from './routes/jobs.js';
import { logRoutes } from './routes/logs.js';
import { opsRoutes } from './routes/ops.js';
import { templateRoutes } from './routes/templates.js';

export type { ApiDeps } from './deps.js';

/** The HTTP API as a Hono app (no listening: see server.ts; tests call app.request). */
export function createApp(deps: ApiDeps): Hono<ApiEnv> {
  const d: RouteDeps = { ...deps, keys: new Keys(deps.config.redisPrefix), shutdown: deps.shutdown ?? new AbortController().signal };
  const app = new Hono<ApiEnv>();

  app.use('*', requestLog(deps.log));

  // Without a tenant token: probes and the API description; /metrics takes its own token (metricsAuth).
  app.route('/', opsRoutes(d));
  app.route('/', docsRoutes());

  app.use('/v1/*', bearerAuth(deps.tokens), rateLimit(deps.redis, d.keys, deps.config.rateLimitPerSec), limitBody(deps.config.maxBodyBytes));
  app.route('/v1/jobs', jobRoutes(d));
  app.route('/v1/jobs', logRoutes(d));
  app.route('/v1/jobs', artifactRoutes(d));
  app.route('/v1/jobs', checkpointRoutes(d));
  app.route('/v1/hosts', hostRoutes(d));
  app.route('/v1/templates', templateRoutes(d));

  app.notFound((c) => problemResponse(toProblem(new RunboxError('not_found', `no endpoint ${c.req.method} ${c.req.path}`), c.get('requestId') ?? newId(8))));

  // The one error funnel: every failure becomes problem+json here.
  app.onError((err, c) => {
    const requestId = c.get('requestId') ?? newId(8);
    const p = toProblem(err, requestId);
    const log = c.get('log') ?? deps.log;
    if (p.status >= 500) log.error({ err, requestId, jobId: c.get('jobId') }, 'request error');
    else log.debug({ code: p.body.code, detail: p.body.detail }, 'request refused');
    return problemResponse(p);
  });

  return app;
}
