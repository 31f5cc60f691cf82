import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { ApiError } from '../problem.js';

/** Refuses bodies above `maxBytes` (by Content-Length, or while reading a chunked body). */
export function limitBody(maxBytes: number): MiddlewareHandler {
  return bodyLimit({
    maxSize: maxBytes,
    onError: () => {
      throw new ApiError('payload_too_large', `request body is larger than ${maxBytes} bytes`, { meta: { maxBytes } });
    },
  });
}
