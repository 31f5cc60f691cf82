import { isIP } from 'node:net';
import { z } from 'zod';
import { RunboxError } from '../../core/errors.js';
import { NftItemsSchema } from './nft-json.js';

/**
 * The saved network configuration of a VPS's netns (runbox-netns.json) is hostile data: VPS root
 * chose its labels and rule comments, and the file may come from another host. Every field is
 * checked against an allow list before anything is handed to `ip` or `nft`, on capture and on
 * load; a message about an invalid file names the field, never its value.
 */
export const NETNS_CONFIG_FORMAT = 2;
/** The file, inside a checkpoint's CRIU image dir, that carries the VPS's netns configuration. */
export const NETNS_CONFIG_FILE = 'runbox-netns.json';
export const MAX_ENTRIES = 256;
/** Largest runbox-netns.json accepted (the nftables part alone is capped at 256 KiB). */
export const MAX_CONFIG_BYTES = 512 * 1024;

/** Interface names as the kernel allows them, narrowed: no '/', never '.' or '..', ≤ 15 characters. */
export const IfNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9_.-]{1,15}$/, 'an interface name ([A-Za-z0-9_.-], at most 15)')
  .refine((s) => s !== '.' && s !== '..', 'an interface name');

const Family = z.enum(['inet', 'inet6']);
const bits = (family: 'inet' | 'inet6') => (family === 'inet' ? 32 : 128);
const version = (family: 'inet' | 'inet6') => (family === 'inet' ? 4 : 6);
const ipString = z.string().max(64);
const ScopeSchema = z.union([z.enum(['global', 'universe', 'site', 'link', 'host', 'nowhere']), z.string().regex(/^(25[0-5]|2[0-4]\d|1?\d?\d)$/, 'a scope')]);
const ProtocolSchema = z.union([
  z.enum(['redirect', 'boot', 'static', 'gated', 'ra', 'mrt', 'zebra', 'bird', 'dnrouted', 'xorp', 'ntk', 'dhcp', 'keepalived', 'babel', 'openr', 'bgp', 'isis', 'ospf', 'rip', 'eigrp']),
  z.string().regex(/^(25[0-5]|2[0-4]\d|1?\d?\d)$/, 'a protocol number'),
]);
const TableSchema = z.union([z.enum(['main', 'default']), z.string().regex(/^[1-9]\d{0,9}$/, 'a table').refine((t) => Number(t) <= 0xffffffff, 'a table')]);

export const SavedAddressSchema = z
  .object({
    dev: IfNameSchema,
    family: Family,
    local: ipString,
    prefixlen: z.number().int().min(0).max(128),
    scope: ScopeSchema.optional(),
    /** IPv4 only; iproute2 wants it to start with the device's name (eth0:1). */
    label: z.string().regex(/^[A-Za-z0-9_.:-]{1,15}$/, 'an address label ([A-Za-z0-9_.:-], at most 15)').optional(),
    broadcast: ipString.optional(),
  })
  .strict()
  .superRefine((a, ctx) => {
    if (isIP(a.local) !== version(a.family)) ctx.addIssue({ code: 'custom', path: ['local'], message: `an ${a.family} address` });
    if (a.prefixlen > bits(a.family)) ctx.addIssue({ code: 'custom', path: ['prefixlen'], message: 'a prefix length of the family' });
    if (a.label !== undefined && (a.family !== 'inet' || !a.label.startsWith(a.dev))) ctx.addIssue({ code: 'custom', path: ['label'], message: "an IPv4 label starting with the device's name" });
    if (a.broadcast !== undefined && (a.family !== 'inet' || isIP(a.broadcast) !== 4)) ctx.addIssue({ code: 'custom', path: ['broadcast'], message: 'an IPv4 address' });
  });
export type SavedAddress = z.infer<typeof SavedAddressSchema>;

/** `default`, an address or address/length of `family`. */
function isDestination(dst: string, family: 'inet' | 'inet6'): boolean {
  if (dst === 'default') return true;
  const [addr, len, ...rest] = dst.split('/');
  if (rest.length || !addr || isIP(addr) !== version(family)) return false;
  return len === undefined || (/^\d{1,3}$/.test(len) && Number(len) <= bits(family));
}

