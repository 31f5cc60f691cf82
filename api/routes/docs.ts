import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Hono } from 'hono';
import { RunboxError } from '../../core/errors.js';
import type { ApiEnv } from '../deps.js';
import { buildOpenApi } from '../openapi.js';

/**
 * GET /openapi.json and GET /docs (Swagger UI). The UI's assets are served from the installed
 * swagger-ui-dist package: runbox machines may have no internet, so no CDN.
 */
const ASSETS: Record<string, string> = {
  'swagger-ui.css': 'text/css; charset=utf-8',
  'swagger-ui-bundle.js': 'text/javascript; charset=utf-8',
  'favicon-32x32.png': 'image/png',
};

const PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>runbox API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
`;

// validatorUrl null: the default would send the document to an online validator.
const INIT = `window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  validatorUrl: null,
  persistAuthorization: true,
  deepLinking: true,
});
`;

export function docsRoutes(): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  let spec: string | undefined;
  const cache = new Map<string, Uint8Array<ArrayBuffer>>();
  const dir = path.dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));

  app.get('/openapi.json', (c) => {
    spec ??= JSON.stringify(buildOpenApi());
    return c.body(spec, 200, { 'Content-Type': 'application/json; charset=utf-8' });
  });
  app.get('/docs', (c) => c.html(PAGE));
  app.get('/docs/init.js', (c) => c.body(INIT, 200, { 'Content-Type': 'text/javascript; charset=utf-8' }));
  app.get('/docs/:file', async (c) => {
    const file = c.req.param('file');
    const type = ASSETS[file];
    if (!type) throw new RunboxError('not_found', `no such file: /docs/${file}`);
    let body = cache.get(file);
    if (!body) cache.set(file, (body = new Uint8Array(await fs.readFile(path.join(dir, file)))));
    return c.body(body, 200, { 'Content-Type': type, 'Cache-Control': 'public, max-age=3600' });
  });
  return app;
}
