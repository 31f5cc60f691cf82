import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { saveNetwork } from '../../runtime/checkpoint/checkpoint.js';
import { applyNetnsConfig, captureNetnsConfig, NETNS_CONFIG_FILE, saveNetnsConfig } from '../../runtime/net/netns-config.js';
import { testEngine, type TestEngine } from '../helpers/engine.js';

/**
 * The network configuration a VPS's root made in its netns is saved with a checkpoint
 * (runbox-netns.json) and replayed as host root on the host that restores it. Here the attacker
 * is VPS root (the hostile state made in a netns as root there would, or by a real VPS that keeps
 * NET_ADMIN with RUNBOX_VPS_TUN=1) and a hostile source host or checkpoint store (hand-written
 * files). The target must run nothing the data names, read no host file, and quote none.
 */
const tag = randomBytes(3).toString('hex');
const made: string[] = [];
let dir: string;
let secretFile: string;
const SECRET = `S3CR3T-${randomBytes(8).toString('hex')}`;
/** Two characters: all an address label (15 bytes) leaves for the name after "lo\nnetns add ". */
const INJECTED = `Q${'abcdefghijklmnopqrstuvwxyz'[randomBytes(1)[0]! % 26]}`;

const ip = (args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
/** nft in `ns`; `input` goes through a file (nft opens /dev/stdin, which fails on Node's socketpair stdio). */
function nftIn(ns: string, args: string[], input?: string): string {
  if (input === undefined) return execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args], { encoding: 'utf8' });
  const file = path.join(dir, `nft-input-${randomBytes(4).toString('hex')}`);
  writeFileSync(file, input);
  try {
    return execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args.map((a) => (a === '-' ? file : a))], { encoding: 'utf8' });
  } finally {
    rmSync(file);
  }
}

/** A netns like a VPS's: lo up, an `eth0` (a veth whose peer stays in the same netns: nothing leaves it). */
function netns(name: string): string {
  const ns = `rbAt${tag}${name}`;
  ip(['netns', 'add', ns]);
  made.push(ns);
  ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  ip(['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
  ip(['-n', ns, 'link', 'set', 'peer0', 'up']);
  ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
  return ns;
}

const writeConfig = (d: string, content: unknown) => fs.writeFile(path.join(d, NETNS_CONFIG_FILE), typeof content === 'string' ? content : JSON.stringify(content));
const errorOf = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as Error & { code?: string });
const within = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_r, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))]);
/** The JSON ruleset of a netns without handles and metainfo (what a restore must reproduce). */
const rulesetOf = (ns: string) =>
  (JSON.parse(nftIn(ns, ['-j', 'list', 'ruleset'])) as { nftables: Array<Record<string, Record<string, unknown>>> }).nftables
    .filter((i) => !('metainfo' in i))
    .map((i) => Object.fromEntries(Object.entries(i).map(([k, { handle: _h, ...o }]) => [k, o])));

beforeAll(async () => {
  expect(existsSync(`/run/netns/${INJECTED}`), `a netns named ${INJECTED} exists already; rerun`).toBe(false);
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'rbA-netns-replay-'));
  // Stands for the state dir's token file: what the attacker wants to read.
  secretFile = path.join(dir, 'api-tokens');
  await fs.writeFile(secretFile, `${SECRET}\n`, { mode: 0o600 });
});

afterEach(async () => {
  for (const ns of made.splice(0)) ip(['netns', 'del', ns]);
  for (const f of await fs.readdir(dir)) if (f !== 'api-tokens') await fs.rm(path.join(dir, f), { recursive: true, force: true });
});

afterAll(async () => {
  if (existsSync(`/run/netns/${INJECTED}`)) ip(['netns', 'del', INJECTED]);
  await fs.rm(dir, { recursive: true, force: true });
});

