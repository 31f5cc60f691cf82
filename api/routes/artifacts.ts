import { Hono } from 'hono';
import { RunboxError } from '../../core/errors.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { ownJob } from '../own-job.js';

/** GET /v1/jobs/:id/artifacts (the list) and /v1/jobs/:id/artifacts/<path> (one file's bytes). */
export function artifactRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  app.get('/:id/artifacts', async (c) => {
    c.set('jobId', c.req.param('id'));
    const job = await ownJob(deps.jobs, c.get('tenant'), c.req.param('id'));
    return c.json({ artifacts: job.artifacts, truncated: job.artifactsTruncated });
  });

  app.get('/:id/artifacts/:path{.+}', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    const job = await ownJob(deps.jobs, c.get('tenant'), id);
    // Listed paths may be absolute ("/out/a.txt"); the URL carries them without the leading slash.
    const wanted = c.req.param('path').replace(/^\/+/, '');
    const entry = job.artifacts.find((a) => a.path.replace(/^\/+/, '') === wanted);
    const content = entry ? await deps.artifacts.get(id, entry.path, entry.size) : null;
    if (!entry || !content) throw new RunboxError('not_found', `job ${id} has no artifact "${wanted}"`);
    const name = wanted.split('/').pop() || 'artifact';
    return c.body(new Uint8Array(content), 200, {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': `attachment; filename="${name.replace(/["\\\r\n]/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`,
      'X-Content-Type-Options': 'nosniff',
    });
  });

  return app;
}
