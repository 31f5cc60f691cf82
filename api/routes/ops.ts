import { Hono } from 'hono';
import { errorMessage, RunboxError } from '../../core/errors.js';
import { HISTOGRAMS, readHistogram, type HistogramData, type HistogramName } from '../../core/store/metrics.js';
import { withTimeout } from '../abort.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from '../metrics.js';
import { metricsAuth } from '../middleware/auth.js';

const READY_TIMEOUT_MS = 2000;

/**
 * GET /healthz, /readyz: unauthenticated, for load balancers. GET /metrics: for Prometheus, with
 * RUNBOX_METRICS_TOKEN or an admin token (it shows every tenant's job counts and every host).
 */
export function opsRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  // Liveness: the process answers. Says nothing about Redis on purpose (restarting the API would
  // not fix Redis).
  app.get('/healthz', (c) => c.json({ ok: true }));

  app.get('/readyz', async (c) => {
    let hosts: number;
    try {
      // A client configured to retry forever would otherwise hang the probe while Redis is down.
      await withTimeout(deps.redis.ping(), READY_TIMEOUT_MS, 'Redis');
      hosts = (await withTimeout(deps.hosts.list(), READY_TIMEOUT_MS, 'Redis')).length;
    } catch (e) {
      throw new RunboxError('unavailable', `Redis does not answer: ${errorMessage(e)}`, { meta: { redis: false, hosts: null } });
    }
    if (hosts === 0) {
      throw new RunboxError('unavailable', 'no worker host has a live heartbeat: jobs would wait in the queue', { meta: { redis: true, hosts: 0 } });
    }
    return c.json({ ok: true, redis: true, hosts });
  });

  app.get('/metrics', metricsAuth(deps.tokens), async (c) => {
    const names = Object.keys(HISTOGRAMS) as HistogramName[];
    const [queue, statusCounts, hosts, ...hists] = await Promise.all([
      deps.queue.depth(),
      deps.jobs.statusCounts(),
      deps.hosts.list(),
      ...names.map((n) => readHistogram(deps.redis, deps.keys, n)),
    ]);
    const histograms = Object.fromEntries(names.map((n, i) => [n, hists[i]])) as Record<HistogramName, HistogramData>;
    return c.body(renderMetrics({ queue, statusCounts, hosts, histograms }), 200, { 'Content-Type': METRICS_CONTENT_TYPE });
  });

  return app;
}