describe('an address label (any string VPS root chooses) cannot become ip commands on the target', () => {
  it('is refused when captured, and a hand-written file carrying it is refused when loaded: the injected netns never appears', async () => {
    const src = netns('s');
    const dst = netns('d');
    ip(['-n', src, 'addr', 'add', '10.123.0.1/32', 'dev', 'lo', 'label', `lo\nnetns add ${INJECTED}`]);
    const images = await fs.mkdtemp(path.join(dir, 'images-'));
    const saved = await errorOf(saveNetnsConfig(src, {}, images));
    // Whatever capture did, a source host can write the file itself.
    const applied = await errorOf(applyNetnsConfig(dst, images));
    const hostile = await fs.mkdtemp(path.join(dir, 'hostile-'));
    await writeConfig(hostile, { format: 2, addresses: [{ dev: 'lo', family: 'inet', local: '10.123.0.2', prefixlen: 32, label: `lo\nnetns add ${INJECTED}` }], routes: [], nftables: [] });
    const handWritten = await errorOf(applyNetnsConfig(dst, hostile));
    await writeConfig(hostile, { format: 2, addresses: [], routes: [{ family: 'inet', dst: `10.9.0.0/16\nnetns add ${INJECTED}`, dev: 'eth0' }], nftables: [] });
    const inRoute = await errorOf(applyNetnsConfig(dst, hostile));

    expect(existsSync(`/run/netns/${INJECTED}`), 'the label ran "netns add" as root on the target').toBe(false);
    expect(saved).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining('invalid at addresses.0.label') });
    expect(applied).toBeUndefined(); // nothing was saved: nothing to replay
    expect(handWritten).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining('invalid at addresses.0.label') });
    expect(inRoute).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining('invalid at routes.0.dst') });
    for (const e of [saved, handWritten, inRoute]) expect(e!.message).not.toContain('netns add');
    expect(ip(['-n', dst, '-j', 'addr', 'show', 'dev', 'lo'])).not.toContain('10.123.0');
  });

  it('a real VPS whose root keeps NET_ADMIN (RUNBOX_VPS_TUN=1) sets the label itself: its checkpoint refuses to save it', async () => {
    const t: TestEngine = await testEngine('netns-replay', { vpsTun: true });
    try {
      const vps = await t.create({ network: 'private' });
      try {
        const r = await vps.run({ argv: ['sh', '-c', `ip addr add 10.123.0.3/32 dev lo label "$(printf 'lo\\nnetns add ${INJECTED}')" && ip addr show dev lo`], timeoutSec: 10, outputBytes: 1 << 16 });
        expect(r.exitCode).toBe(0);
        const images = await fs.mkdtemp(path.join(dir, 'vps-'));
        const saved = await errorOf(saveNetwork(vps, images));
        const target = netns('v');
        const applied = await errorOf(applyNetnsConfig(target, images));
        expect(existsSync(`/run/netns/${INJECTED}`), 'the label ran "netns add" as root on the target').toBe(false);
        expect(saved).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringContaining('addresses.0.label') });
        expect(applied).toBeUndefined();
      } finally {
        await t.engine.destroy(vps.id);
      }
    } finally {
      await t.cleanup();
    }
  });
});

