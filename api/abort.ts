/**
 * One signal aborted when any source is (client gone, server shutting down). Unlike
 * AbortSignal.any, `dispose()` detaches from long-lived sources at once, so a server signal does
 * not collect one listener per request.
 */
export function anySignal(sources: AbortSignal[]): { signal: AbortSignal; abort: () => void; dispose: () => void } {
  const ac = new AbortController();
  const abort = () => ac.abort();
  for (const s of sources) s.addEventListener('abort', abort, { once: true });
  if (sources.some((s) => s.aborted)) abort();
  return { signal: ac.signal, abort, dispose: () => sources.forEach((s) => s.removeEventListener('abort', abort)) };
}

/** Resolves when `signal` aborts (immediately if it already has). */
export function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
}

/** `p`, or rejects after `ms` with an error naming `what`. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
