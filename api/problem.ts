import { HTTPException } from 'hono/http-exception';
import { z } from 'zod';
import { ERROR_CODES, RunboxError, type ErrorCode } from '../core/errors.js';

/**
 * Every failure leaves the API as an RFC 9457 problem+json body with a stable `code`; this file is
 * the one place that maps error kinds to HTTP statuses.
 */
export const HTTP_ONLY_CODES = ['payload_too_large', 'rate_limited', 'unauthorized', 'quota_exceeded', 'forbidden'] as const;
export type ProblemCode = ErrorCode | (typeof HTTP_ONLY_CODES)[number];

const STATUS: Record<ProblemCode, number> = {
  invalid_argument: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  checkpoint_incompatible: 409,
  checkpoint_unsupported: 409,
  payload_too_large: 413,
  limit_exceeded: 422,
  template_missing: 422,
  rate_limited: 429,
  quota_exceeded: 429,
  internal: 500,
  host_unsupported: 501,
  unavailable: 503,
  host_lost: 503,
};

const TITLE: Record<ProblemCode, string> = {
  invalid_argument: 'Invalid request',
  unauthorized: 'Unauthorized',
  forbidden: 'Forbidden',
  not_found: 'Not found',
  conflict: 'Conflict',
  checkpoint_incompatible: 'Checkpoint incompatible',
  checkpoint_unsupported: 'Checkpoint not possible',
  payload_too_large: 'Payload too large',
  limit_exceeded: 'Limit exceeded',
  template_missing: 'Unknown template',
  rate_limited: 'Too many requests',
  quota_exceeded: 'Quota exceeded',
  internal: 'Internal error',
  host_unsupported: 'Not supported on this host',
  unavailable: 'Service unavailable',
  host_lost: 'Host lost',
};

const HTTP_STATUS_CODE: Record<number, ProblemCode> = { 400: 'invalid_argument', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 413: 'payload_too_large', 429: 'rate_limited' };

export const PROBLEM_CODES = Object.keys(STATUS) as ProblemCode[];
export const problemStatus = (code: ProblemCode): number => STATUS[code];
export const problemType = (code: ProblemCode): string => `https://runbox.dev/problems/${code}`;

/** A failure that exists only at the HTTP edge (no domain meaning), thrown like a RunboxError. */
export class ApiError extends Error {
  readonly meta?: object;
  readonly headers: Record<string, string>;
  constructor(
    readonly code: (typeof HTTP_ONLY_CODES)[number],
    message: string,
    opts?: { meta?: object; headers?: Record<string, string> },
  ) {
    super(message);
    this.name = 'ApiError';
    this.meta = opts?.meta;
    this.headers = opts?.headers ?? {};
  }
}

export const FieldErrorSchema = z.object({ path: z.string(), message: z.string() });
export type FieldError = z.infer<typeof FieldErrorSchema>;

export const ProblemSchema = z
  .object({
    type: z.string().describe('https://runbox.dev/problems/<code>'),
    title: z.string(),
    status: z.number().int(),
    code: z.enum(PROBLEM_CODES as [ProblemCode, ...ProblemCode[]]).describe('stable machine-readable error kind'),
    detail: z.string(),
    requestId: z.string().describe('also in the X-Request-Id header; quote it when reporting a problem'),
    errors: z.array(FieldErrorSchema).optional().describe('invalid_argument: every invalid field, with why'),
  })
  .catchall(z.unknown());
export type Problem = z.infer<typeof ProblemSchema>;

export interface ProblemResponse {
  status: number;
  body: Problem;
  headers: Record<string, string>;
}

/** Retry-After of a refusal because Redis is full: results expiring or an operator must free memory. */
export const REDIS_FULL_RETRY_SEC = 30;
const REDIS_FULL_DETAIL =
  'runbox cannot store more data right now: its Redis is full (maxmemory reached). Nothing of this request was stored; ' +
  'retry later (finished jobs free their data when their results expire) or ask the operator to raise RUNBOX_REDIS_MAXMEMORY';

/**
 * Whether Redis refused a write because it is out of memory ("OOM command not allowed when used
 * memory > 'maxmemory'", also inside a MULTI: "EXECABORT ... previous errors" whose cause is OOM),
 * anywhere in the error's cause chain (e.g. a RunboxError wrapping the queue's failure).
 */
export function isRedisFull(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (/^OOM command not allowed/.test(e.message)) return true;
    const prev = (e as { previousErrors?: unknown[] }).previousErrors;
    if (Array.isArray(prev) && prev.some((p) => p instanceof Error && /^OOM command not allowed/.test(p.message))) return true;
  }
  return false;
}

/**
 * Maps any thrown value to a problem. Unknown errors and 5xx kinds get a generic detail: their
 * message may name internals (paths, Redis keys); the log line with the same requestId has it.
 */
export function toProblem(err: unknown, requestId: string): ProblemResponse {
  let code: ProblemCode = 'internal';
  let detail = 'internal error';
  let meta: object = {};
  const headers: Record<string, string> = {};
  if (isRedisFull(err)) {
    code = 'unavailable';
    detail = REDIS_FULL_DETAIL;
    headers['Retry-After'] = String(REDIS_FULL_RETRY_SEC);
  } else if (err instanceof RunboxError && (ERROR_CODES as readonly string[]).includes(err.code)) {
    code = err.code;
    detail = err.message;
    meta = err.meta ?? {};
  } else if (err instanceof ApiError) {
    code = err.code;
    detail = err.message;
    meta = err.meta ?? {};
    Object.assign(headers, err.headers);
  } else if (err instanceof HTTPException) {
    // Thrown by Hono helpers; their messages are generic.
    code = HTTP_STATUS_CODE[err.status] ?? 'internal';
    detail = err.message || TITLE[code];
  }
  const status = STATUS[code];
  if (status >= 500 && code !== 'unavailable' && code !== 'host_unsupported') {
    detail = `${TITLE[code].toLowerCase()}; see the server log for request ${requestId}`;
    meta = {};
  }
  if (code === 'unauthorized') headers['WWW-Authenticate'] ??= 'Bearer realm="runbox"';
  const body: Problem = { type: problemType(code), title: TITLE[code], status, code, detail, requestId };
  // Extension members follow; they never override the standard ones.
  for (const [k, v] of Object.entries(meta)) if (!(k in body)) (body as Record<string, unknown>)[k] = v;
  return { status, body, headers };
}

export function problemResponse(p: ProblemResponse): Response {
  return new Response(JSON.stringify(p.body), {
    status: p.status,
    headers: { 'Content-Type': 'application/problem+json', 'X-Request-Id': p.body.requestId, ...p.headers },
  });
}
