import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { exec, execOk } from '../exec.js';

/**
 * The network configuration a job made inside its VPS's own network namespace (root there has
 * NET_ADMIN): extra addresses, routes, firewall rules. runc hands our netns to CRIU as an
 * *external* namespace, so CRIU restores sockets into it but does not save or restore its
 * configuration. runbox does that itself when a VPS moves to a netns it made on another host:
 * the same kind of state CRIU would save for a netns of its own (addresses, routes, nftables).
 *
 * Interfaces are named, never numbered: ifindexes differ between hosts, which is why the binary
 * `ip addr save` / `ip route save` formats cannot be replayed here. Links the job created itself
 * (a dummy, a bridge) are not recreated; their addresses and routes are reported as skipped.
 */
export interface NetnsConfig {
  addresses: SavedAddress[];
  routes: SavedRoute[];
  /** `nft list ruleset` output; '' when the job set no rules. */
  nftRuleset: string;
}

export interface SavedAddress {
  dev: string;
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
  scope?: string;
  label?: string;
  broadcast?: string;
}

export interface SavedRoute {
  family: 'inet' | 'inet6';
  dst: string;
  gateway?: string;
  dev?: string;
  table?: string;
  protocol?: string;
  scope?: string;
  prefsrc?: string;
  metric?: number;
  type?: string;
}

/** The file, inside a checkpoint's CRIU image dir, that carries the VPS's netns configuration. */
export const NETNS_CONFIG_FILE = 'runbox-netns.json';

interface IpAddrJson {
  ifname: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope?: string; label?: string; broadcast?: string }>;
}

/**
 * Parses `ip -j addr show`. What the kernel makes by itself is left out (it remakes it): IPv6
 * link-local addresses, and loopback's own 127.0.0.1/8 and ::1/128 once lo is up.
 */
