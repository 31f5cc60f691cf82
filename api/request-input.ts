import type { Context } from 'hono';
import { invalid } from './validate.js';

/** The longest a create request may be held by `?wait` / `Prefer: wait`. */
export const MAX_WAIT_SEC = 300;

/** The body as JSON; a malformed body is a 400 like any other invalid input. */
export async function readJson(c: Context): Promise<unknown> {
  const text = await c.req.text();
  if (!text.trim()) throw invalid('request body', [{ path: '(body)', message: 'a JSON object is required' }]);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw invalid('request body', [{ path: '(body)', message: `not valid JSON (${(e as Error).message})` }]);
  }
}

function waitSeconds(raw: string, where: string): number {
  const t = raw.trim();
  const n = /^\d+(\.\d+)?$/.test(t) ? Number(t) : NaN;
  if (!(n >= 0 && n <= MAX_WAIT_SEC)) {
    throw invalid(where, [{ path: where, message: `seconds to wait, a number from 0 to ${MAX_WAIT_SEC} (got "${raw.slice(0, 40)}")` }]);
  }
  return n;
}

/**
 * Seconds to hold the response: `?wait=N` wins over `Prefer: wait=N` (RFC 7240); 0 when neither.
 * Returns whether the preference was the one applied, for Preference-Applied.
 */
export function parseWait(query: string | undefined, prefer: string | undefined): { sec: number; fromPrefer: boolean } {
  if (query !== undefined) return { sec: waitSeconds(query, 'wait'), fromPrefer: false };
  for (const pref of (prefer ?? '').split(',')) {
    const m = /^\s*wait\s*=\s*"?([^";]*)"?\s*(;.*)?$/i.exec(pref);
    if (m) return { sec: waitSeconds(m[1]!, 'Prefer'), fromPrefer: true };
  }
  return { sec: 0, fromPrefer: false };
}

export function parseIdempotencyKey(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!/^[\x20-\x7e]{1,200}$/.test(raw)) {
    throw invalid('Idempotency-Key header', [{ path: 'Idempotency-Key', message: '1 to 200 printable ASCII characters' }]);
  }
  return raw;
}


