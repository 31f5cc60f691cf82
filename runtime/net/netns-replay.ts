import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { exec } from '../exec.js';
import { SANDBOX_INPUT, sandboxExec } from '../host/sandbox.js';
import { replayDocument } from './nft-json.js';
import { MAX_CONFIG_BYTES, NETNS_CONFIG_FILE, parseNetnsConfig, type NetnsConfig } from './netns-schema.js';

/** One `ip` run: its argv, and what it restores (for messages: built from checked fields only). */
export interface ReplayCommand {
  argv: string[];
  what: string;
}

export interface ReplayPlan {
  /** Addresses first (routes may need them), then routes; one argv per entry, never a batch. */
  commands: ReplayCommand[];
  /** What cannot be replayed because its interface does not exist in the new netns. */
  skipped: string[];
}

/**
 * The `ip` commands that make a fresh netns (with the links in `devs`) carry `saved`. Idempotent
 * (`replace`). Every value follows its keyword as its own argv element, so none can become a
 * keyword or a command; the schema has checked each anyway.
 */
export function replayCommands(netns: string, saved: NetnsConfig, devs: ReadonlySet<string>): ReplayPlan {
  const plan: ReplayPlan = { commands: [], skipped: [] };
  const ip = (family: 'inet' | 'inet6') => ['ip', '-n', netns, family === 'inet' ? '-4' : '-6'];
  for (const a of saved.addresses) {
    const what = `address ${a.local}/${a.prefixlen} on ${a.dev}`;
    if (!devs.has(a.dev)) {
      plan.skipped.push(what);
      continue;
    }
    const argv = [...ip(a.family), 'addr', 'replace', `${a.local}/${a.prefixlen}`, 'dev', a.dev];
    if (a.scope) argv.push('scope', a.scope);
    if (a.label) argv.push('label', a.label);
    if (a.broadcast) argv.push('broadcast', a.broadcast);
    plan.commands.push({ argv, what });
  }
  for (const r of saved.routes) {
    const what = `route ${r.dst}${r.dev ? ` on ${r.dev}` : ''}`;
    if (r.dev && !devs.has(r.dev)) {
      plan.skipped.push(what);
      continue;
    }
    const argv = [...ip(r.family), 'route', 'replace', ...(r.type ? [r.type] : []), r.dst];
    if (r.gateway) argv.push('via', r.gateway);
    if (r.dev) argv.push('dev', r.dev);
    if (r.table) argv.push('table', r.table);
    if (r.protocol) argv.push('proto', r.protocol);
    if (r.scope) argv.push('scope', r.scope);
    if (r.prefsrc) argv.push('src', r.prefsrc);
    if (r.metric !== undefined) argv.push('metric', String(r.metric));
    plan.commands.push({ argv, what });
  }
  return plan;
}

const WHAT_SAVED = "the checkpoint's network configuration";
const incompatible = (why: string) => new RunboxError('checkpoint_incompatible', `${WHAT_SAVED} (${NETNS_CONFIG_FILE}) ${why}`);

/**
 * Reads and checks a checkpoint's saved configuration; undefined when the checkpoint has none.
 * The file may come from another host: no symlink is followed (it could name a host file), no
 * FIFO blocks the worker, its size is capped, and no message quotes what it contains (V8's JSON
 * errors quote the text they choke on).
 */
export async function readNetnsConfig(imagesDir: string): Promise<NetnsConfig | undefined> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(path.join(imagesDir, NETNS_CONFIG_FILE), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined; // a checkpoint of a VPS without a netns of its own
    throw incompatible(code === 'ELOOP' ? 'is a symbolic link' : `cannot be opened (${code ?? 'error'})`);
  }
  let text: string;
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw incompatible('is not a regular file');
    if (st.size > MAX_CONFIG_BYTES) throw incompatible(`is larger than ${MAX_CONFIG_BYTES / 1024} KiB`);
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await fh.read(buf, 0, st.size, 0);
    text = buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw incompatible('is not valid JSON');
  }
  return parseNetnsConfig(raw, `${WHAT_SAVED} (${NETNS_CONFIG_FILE})`);
}

/** Tool output for the log only: bounded, never for a tenant. */
const forLog = (s: string) => s.slice(0, 4000);

/**
 * Replays a saved configuration (if the checkpoint has one) into the named netns, before the VPS's
 * processes are restored into it. Returns what could not be replayed. A replay that fails is an
 * error (`checkpoint_incompatible`): the job's sockets and programs rely on that configuration.
 * Errors name the entry and the tool's exit code; what the tool printed goes to `log` (and the
 * error's cause), never into the message a tenant sees.
 */
export async function applyNetnsConfig(netns: string, imagesDir: string, log?: Logger): Promise<{ skipped: string[] }> {
  const saved = await readNetnsConfig(imagesDir);
  if (!saved || (saved.addresses.length === 0 && saved.routes.length === 0 && saved.nftables.length === 0)) return { skipped: [] }; // the usual case: nothing to spawn
  let skipped: string[] = [];
  if (saved.addresses.length || saved.routes.length) {
    const links = await exec(['ip', '-n', netns, '-j', 'link', 'show'], { timeoutMs: 10_000 });
    const devs = new Set<string>();
    try {
      for (const l of JSON.parse(links.stdout || '[]') as Array<{ ifname?: unknown }>) if (typeof l.ifname === 'string') devs.add(l.ifname);
    } catch {
      /* no links known: everything is reported as skipped */
    }
    const plan = replayCommands(netns, saved, devs);
    skipped = plan.skipped;
    for (const c of plan.commands) {
      const r = await exec(c.argv, { timeoutMs: 10_000 });
      if (r.code !== 0) {
        log?.warn({ netns, what: c.what, code: r.code, stderr: forLog(r.stderr) }, 'replaying the network configuration failed');
        throw new RunboxError('checkpoint_incompatible', `restoring the VPS's ${c.what} failed (ip exit ${r.code ?? r.signal})`, { cause: new Error(forLog(r.stderr)) });
      }
    }
  }
  if (saved.nftables.length) {
    const r = await sandboxExec({ argv: ['nft', '-j', '-f', SANDBOX_INPUT], netns, caps: ['net_admin'] }, { input: replayDocument(saved.nftables), timeoutMs: 30_000 });
    if (r.code !== 0) {
      log?.warn({ netns, code: r.code, stderr: forLog(r.stderr) }, "replaying the VPS's firewall rules failed");
      throw new RunboxError('checkpoint_incompatible', `restoring the VPS's firewall rules failed (nft exit ${r.code ?? r.signal})`, { cause: new Error(forLog(r.stderr)) });
    }
  }
  return { skipped };
}