export const SavedRouteSchema = z
  .object({
    family: Family,
    dst: z.string().max(64),
    gateway: ipString.optional(),
    dev: IfNameSchema.optional(),
    table: TableSchema.optional(),
    protocol: ProtocolSchema.optional(),
    scope: ScopeSchema.optional(),
    prefsrc: ipString.optional(),
    metric: z.number().int().min(0).max(0xffffffff).optional(),
    type: z.enum(['blackhole', 'unreachable', 'prohibit']).optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if (!isDestination(r.dst, r.family)) ctx.addIssue({ code: 'custom', path: ['dst'], message: `"default" or an ${r.family} prefix` });
    for (const k of ['gateway', 'prefsrc'] as const) {
      const v = r[k];
      if (v !== undefined && isIP(v) !== version(r.family)) ctx.addIssue({ code: 'custom', path: [k], message: `an ${r.family} address` });
    }
  });
export type SavedRoute = z.infer<typeof SavedRouteSchema>;

export const NetnsConfigSchema = z
  .object({
    format: z.literal(NETNS_CONFIG_FORMAT),
    addresses: z.array(SavedAddressSchema).max(MAX_ENTRIES),
    routes: z.array(SavedRouteSchema).max(MAX_ENTRIES),
    /** `nft -j list ruleset` items (no metainfo, no handles, without CRIU's lock); [] when none. */
    nftables: NftItemsSchema,
  })
  .strict();
export type NetnsConfig = z.infer<typeof NetnsConfigSchema>;

/** A path such as `routes.3.gateway`, with only plain segments (a hostile key is never echoed). */
export function issuePath(p: readonly PropertyKey[]): string {
  return p.map((k) => (typeof k === 'number' || (typeof k === 'string' && /^[A-Za-z0-9_ ]{1,32}$/.test(k)) ? String(k) : '?')).join('.') || '(top level)';
}

/** A short description of why `issue` failed, from the schema's own words (never the value). */
function issueText(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'unrecognized_keys':
      return 'unknown field';
    case 'invalid_type':
      return `expected ${issue.expected}`;
    case 'too_big':
      return `too large (at most ${String(issue.maximum)})`;
    case 'too_small':
      return `too small (at least ${String(issue.minimum)})`;
    default:
      // Our own messages (custom, regex, enum) name the rule; enum messages list only our values.
      return issue.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 120);
  }
}

/**
 * The file an older runbox wrote for a VPS whose root changed nothing (most of them): it carries
 * nothing to replay, so a rolling upgrade can still move and restore those jobs. Any content in
 * the old format (its nft ruleset was text) is refused.
 */
function isEmptyOldFormat(raw: unknown): boolean {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return false;
  const o = raw as Record<string, unknown>;
  const keys = Object.keys(o).sort().join(',');
  return keys === 'addresses,nftRuleset,routes' && Array.isArray(o.addresses) && o.addresses.length === 0 && Array.isArray(o.routes) && o.routes.length === 0 && o.nftRuleset === '';
}

/**
 * Validates `raw` (parsed JSON) as a saved netns configuration. `what` names where it came from,
 * for the message (e.g. "the checkpoint's network configuration").
 */
export function parseNetnsConfig(raw: unknown, what: string): NetnsConfig {
  if (isEmptyOldFormat(raw)) return { format: NETNS_CONFIG_FORMAT, addresses: [], routes: [], nftables: [] };
  if (raw && typeof raw === 'object' && !Array.isArray(raw) && ('nftRuleset' in raw || !('format' in raw))) {
    throw new RunboxError('checkpoint_incompatible', `${what} is in the format of an older runbox (a text nftables ruleset), which this version does not replay; checkpoint the job again with this version`);
  }
  const r = NetnsConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more)` : '';
  throw new RunboxError('checkpoint_incompatible', `${what} is invalid at ${issuePath(issue.path)}: ${issueText(issue)}${more}`);
}
