import { z } from 'zod';

/**
 * An optional on/off environment variable: 1/true or 0/false; unset or empty: undefined (the
 * caller's default). Not z.coerce.boolean(), which turns "false" into true (STYLE.md §6).
 */
export const envFlag = z
  .preprocess((v) => (v === undefined || v === '' ? undefined : v), z.enum(['0', '1', 'false', 'true']).optional())
  .transform((v) => (v === undefined ? undefined : v === '1' || v === 'true'));
