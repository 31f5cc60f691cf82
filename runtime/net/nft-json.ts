import { z } from 'zod';

/**
 * A VPS's nftables ruleset as `nft -j list ruleset` prints it, checked structurally and replayed
 * as JSON (`nft -j -f`). Unlike the text format, whose `nft list ruleset` prints comments
 * unescaped (a comment could end its rule and go on with `include "/host/file"`), JSON keeps
 * data apart from syntax and has no include. Still: nft falls back to its text parser when its
 * input is not valid JSON, so the replay always runs sandboxed (runtime/host/sandbox.ts), and
 * the document is built here with JSON.stringify from checked items only.
 */
export const MAX_NFT_BYTES = 256 * 1024;
const MAX_DEPTH = 24;
const MAX_STRING = 1024;
const MAX_ITEMS = 4096;
/** NFT_NAME_MAXLEN (256, with the NUL). */
const NftName = z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_./:-]{0,254}$/, 'an nftables name');
/** The kernel keeps at most 128 bytes of a comment (NFTNL_UDATA_COMMENT_MAXLEN); any text, quotes and newlines included. */
const Comment = z.string().refine((c) => Buffer.byteLength(c) <= 128 && !c.includes('\0'), 'a comment of at most 128 bytes');
const Family = z.enum(['ip', 'ip6', 'inet', 'arp', 'bridge', 'netdev']);
const Handle = z.number().int().nonnegative().optional();

/** Every value of `v` is JSON data of bounded depth and string length (rule expressions, set elements). */
function checkBounded(v: unknown, ctx: z.RefinementCtx, at: PropertyKey[], depth = 0): void {
  if (depth > MAX_DEPTH) {
    ctx.addIssue({ code: 'custom', path: at, message: `nested deeper than ${MAX_DEPTH}` });
    return;
  }
  if (typeof v === 'string') {
    if (v.length > MAX_STRING || v.includes('\0')) ctx.addIssue({ code: 'custom', path: at, message: `a string of at most ${MAX_STRING} characters` });
  } else if (typeof v === 'number') {
    if (!Number.isFinite(v)) ctx.addIssue({ code: 'custom', path: at, message: 'a finite number' });
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => checkBounded(x, ctx, [...at, i], depth + 1));
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (k.length > 64) ctx.addIssue({ code: 'custom', path: at, message: 'a key of at most 64 characters' });
      checkBounded(x, ctx, [...at, k], depth + 1);
    }
  } else if (typeof v !== 'boolean' && v !== null) {
    ctx.addIssue({ code: 'custom', path: at, message: 'JSON data' });
  }
}
const Bounded = z.unknown().superRefine((v, ctx) => checkBounded(v, ctx, []));

/** Fields every object of a table carries; the rest is bounded JSON (nft itself checks its meaning). */
const inTable = { family: Family, table: NftName, name: NftName, handle: Handle, comment: Comment.optional() };
const TableObject = z.object({ family: Family, name: NftName, handle: Handle, comment: Comment.optional() }).catchall(Bounded);
const ChainObject = z
  .object({
    ...inTable,
    type: z.enum(['filter', 'nat', 'route']).optional(),
    hook: z.string().regex(/^[a-z]{1,16}$/, 'a hook name').optional(),
    prio: z.union([z.number().int(), z.string().regex(/^[a-z]{1,16}( ?[+-] ?\d{1,5})?$/, 'a priority')]).optional(),
  })
  .catchall(Bounded);
const RuleObject = z
  .object({ family: Family, table: NftName, chain: NftName, handle: Handle, comment: Comment.optional(), expr: z.array(Bounded).max(256) })
  .catchall(Bounded);
const NamedObject = z.object(inTable).catchall(Bounded);

