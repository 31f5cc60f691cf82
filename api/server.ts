import type { AddressInfo } from 'node:net';
import type { Server, ServerResponse } from 'node:http';
import { serve } from '@hono/node-server';
import { createApp } from './app.js';
import type { ApiDeps } from './deps.js';

export interface RunningApi {
  url: string;
  port: number;
  /** Stops accepting, ends SSE streams and held `?wait` responses, waits for connections to end. */
  close(): Promise<void>;
}

/** How long close() lets in-flight requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 5_000;

export async function startApi(deps: ApiDeps, opts: { host: string; port: number }): Promise<RunningApi> {
  const stop = new AbortController();
  const app = createApp({ ...deps, shutdown: stop.signal });
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: opts.host, port: opts.port }, () => resolve(s as Server)) as Server;
    s.once('error', reject);
  });
  const { port } = server.address() as AddressInfo;
  // Requests whose response has not closed yet: once none is left, every remaining connection is
  // idle or half-dead, and can be cut without losing anything.
  let inFlight = 0;
  server.on('request', (_req, res: ServerResponse) => {
    inFlight++;
    res.once('close', () => inFlight--);
  });
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${port}`,
    port,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        stop.abort();
        const sweep = setInterval(() => (inFlight === 0 ? server.closeAllConnections() : server.closeIdleConnections()), 25);
        const force = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
        server.close(() => {
          clearInterval(sweep);
          clearTimeout(force);
          resolve();
        });
      })),
  };
}
