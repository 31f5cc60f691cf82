import fs from 'node:fs';
import path from 'node:path';
import { RunboxError, type ErrorCode } from '../core/errors.js';

/**
 * The CLI's HTTP client for the runbox API: RUNBOX_API_URL (default http://127.0.0.1:8080) and
 * RUNBOX_TOKEN; on the machine that runs `runbox up`, the token file under the state dir is used
 * when RUNBOX_TOKEN is not set.
 */
export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string | undefined,
  ) {}

  static fromEnv(env: NodeJS.ProcessEnv = process.env): ApiClient {
    const base = (env.RUNBOX_API_URL ?? `http://127.0.0.1:${env.RUNBOX_API_PORT ?? 8080}`).replace(/\/+$/, '');
    return new ApiClient(base, env.RUNBOX_TOKEN ?? tokenFromFile(env));
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...extra };
  }

  async request(method: string, urlPath: string, body?: unknown, extra: Record<string, string> = {}): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(this.baseUrl + urlPath, {
        method,
        headers: this.headers(body === undefined ? extra : { 'content-type': 'application/json', ...extra }),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new RunboxError('unavailable', `cannot reach the runbox API at ${this.baseUrl} (${(e as Error).cause ?? (e as Error).message}); is it running? (runbox up, RUNBOX_API_URL)`);
    }
    if (!res.ok) throw await problemError(res);
    return res;
  }

  async json<T>(method: string, urlPath: string, body?: unknown, extra?: Record<string, string>): Promise<T> {
    return (await (await this.request(method, urlPath, body, extra)).json()) as T;
  }
}

const CODE_BY_STATUS: Record<number, ErrorCode> = { 400: 'invalid_argument', 401: 'invalid_argument', 403: 'invalid_argument', 404: 'not_found', 409: 'conflict', 413: 'limit_exceeded', 422: 'limit_exceeded', 429: 'unavailable' };

/** Turns a problem+json response into a RunboxError with the server's words. */
async function problemError(res: Response): Promise<RunboxError> {
  let p: { code?: string; detail?: string; title?: string; errors?: Array<{ path: string; message: string }> } = {};
  try {
    p = (await res.json()) as typeof p;
  } catch {
    /* not JSON */
  }
  const details = p.errors?.map((e) => `  ${e.path}: ${e.message}`).join('\n');
  const msg = `${p.detail ?? p.title ?? res.statusText} (HTTP ${res.status}${p.code ? `, ${p.code}` : ''})${details ? `\n${details}` : ''}`;
  const code: ErrorCode = p.code === 'template_missing' ? 'template_missing' : (CODE_BY_STATUS[res.status] ?? 'unavailable');
  return new RunboxError(code, msg);
}

function tokenFromFile(env: NodeJS.ProcessEnv): string | undefined {
  const file = env.RUNBOX_TOKEN_FILE ?? path.join(env.RUNBOX_STATE_DIR ?? '/var/lib/runbox', 'api-tokens');
  try {
    const entries = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .flatMap((l) => l.split(','))
      .map((l) => l.trim())
      .filter((l) => l.includes('='));
    return entries[0]?.slice(entries[0].indexOf('=') + 1);
  } catch {
    return undefined;
  }
}