describe('a firewall rule comment cannot make nft read a host file on the target', () => {
  // `nft list ruleset` prints this comment unescaped: the text format ends the rule, the chain
  // and the table, includes the host file, and its parse error quotes the file's lines.
  const breakout = () => `x"\n}\n}\ninclude "${secretFile}"\ntable inet z {\n chain y {\n  comment "q`;

  it('round-trips the comment as data (JSON), includes nothing, and no error quotes the file', async () => {
    const src = netns('s');
    const dst = netns('d');
    nftIn(src, ['-f', '-'], 'table inet jobfw {\n chain input {\n  type filter hook input priority 0; policy accept;\n }\n}\n');
    expect(Buffer.byteLength(breakout())).toBeLessThanOrEqual(128);
    // How root with NET_ADMIN in a VPS makes it (JSON input takes any comment; netlink does too).
    nftIn(src, ['-j', '-f', '-'], JSON.stringify({ nftables: [{ add: { rule: { family: 'inet', table: 'jobfw', chain: 'input', comment: breakout(), expr: [{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 9999 } }, { drop: null }] } } }] }));
    expect(nftIn(src, ['list', 'ruleset'])).toContain(`include "${secretFile}"`); // the text format is broken out of

    const images = await fs.mkdtemp(path.join(dir, 'images-'));
    await saveNetnsConfig(src, {}, images);
    const applied = await errorOf(applyNetnsConfig(dst, images));
    expect(String(applied?.message ?? '') + String((applied?.cause as Error | undefined)?.message ?? '')).not.toContain(SECRET);
    expect(applied).toBeUndefined();
    expect(rulesetOf(dst)).toEqual(rulesetOf(src));
    expect(rulesetOf(dst).some((i) => 'table' in i && i.table!.name === 'z')).toBe(false);
  });

  it('hand-written files: the old text format (with an include) is refused; a symlink, a FIFO, a huge file are refused; none is quoted', async () => {
    const dst = netns('d');
    const hostile = await fs.mkdtemp(path.join(dir, 'hostile-'));
    const cases: Array<[string, () => Promise<void>, RegExp]> = [
      ['old format with an include', () => writeConfig(hostile, { addresses: [], routes: [], nftRuleset: `include "${secretFile}"` }), /older runbox/],
      ['a symlink to the token file', () => fs.symlink(secretFile, path.join(hostile, NETNS_CONFIG_FILE)), /symbolic link/],
      ['a FIFO', async () => void execFileSync('mkfifo', [path.join(hostile, NETNS_CONFIG_FILE)]), /not a regular file/],
      ['a 600 KiB file', () => writeConfig(hostile, JSON.stringify({ format: 2, addresses: [], routes: [], nftables: [], pad: 'x'.repeat(600 * 1024) })), /larger than/],
      ['not JSON', () => fs.copyFile(secretFile, path.join(hostile, NETNS_CONFIG_FILE)), /not valid JSON/],
    ];
    for (const [what, plant, expected] of cases) {
      await fs.rm(path.join(hostile, NETNS_CONFIG_FILE), { force: true });
      await plant();
      const e = await errorOf(within(applyNetnsConfig(dst, hostile), 5000, `applying ${what}`));
      expect(e, what).toMatchObject({ code: 'checkpoint_incompatible', message: expect.stringMatching(expected) });
      expect(e!.message, what).not.toContain(SECRET.slice(0, 6));
    }
    expect(rulesetOf(dst)).toEqual([]);
  });

  it('a ruleset nft refuses gives a generic message: nothing of what nft printed reaches the tenant', async () => {
    const dst = netns('d');
    const hostile = await fs.mkdtemp(path.join(dir, 'hostile-'));
    // Valid for the schema, refused by nft (the chain does not exist); nft's stderr quotes the rule.
    await writeConfig(hostile, { format: 2, addresses: [], routes: [], nftables: [{ table: { family: 'inet', name: 't' } }, { rule: { family: 'inet', table: 't', chain: 'nochain', comment: SECRET, expr: [{ drop: null }] } }] });
    const e = await errorOf(applyNetnsConfig(dst, hostile));
    expect(e).toMatchObject({ code: 'checkpoint_incompatible', message: "restoring the VPS's firewall rules failed (nft exit 1)" });
    // The same for ip: the entry (checked fields only) and the exit code, not what ip printed.
    await writeConfig(hostile, { format: 2, addresses: [], routes: [{ family: 'inet', dst: '10.9.0.0/16', gateway: '192.0.2.77', dev: 'eth0' }], nftables: [] });
    expect(await errorOf(applyNetnsConfig(dst, hostile))).toMatchObject({ code: 'checkpoint_incompatible', message: "restoring the VPS's route 10.9.0.0/16 on eth0 failed (ip exit 2)" });
  });
});