/** The kinds of `nft -j list ruleset` (libnftables-json(5), LIST OBJECTS), nothing else. */
const KINDS = {
  table: TableObject,
  chain: ChainObject,
  rule: RuleObject,
  set: NamedObject,
  map: NamedObject,
  element: NamedObject,
  flowtable: NamedObject,
  counter: NamedObject,
  quota: NamedObject,
  'ct helper': NamedObject,
  limit: NamedObject,
  'ct timeout': NamedObject,
  'ct expectation': NamedObject,
  secmark: NamedObject,
  synproxy: NamedObject,
} as const;
export type NftKind = keyof typeof KINDS;
export const NFT_KINDS = Object.keys(KINDS) as NftKind[];

/** One list object: exactly one key, a known kind. */
export type NftItem = { [K in NftKind]?: Record<string, unknown> };
const ItemSchema = z.record(z.string(), z.unknown()).superRefine((item, ctx) => {
  const keys = Object.keys(item);
  const kind = keys[0] as NftKind | undefined;
  if (keys.length !== 1 || !kind || !(kind in KINDS)) {
    ctx.addIssue({ code: 'custom', message: 'an nftables object of a known kind (table, chain, rule, set, …)' });
    return;
  }
  const r = KINDS[kind].safeParse(item[kind]);
  if (!r.success) for (const issue of r.error.issues) ctx.addIssue({ code: 'custom', path: [kind, ...issue.path], message: issue.message });
}) as unknown as z.ZodType<NftItem>;

export const NftItemsSchema = z
  .array(ItemSchema)
  .max(MAX_ITEMS)
  .refine((items) => Buffer.byteLength(JSON.stringify(items)) <= MAX_NFT_BYTES, `a ruleset of at most ${MAX_NFT_BYTES / 1024} KiB`);

/** The list objects of an `nft -j list ruleset` document (metainfo left out). Throws on anything else. */
export function listItems(doc: unknown): unknown[] {
  if (!doc || typeof doc !== 'object' || !Array.isArray((doc as { nftables?: unknown }).nftables)) throw new Error('not an nftables JSON document');
  return ((doc as { nftables: unknown[] }).nftables).filter((i) => !(i && typeof i === 'object' && 'metainfo' in i));
}

const kindOf = (item: NftItem): [NftKind, Record<string, unknown>] => Object.entries(item)[0] as [NftKind, Record<string, unknown>];

/**
 * Drops CRIU's network lock. The configuration is read while CRIU dumps, and CRIU may have locked
 * the netns by then: with nftables, a whole `table inet CRIU-<run id>`; with iptables (nf_tables
 * backend), a `chain CRIU` plus rules that `jump CRIU`. Replayed on the target, that lock would
 * clash with the restore's own and cut the network. Handles go too: they are the kernel's.
 */
export function withoutCriuLock(items: readonly NftItem[]): NftItem[] {
  const out: NftItem[] = [];
  for (const item of items) {
    const [kind, o] = kindOf(item);
    const criuTable = o.family === 'inet' && typeof (kind === 'table' ? o.name : o.table) === 'string' && String(kind === 'table' ? o.name : o.table).startsWith('CRIU-');
    if (criuTable) continue;
    if (kind === 'chain' && o.name === 'CRIU') continue;
    if (kind === 'rule' && (o.chain === 'CRIU' || (Array.isArray(o.expr) && o.expr.some(isJumpToCriu)))) continue;
    const { handle: _handle, ...rest } = o;
    out.push({ [kind]: rest });
  }
  return out;
}

function isJumpToCriu(stmt: unknown): boolean {
  const jump = (stmt as { jump?: { target?: unknown } } | null)?.jump;
  return !!jump && typeof jump === 'object' && jump.target === 'CRIU';
}

/** The `nft -j -f` input that makes a fresh netns carry `items`: flush, then add each (in list order: tables, then their sets and chains, then rules). */
export function replayDocument(items: readonly NftItem[]): string {
  const cmds: unknown[] = [{ metainfo: { json_schema_version: 1 } }, { flush: { ruleset: null } }];
  for (const item of items) {
    const [kind, o] = kindOf(item);
    const { handle: _handle, ...rest } = o;
    cmds.push({ add: { [kind]: rest } });
  }
  return JSON.stringify({ nftables: cmds });
}