export function parseAddresses(json: string): SavedAddress[] {
  const links = JSON.parse(json || '[]') as IpAddrJson[];
  const out: SavedAddress[] = [];
  for (const link of links) {
    for (const a of link.addr_info ?? []) {
      if (a.family !== 'inet' && a.family !== 'inet6') continue;
      if (a.family === 'inet6' && a.scope === 'link') continue;
      if (link.ifname === 'lo' && ((a.local === '127.0.0.1' && a.prefixlen === 8) || (a.local === '::1' && a.prefixlen === 128))) continue;
      out.push({
        dev: link.ifname,
        family: a.family,
        local: a.local,
        prefixlen: a.prefixlen,
        ...(a.scope ? { scope: a.scope } : {}),
        ...(a.family === 'inet' && a.label && a.label !== link.ifname ? { label: a.label } : {}),
        ...(a.broadcast ? { broadcast: a.broadcast } : {}),
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
  const routes = JSON.parse(json || '[]') as Array<Record<string, unknown>>;
  return routes
    .filter((r) => r.protocol !== 'kernel' && r.table !== 'local' && (r.type === undefined || r.type === 'unicast' || r.type === 'unreachable' || r.type === 'blackhole' || r.type === 'prohibit'))
    .filter((r) => !(family === 'inet6' && typeof r.dst === 'string' && r.dst.startsWith('fe80::')))
    .map((r) => ({
      family,
      dst: String(r.dst),
      ...(typeof r.gateway === 'string' ? { gateway: r.gateway } : {}),
      ...(typeof r.dev === 'string' ? { dev: r.dev } : {}),
      ...(typeof r.table === 'string' && r.table !== 'main' ? { table: r.table } : {}),
      ...(typeof r.protocol === 'string' ? { protocol: r.protocol } : {}),
      ...(typeof r.scope === 'string' ? { scope: r.scope } : {}),
      ...(typeof r.prefsrc === 'string' ? { prefsrc: r.prefsrc } : {}),
      ...(typeof r.metric === 'number' ? { metric: r.metric } : {}),
      ...(typeof r.type === 'string' && r.type !== 'unicast' ? { type: r.type } : {}),
    }));
}

export interface ReplayPlan {
  /** `ip -batch` lines per family (addresses first: routes may need them). */
  inet: string[];
  inet6: string[];
  /** What cannot be replayed because its interface does not exist in the new netns. */
  skipped: string[];
}

/** The `ip` commands that make a fresh netns (with the links in `devs`) carry `saved`. Idempotent (`replace`). */
export function replayPlan(saved: NetnsConfig, devs: Set<string>): ReplayPlan {
  const plan: ReplayPlan = { inet: [], inet6: [], skipped: [] };
  for (const a of saved.addresses) {
    if (!devs.has(a.dev)) {
      plan.skipped.push(`address ${a.local}/${a.prefixlen} on ${a.dev}`);
      continue;
    }
    const words = ['addr', 'replace', `${a.local}/${a.prefixlen}`, 'dev', a.dev];
    if (a.scope) words.push('scope', a.scope);
    if (a.label) words.push('label', a.label);
    if (a.broadcast) words.push('broadcast', a.broadcast);
    plan[a.family].push(words.join(' '));
  }
  for (const r of saved.routes) {
    if (r.dev && !devs.has(r.dev)) {
      plan.skipped.push(`route ${r.dst} on ${r.dev}`);
      continue;
    }
    const words = ['route', 'replace', ...(r.type ? [r.type] : []), r.dst];
    if (r.gateway) words.push('via', r.gateway);
    if (r.dev) words.push('dev', r.dev);
    if (r.table) words.push('table', r.table);
    if (r.protocol) words.push('proto', r.protocol);
    if (r.scope) words.push('scope', r.scope);
    if (r.prefsrc) words.push('src', r.prefsrc);
    if (r.metric !== undefined) words.push('metric', String(r.metric));
    plan[r.family].push(words.join(' '));
  }
  return plan;
}

const nsenter = (netns: string, argv: string[]) => ['nsenter', `--net=/run/netns/${netns}`, ...argv];

/** What runbox itself configures in a VPS's netns (made again by the target host, not replayed). */
export interface OwnNetwork {
  address?: string;
  gateway?: string;
}

/**
 * Drops CRIU's network lock from an `nft list ruleset` text. The configuration is read while CRIU
 * dumps, and CRIU may have locked the netns by then: with nftables, a whole `table inet CRIU-<run
 * id>`; with iptables (nf_tables backend), a `chain CRIU` plus `jump CRIU` rules in the filter
 * table. Replayed on the target, that lock would clash with the restore's own and cut the network.
 */
export function withoutCriuLock(ruleset: string): string {
  const out: string[] = [];
  let skipDepth = 0; // > 0 while inside a block being dropped
  for (const line of ruleset.split('\n')) {
    const t = line.trim();
    if (skipDepth > 0) {
      skipDepth += (t.match(/\{/g)?.length ?? 0) - (t.match(/\}/g)?.length ?? 0);
      continue;
    }
    if (/^table inet CRIU-\S+ \{$/.test(t) || t === 'chain CRIU {') {
      skipDepth = 1;
      continue;
    }
    if (/(^|\s)jump CRIU$/.test(t)) continue;
    out.push(line);
  }
  return out.join('\n').trim();
}

/** Drops runbox's own address and default route: the new host makes those itself (same address). */
export function withoutOwn(config: NetnsConfig, own: OwnNetwork): NetnsConfig {
  return {
    ...config,
    addresses: config.addresses.filter((a) => !(a.dev === 'eth0' && a.local === own.address)),
    routes: config.routes.filter((r) => !(r.dst === 'default' && r.dev === 'eth0' && r.gateway === own.gateway && !r.table && r.metric === undefined)),
  };
}

/** Reads the configuration of the named netns (`ip netns` name), without what runbox set up itself. */
export async function captureNetnsConfig(netns: string, own: OwnNetwork): Promise<NetnsConfig> {
  const [addrs, r4, r6, nft] = await Promise.all([
    execOk(['ip', '-n', netns, '-j', 'addr', 'show']),
    execOk(['ip', '-n', netns, '-4', '-j', 'route', 'show', 'table', 'all']),
    execOk(['ip', '-n', netns, '-6', '-j', 'route', 'show', 'table', 'all']),
    execOk(nsenter(netns, ['nft', 'list', 'ruleset'])),
  ]);
  const config = {
    addresses: parseAddresses(addrs.stdout),
    routes: [...parseRoutes(r4.stdout, 'inet'), ...parseRoutes(r6.stdout, 'inet6')],
    nftRuleset: withoutCriuLock(nft.stdout),
  };
  return withoutOwn(config, own);
}

/** Saves the netns configuration next to a checkpoint's CRIU images. */
export async function saveNetnsConfig(netns: string, own: OwnNetwork, imagesDir: string): Promise<void> {
  await fs.writeFile(path.join(imagesDir, NETNS_CONFIG_FILE), JSON.stringify(await captureNetnsConfig(netns, own)));
}

/**
 * Replays a saved configuration (if the checkpoint has one) into the named netns, before the VPS's
 * processes are restored into it. Returns what could not be replayed. A replay that fails is an
 * error: the job's sockets and programs rely on that configuration.
 */
export async function applyNetnsConfig(netns: string, imagesDir: string): Promise<{ skipped: string[] }> {
  let saved: NetnsConfig;
  try {
    saved = JSON.parse(await fs.readFile(path.join(imagesDir, NETNS_CONFIG_FILE), 'utf8')) as NetnsConfig;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { skipped: [] }; // a checkpoint from before this existed
    throw new RunboxError('checkpoint_incompatible', `the checkpoint's network configuration is unreadable: ${(e as Error).message}`);
  }
  if (saved.addresses.length === 0 && saved.routes.length === 0 && !saved.nftRuleset) return { skipped: [] }; // the usual case
  const links = JSON.parse((await execOk(['ip', '-n', netns, '-j', 'link', 'show'])).stdout || '[]') as Array<{ ifname: string }>;
  const plan = replayPlan(saved, new Set(links.map((l) => l.ifname)));
  for (const family of ['inet', 'inet6'] as const) {
    if (plan[family].length === 0) continue;
    const r = await exec(['ip', '-n', netns, family === 'inet' ? '-4' : '-6', '-batch', '-'], { input: plan[family].join('\n') });
    if (r.code !== 0) throw new RunboxError('checkpoint_incompatible', `restoring the VPS's ${family} addresses and routes failed: ${r.stderr.trim()}`);
  }
  if (saved.nftRuleset) {
    const r = await exec(nsenter(netns, ['nft', '-f', '-']), { input: `flush ruleset\n${saved.nftRuleset}\n` });
    if (r.code !== 0) throw new RunboxError('checkpoint_incompatible', `restoring the VPS's firewall rules failed: ${r.stderr.trim()}`);
  }
  return { skipped: plan.skipped };
}
