import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { exec } from '../exec.js';
import { listItems, NftItemsSchema, withoutCriuLock, type NftItem } from './nft-json.js';
import { NETNS_CONFIG_FILE, NETNS_CONFIG_FORMAT, parseNetnsConfig, type NetnsConfig, type SavedAddress, type SavedRoute } from './netns-schema.js';

export { applyNetnsConfig, readNetnsConfig, replayCommands, type ReplayCommand, type ReplayPlan } from './netns-replay.js';
export { NETNS_CONFIG_FILE, type NetnsConfig, type SavedAddress, type SavedRoute } from './netns-schema.js';

/**
 * The network configuration a job made inside its VPS's own network namespace (root there has
 * NET_ADMIN only with RUNBOX_VPS_TUN=1): extra addresses, routes, firewall rules. runc hands our
 * netns to CRIU as an *external* namespace, so CRIU restores sockets into it but does not save or
 * restore its configuration. runbox does that itself when a VPS moves to a netns it made on
 * another host: the same kind of state CRIU would save for a netns of its own.
 *
 * Interfaces are named, never numbered: ifindexes differ between hosts, which is why the binary
 * `ip addr save` / `ip route save` formats cannot be replayed here. Links the job created itself
 * (a dummy, a bridge) are not recreated; their addresses and routes are reported as skipped.
 *
 * What is read back is hostile data (VPS root chose labels and rule comments; the file may come
 * from another host): netns-schema.ts checks it on capture and on load, netns-replay.ts replays it
 * as one argv per entry and nftables as JSON from a sandbox.
 */

const WHAT_CAPTURED = "the VPS's network configuration";