describe('a legitimate configuration', () => {
  it('round-trips exactly: addresses with labels, IPv6, routes with metric/table/proto, nft sets, maps and comments with quotes, newlines and braces', async () => {
    const src = netns('s');
    const dst = netns('d');
    ip(['-n', src, 'addr', 'add', '10.123.0.1/32', 'dev', 'lo', 'label', 'lo:web']);
    ip(['-n', src, 'addr', 'add', '10.88.7.2/24', 'dev', 'eth0', 'broadcast', '10.88.7.255']);
    ip(['-n', src, '-6', 'addr', 'add', 'fd00::5/64', 'dev', 'eth0', 'nodad']);
    ip(['-n', src, 'route', 'add', '10.124.0.0/24', 'dev', 'eth0', 'metric', '7']);
    ip(['-n', src, 'route', 'add', '10.126.0.0/16', 'via', '10.88.7.9', 'dev', 'eth0', 'table', '100']);
    ip(['-n', src, 'route', 'add', 'blackhole', '10.125.0.0/16', 'proto', 'static']);
    ip(['-n', src, '-6', 'route', 'add', 'fd01::/64', 'via', 'fd00::9', 'dev', 'eth0', 'metric', '1024']);
    nftIn(src, ['-f', '-'], [
      'table inet jobfw {',
      ' counter seen { }',
      ' set blocked { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1 } }',
      ' map ports { type inet_service : verdict; elements = { 22 : drop, 8080 : accept } }',
      ' chain input {',
      '  type filter hook input priority 0; policy accept;',
      '  ct state established,related accept',
      '  ip saddr @blocked counter drop comment "plain"',
      '  tcp dport vmap @ports',
      '  limit rate 10/second log prefix "in: " counter name "seen"',
      '  meta mark set 0x2a reject with icmpx type admin-prohibited',
      ' }',
      '}',
      'table ip nat {',
      ' chain post { type nat hook postrouting priority 100; oifname "eth0" masquerade; }',
      '}',
    ].join('\n'));
    const comment = 'a "quoted" }\n{ brace; include "/etc/shadow" \\ end';
    nftIn(src, ['-j', '-f', '-'], JSON.stringify({ nftables: [{ add: { rule: { family: 'inet', table: 'jobfw', chain: 'input', comment, expr: [{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 7777 } }, { drop: null }] } } }] }));

    const withoutLock = rulesetOf(src);
    // CRIU's network lock (criu/netfilter.c, `network-lock nftables`), present while the config is
    // read during a dump: left out, as are its effects.
    const criu = `CRIU-${randomBytes(4).toString('hex')}`;
    nftIn(src, ['-f', '-'], [
      `table inet ${criu} {`,
      ' set conns4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; elements = { 10.88.7.2 . 80 . 10.88.7.9 . 40000 } }',
      ' chain output { type filter hook output priority 0; policy drop; meta mark 0xc114 accept; ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; }',
      ' chain input { type filter hook input priority 0; policy drop; meta mark 0xc114 accept; }',
      '}',
    ].join('\n'));
    const captured = await captureNetnsConfig(src, {});
    nftIn(src, ['delete', 'table', 'inet', criu]);
    expect(rulesetOf(src)).toEqual(withoutLock);
    expect(captured.addresses.length).toBe(3);
    expect(captured.routes.length).toBe(4);
    const images = await fs.mkdtemp(path.join(dir, 'images-'));
    await saveNetnsConfig(src, {}, images);
    expect((await fs.stat(path.join(images, NETNS_CONFIG_FILE))).mode & 0o777).toBe(0o600);
    expect(await applyNetnsConfig(dst, images)).toEqual({ skipped: [] });
    expect(await captureNetnsConfig(dst, {})).toEqual(captured);
    expect(rulesetOf(dst)).toEqual(rulesetOf(src));
    expect(JSON.stringify(rulesetOf(dst))).toContain(JSON.stringify(comment));
    // Replaying twice is harmless (ip replace, nft flush first): a retried restore.
    expect(await applyNetnsConfig(dst, images)).toEqual({ skipped: [] });
    expect(await captureNetnsConfig(dst, {})).toEqual(captured);
  });

  it('an empty configuration spawns nothing (the netns need not even exist), and a fresh netns captures as empty', async () => {
    const src = netns('s');
    const images = await fs.mkdtemp(path.join(dir, 'images-'));
    await saveNetnsConfig(src, {}, images);
    expect(JSON.parse(await fs.readFile(path.join(images, NETNS_CONFIG_FILE), 'utf8'))).toEqual({ format: 2, addresses: [], routes: [], nftables: [] });
    expect(await applyNetnsConfig(`rbAt${tag}absent`, images)).toEqual({ skipped: [] });
    expect(await applyNetnsConfig(`rbAt${tag}absent`, path.join(dir, 'no-such-dir'))).toEqual({ skipped: [] });
    // What an older runbox wrote for a VPS whose root changed nothing (a rolling upgrade): nothing to replay.
    await writeConfig(images, { addresses: [], routes: [], nftRuleset: '' });
    expect(await applyNetnsConfig(`rbAt${tag}absent`, images)).toEqual({ skipped: [] });
  });
});
