import { z } from 'zod';
import { NetworkModeSchema } from '../core/vps-request.js';
import { IfNameSchema } from './net/netns-schema.js';
import type { VpsRecord } from './runc-engine.js';
import { isSlotLease } from './userns/ranges.js';

/**
 * vps.json as read back (RuncEngine.readRecord; gc and destroy act on it as root): the fields that
 * name host objects are checked, because destroy deletes them: the netns (`ip netns del`), the
 * host veth, the address lease file (a path), the nft pin element. Unknown fields are kept (a
 * newer writer), never used. A record that fails is treated as unreadable: destroy and gc then
 * fall back to the names derived from the VPS id.
 */
const Ref = z.object({ pid: z.number().int().positive(), start: z.number().int().nonnegative() }).loose();
const Ipv4 = z.ipv4();

const NetworkSchema = z.looseObject({
  mode: NetworkModeSchema,
  netns: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/).refine((s) => s !== '.' && s !== '..').optional(),
  hostVeth: IfNameSchema.optional(),
  address: Ipv4.optional(),
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i).optional(),
  gateway: Ipv4.optional(),
  prefix: z.number().int().min(0).max(32).optional(),
});

const VpsRecordSchema = z.looseObject({
  id: z.string(),
  spec: z.looseObject({}), // not acted on by destroy or gc
  network: NetworkSchema,
  owner: Ref,
  init: Ref.optional(),
  // Only the exact ids of a slot: destroy gives the slot back, the runtime maps these ids.
  userns: z.object({ slot: z.number().int(), hostId: z.number().int(), count: z.number().int() }).refine(isSlotLease).optional(),
  createdAt: z.string().max(64),
});

/** The record of VPS `id`, or undefined (with the first failing field) when it is not one. */
export function parseVpsRecord(raw: unknown, id: string): { record?: VpsRecord; invalid?: string } {
  const r = VpsRecordSchema.safeParse(raw);
  if (!r.success) return { invalid: r.error.issues[0]!.path.map((k) => (typeof k === 'number' || /^[A-Za-z]{1,32}$/.test(String(k)) ? String(k) : '?')).join('.') || '(top level)' };
  if (r.data.id !== id) return { invalid: 'id' };
  return { record: r.data as unknown as VpsRecord };
}