/** JSON text printed by a tool that read the VPS's netns: an array, or a clear error (never the text itself). */
function parseJsonOf(text: string, tool: string): unknown {
  try {
    return JSON.parse(text || '[]') as unknown;
  } catch {
    throw new RunboxError('checkpoint_incompatible', `${WHAT_CAPTURED} could not be read (${tool} printed no valid JSON)`);
  }
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const records = (v: unknown): Array<Record<string, unknown>> => (Array.isArray(v) ? v.filter((x): x is Record<string, unknown> => !!x && typeof x === 'object') : []);

/**
 * Parses `ip -j addr show`. What the kernel makes by itself is left out (it remakes it): IPv6
 * link-local addresses, and loopback's own 127.0.0.1/8 and ::1/128 once lo is up. Shapes other
 * than iproute2's are carried through as they are, for the schema to refuse.
 */
export function parseAddresses(json: string): SavedAddress[] {
  const out: SavedAddress[] = [];
  for (const link of records(parseJsonOf(json, 'ip addr'))) {
    for (const a of records(link.addr_info)) {
      if (a.family !== 'inet' && a.family !== 'inet6') continue;
      if (a.family === 'inet6' && a.scope === 'link') continue;
      if (link.ifname === 'lo' && ((a.local === '127.0.0.1' && a.prefixlen === 8) || (a.local === '::1' && a.prefixlen === 128))) continue;
      out.push({
        dev: link.ifname as string,
        family: a.family,
        local: a.local as string,
        prefixlen: a.prefixlen as number,
        ...(a.scope !== undefined ? { scope: a.scope as string } : {}),
        ...(a.family === 'inet' && a.label !== undefined && a.label !== link.ifname ? { label: a.label as string } : {}),
        ...(a.broadcast !== undefined ? { broadcast: a.broadcast as string } : {}),
      });
    }
  }
  return out;
}

/**
 * Parses `ip -j route show table all` of one family. Only routes someone added are kept: the kernel
 * makes its own (`proto kernel`, the local table, broadcast/multicast entries) from the addresses.
 */
export function parseRoutes(json: string, family: 'inet' | 'inet6'): SavedRoute[] {
  return records(parseJsonOf(json, 'ip route'))
    .filter((r) => r.protocol !== 'kernel' && r.table !== 'local' && (r.type === undefined || r.type === 'unicast' || r.type === 'unreachable' || r.type === 'blackhole' || r.type === 'prohibit'))
    .filter((r) => !(family === 'inet6' && typeof r.dst === 'string' && r.dst.startsWith('fe80::')))
    .map((r) => ({
      family,
      dst: r.dst as string,
      ...(str(r.gateway) !== undefined ? { gateway: r.gateway as string } : {}),
      ...(str(r.dev) !== undefined ? { dev: r.dev as string } : {}),
      ...(str(r.table) !== undefined && r.table !== 'main' ? { table: r.table as string } : {}),
      ...(str(r.protocol) !== undefined ? { protocol: r.protocol as string } : {}),
      ...(str(r.scope) !== undefined ? { scope: r.scope as string } : {}),
      ...(str(r.prefsrc) !== undefined ? { prefsrc: r.prefsrc as string } : {}),
      ...(typeof r.metric === 'number' ? { metric: r.metric } : {}),
      ...(typeof r.type === 'string' && r.type !== 'unicast' ? { type: r.type as SavedRoute['type'] } : {}),
    }));
}

/**
 * The ruleset of an `nft -j list ruleset` output, checked, without CRIU's lock and handles.
 * Checked before the lock is dropped too: dropping walks the items.
 */
export function parseRuleset(json: string): NftItem[] {
  let items: unknown[];
  try {
    items = listItems(JSON.parse(json || '{"nftables":[]}'));
  } catch {
    throw new RunboxError('checkpoint_incompatible', `${WHAT_CAPTURED} could not be read (nft printed no valid JSON ruleset)`);
  }
  const checked = NftItemsSchema.safeParse(items);
  // The full check (with a message naming the field) happens on the whole config below.
  return checked.success ? withoutCriuLock(checked.data) : (items as NftItem[]);
}

/** What runbox itself configures in a VPS's netns (made again by the target host, not replayed). */
export interface OwnNetwork {
  address?: string;
  gateway?: string;
}

/** Drops runbox's own address and default route: the new host makes those itself (same address). */
export function withoutOwn(config: NetnsConfig, own: OwnNetwork): NetnsConfig {
  return {
    ...config,
    addresses: config.addresses.filter((a) => !(a.dev === 'eth0' && a.local === own.address)),
    routes: config.routes.filter((r) => !(r.dst === 'default' && r.dev === 'eth0' && r.gateway === own.gateway && !r.table && r.metric === undefined)),
  };
}

/** The largest output read from a tool (exec captures 1 MiB): a longer one is refused, not cut. */
const MAX_TOOL_OUTPUT = 1024 * 1024 - 1;

async function readTool(argv: string[], tool: string): Promise<string> {
  const r = await exec(argv, { timeoutMs: 30_000 });
  if (r.code !== 0) throw new RunboxError('internal', `reading ${WHAT_CAPTURED} failed (${tool} exit ${r.code ?? r.signal})`, { cause: new Error(r.stderr.slice(0, 2000)) });
  if (r.stdout.length >= MAX_TOOL_OUTPUT) throw new RunboxError('checkpoint_incompatible', `${WHAT_CAPTURED} is too large to be saved (${tool})`);
  return r.stdout;
}

const nsenter = (netns: string, argv: string[]) => ['nsenter', `--net=/run/netns/${netns}`, ...argv];

/** Reads the configuration of the named netns (`ip netns` name), without what runbox set up itself. Checked. */
export async function captureNetnsConfig(netns: string, own: OwnNetwork): Promise<NetnsConfig> {
  const [addrs, r4, r6, nft] = await Promise.all([
    readTool(['ip', '-n', netns, '-j', 'addr', 'show'], 'ip'),
    readTool(['ip', '-n', netns, '-4', '-j', 'route', 'show', 'table', 'all'], 'ip'),
    readTool(['ip', '-n', netns, '-6', '-j', 'route', 'show', 'table', 'all'], 'ip'),
    readTool(nsenter(netns, ['nft', '-j', 'list', 'ruleset']), 'nft'),
  ]);
  const captured = {
    format: NETNS_CONFIG_FORMAT,
    addresses: parseAddresses(addrs),
    routes: [...parseRoutes(r4, 'inet'), ...parseRoutes(r6, 'inet6')],
    nftables: parseRuleset(nft),
  };
  return withoutOwn(parseNetnsConfig(captured, WHAT_CAPTURED), own);
}

/** Saves the netns configuration next to a checkpoint's CRIU images. */
export async function saveNetnsConfig(netns: string, own: OwnNetwork, imagesDir: string): Promise<void> {
  await fs.writeFile(path.join(imagesDir, NETNS_CONFIG_FILE), JSON.stringify(await captureNetnsConfig(netns, own)), { mode: 0o600 });
}
