import { randomBytes } from 'node:crypto';
import { errorMessage } from '../errors.js';
import type { ObjectStore } from './store.js';

/**
 * Writes, reads back, lists and removes one small object under `doctor/`: the store is reachable,
 * the credentials may write, and what comes back is what was written. Returns what went wrong, or
 * the round trip's time.
 */
export async function probeObjectStore(objects: ObjectStore): Promise<{ ok: true; ms: number } | { ok: false; error: string }> {
  const key = `doctor/probe-${randomBytes(6).toString('hex')}`;
  const body = randomBytes(4096);
  const t0 = Date.now();
  try {
    await objects.ensureBucket();
    await objects.put(key, body);
    const back = await objects.getSmall(key, 8192);
    if (!back || !back.equals(body)) return { ok: false, error: 'an object read back differs from what was written' };
    if (!(await objects.list('doctor/')).some((o) => o.key === key)) return { ok: false, error: 'an object just written is not listed' };
    await objects.remove([key]);
    return { ok: true, ms: Date.now() - t0 };
  } catch (e) {
    await objects.remove([key]).catch(() => undefined);
    return { ok: false, error: errorMessage(e) };
  }
}
