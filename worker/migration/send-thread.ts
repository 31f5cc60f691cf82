import { parentPort } from 'node:worker_threads';
import { errorMessage, isRunboxError } from '../../core/errors.js';
import { request } from './transport.js';
import type { SendRequest, SendResult } from './sender.js';

/**
 * The body of the file sender's thread (sender.ts): a move's request with its checkpoint files,
 * made here so that reading tar's output and encrypting it run beside the worker's event loop.
 */
const port = parentPort;
if (!port) throw new Error('send-thread.ts runs as a worker thread (see sender.ts)');
port.postMessage({ ready: true }); // loaded: from now on a failure is this request's, not a missing script's
port.on('message', (r: SendRequest) => {
  request(r.creds, r.to, r.message, { files: r.files, breakMidway: r.breakMidway, timeoutMs: r.timeoutMs }).then(
    (answer) => port.postMessage({ id: r.id, answer } satisfies SendResult),
    (e: unknown) => port.postMessage({ id: r.id, error: { code: isRunboxError(e) ? e.code : 'unavailable', message: errorMessage(e) } } satisfies SendResult),
  );
});
