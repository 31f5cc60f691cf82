import { describe, expect, it } from 'vitest';
import { parseAddresses, parseRoutes, parseRuleset, replayCommands, withoutOwn, type NetnsConfig } from '../../runtime/net/netns-config.js';
import { issuePath, parseNetnsConfig } from '../../runtime/net/netns-schema.js';
import { replayDocument, withoutCriuLock, type NftItem } from '../../runtime/net/nft-json.js';

// Shapes as printed by iproute2 6.1 (`ip -j addr show`, `ip -j route show table all`).
const ADDRS = JSON.stringify([
  { ifindex: 1, ifname: 'lo', addr_info: [
    { family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host', label: 'lo' },
    { family: 'inet', local: '10.123.0.1', prefixlen: 32, scope: 'global', label: 'lo' },
    { family: 'inet6', local: '::1', prefixlen: 128, scope: 'host' },
  ] },
  { ifindex: 2, ifname: 'eth0', addr_info: [
    { family: 'inet', local: '10.88.0.5', prefixlen: 24, broadcast: '10.88.0.255', scope: 'global', label: 'eth0' },
    { family: 'inet', local: '10.88.0.6', prefixlen: 24, scope: 'global', label: 'eth0:1' },
    { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
  ] },
  { ifindex: 3, ifname: 'dummy0' },
]);

const ROUTES4 = JSON.stringify([
  { dst: 'default', gateway: '10.88.0.1', dev: 'eth0', flags: [] },
  { dst: '10.88.0.0/24', dev: 'eth0', protocol: 'kernel', scope: 'link', prefsrc: '10.88.0.5', flags: [] },
  { dst: '10.124.0.0/24', dev: 'eth0', metric: 7, flags: [] },
  { type: 'blackhole', dst: '10.125.0.0/16', flags: [] },
  { dst: '10.126.0.0/16', gateway: '10.88.0.9', dev: 'eth0', table: '100', flags: [] },
  { type: 'local', dst: '127.0.0.1', dev: 'lo', table: 'local', protocol: 'kernel', scope: 'host', flags: [] },
  { type: 'broadcast', dst: '10.88.0.255', dev: 'eth0', table: 'local', protocol: 'kernel', scope: 'link', flags: [] },
]);

const ROUTES6 = JSON.stringify([
  { dst: 'fe80::/64', dev: 'eth0', protocol: 'kernel', metric: 256, flags: [] },
  { dst: 'fd00::/64', dev: 'eth0', metric: 1024, flags: [] },
  { type: 'local', dst: '::1', dev: 'lo', table: 'local', protocol: 'kernel', metric: 0, flags: [] },
]);

const config = (over: Partial<NetnsConfig> = {}): NetnsConfig => ({ format: 2, addresses: [], routes: [], nftables: [], ...over });
const WHAT = 'the saved configuration';

describe('netns configuration: parsing', () => {
  it("keeps every address but those the kernel makes (IPv6 link-local, loopback's own); labels only where they differ", () => {
    expect(parseAddresses(ADDRS)).toEqual([
      { dev: 'lo', family: 'inet', local: '10.123.0.1', prefixlen: 32, scope: 'global' },
      { dev: 'eth0', family: 'inet', local: '10.88.0.5', prefixlen: 24, scope: 'global', broadcast: '10.88.0.255' },
      { dev: 'eth0', family: 'inet', local: '10.88.0.6', prefixlen: 24, scope: 'global', label: 'eth0:1' },
    ]);
    expect(parseAddresses('')).toEqual([]);
  });

  it('keeps only routes someone added (not the kernel, not the local table)', () => {
    expect(parseRoutes(ROUTES4, 'inet')).toEqual([
      { family: 'inet', dst: 'default', gateway: '10.88.0.1', dev: 'eth0' },
      { family: 'inet', dst: '10.124.0.0/24', dev: 'eth0', metric: 7 },
      { family: 'inet', dst: '10.125.0.0/16', type: 'blackhole' },
      { family: 'inet', dst: '10.126.0.0/16', gateway: '10.88.0.9', dev: 'eth0', table: '100' },
    ]);
    expect(parseRoutes(ROUTES6, 'inet6')).toEqual([{ family: 'inet6', dst: 'fd00::/64', dev: 'eth0', metric: 1024 }]);
  });

  it('refuses output that is not JSON without quoting it, and carries odd shapes through for the schema to refuse', () => {
    expect(() => parseAddresses('root:x:0:0:secret')).toThrow(expect.objectContaining({ code: 'checkpoint_incompatible', message: expect.not.stringContaining('root') }));
    expect(parseAddresses(JSON.stringify({ not: 'an array' }))).toEqual([]);
    const odd = parseAddresses(JSON.stringify([{ ifname: 'lo', addr_info: [{ family: 'inet', local: 7, prefixlen: '8' }] }]));
    expect(() => parseNetnsConfig(config({ addresses: odd }), WHAT)).toThrow(/addresses\.0\.local: expected string/);
  });

  it("leaves out runbox's own address and default route, not a default route the job changed", () => {
    const c = config({ addresses: parseAddresses(ADDRS), routes: parseRoutes(ROUTES4, 'inet') });
    const own = withoutOwn(c, { address: '10.88.0.5', gateway: '10.88.0.1' });
    expect(own.addresses.map((a) => a.local)).toEqual(['10.123.0.1', '10.88.0.6']);
    expect(own.routes.map((r) => r.dst)).toEqual(['10.124.0.0/24', '10.125.0.0/16', '10.126.0.0/16']);
    const changed = withoutOwn({ ...c, routes: [{ family: 'inet', dst: 'default', gateway: '10.88.0.7', dev: 'eth0' }] }, { address: '10.88.0.5', gateway: '10.88.0.1' });
    expect(changed.routes).toHaveLength(1);
  });
});

describe('netns configuration: the schema', () => {
  const addr = { dev: 'eth0', family: 'inet', local: '10.1.2.3', prefixlen: 24 };
  const route = { family: 'inet', dst: '10.9.0.0/16', dev: 'eth0' };
  it('accepts what a job can legitimately make', () => {
    const ok = config({
      addresses: [
        { ...addr, scope: 'global', label: 'eth0:web', broadcast: '10.1.2.255' } as never,
        { dev: 'lo', family: 'inet6', local: 'fd00::1', prefixlen: 128, scope: 'host' },
        { dev: 'br-x.1_a', family: 'inet', local: '0.0.0.0', prefixlen: 0, scope: '200' },
      ],
      routes: [
        { family: 'inet', dst: 'default', gateway: '10.1.2.1', dev: 'eth0', table: '100', protocol: 'static', metric: 4294967295, scope: 'global', prefsrc: '10.1.2.3' },
        { family: 'inet', dst: '10.7.0.0/16', type: 'blackhole', protocol: '42' },
        { family: 'inet6', dst: 'fd01::/64', gateway: 'fd00::9', dev: 'eth0', table: 'default' },
        { family: 'inet', dst: '192.0.2.7', dev: 'lo', scope: 'link' },
      ],
    });
    expect(parseNetnsConfig(ok, WHAT)).toEqual(ok);
  });

  // [what, the bad entry, the path the message must name]
  const bad: Array<[string, Partial<NetnsConfig> | Record<string, unknown>, string]> = [
    ['a label with a newline (ip -batch injection)', { addresses: [{ ...addr, label: 'eth0\nnetns add x' }] }, 'addresses.0.label'],
    ['a label not starting with its device', { addresses: [{ ...addr, label: 'lo:1' }] }, 'addresses.0.label'],
    ['a label on an IPv6 address', { addresses: [{ ...addr, family: 'inet6', local: 'fd00::1', label: 'eth0:1' }] }, 'addresses.0.label'],
    ['a device name with a slash', { addresses: [{ ...addr, dev: '../../etc' }] }, 'addresses.0.dev'],
    ['a device name ..', { addresses: [{ ...addr, dev: '..' }] }, 'addresses.0.dev'],
    ['a 16-character device name', { addresses: [{ ...addr, dev: 'a'.repeat(16) }] }, 'addresses.0.dev'],
    ['a device name with a space', { routes: [{ ...route, dev: 'eth0 dev lo' }] }, 'routes.0.dev'],
    ['an address of the wrong family', { addresses: [{ ...addr, local: 'fd00::1' }] }, 'addresses.0.local'],
    ['an address that is a keyword', { addresses: [{ ...addr, local: 'help' }] }, 'addresses.0.local'],
    ['a prefix length beyond the family', { addresses: [{ ...addr, prefixlen: 33 }] }, 'addresses.0.prefixlen'],
    ['a fractional prefix length', { addresses: [{ ...addr, prefixlen: 8.5 }] }, 'addresses.0.prefixlen'],
    ['an unknown scope', { addresses: [{ ...addr, scope: 'global\nnetns add x' }] }, 'addresses.0.scope'],
    ['a scope number beyond 255', { addresses: [{ ...addr, scope: '256' }] }, 'addresses.0.scope'],
    ['an IPv6 broadcast', { addresses: [{ ...addr, broadcast: 'fd00::ff' }] }, 'addresses.0.broadcast'],
    ['an unknown address field', { addresses: [{ ...addr, peer: '10.0.0.1' }] }, 'addresses.0'],
    ['a destination with text after it', { routes: [{ ...route, dst: '10.0.0.0/8 via 1.2.3.4' }] }, 'routes.0.dst'],
    ['a destination length beyond the family', { routes: [{ ...route, dst: '10.0.0.0/40' }] }, 'routes.0.dst'],
    ['a gateway of the other family', { routes: [{ ...route, gateway: 'fd00::1' }] }, 'routes.0.gateway'],
    ['a named table other than main/default', { routes: [{ ...route, table: 'local' }] }, 'routes.0.table'],
    ['a table beyond 32 bits', { routes: [{ ...route, table: '4294967296' }] }, 'routes.0.table'],
    ['an unknown protocol', { routes: [{ ...route, protocol: 'kernel' }] }, 'routes.0.protocol'],
    ['a negative metric', { routes: [{ ...route, metric: -1 }] }, 'routes.0.metric'],
    ['a metric beyond 32 bits', { routes: [{ ...route, metric: 2 ** 32 }] }, 'routes.0.metric'],
    ['a route type that makes no route', { routes: [{ ...route, type: 'nat' }] }, 'routes.0.type'],
    ['too many addresses', { addresses: Array.from({ length: 257 }, () => addr) }, 'addresses'],
    ['an unknown top-level field', { extra: 1 }, '(top level)'],
    ['another format', { format: 3 }, 'format'],
  ];
  it.each(bad)('refuses %s, naming the field and never echoing the value', (_what, over, at) => {
    let err: unknown;
    try {
      parseNetnsConfig({ ...config(), ...over }, WHAT);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'checkpoint_incompatible' });
    const message = (err as Error).message;
    expect(message).toContain(`${WHAT} is invalid at ${at}`);
    expect(message).not.toMatch(/netns add|\.\.\/|via 1\.2|peer|extra/);
    expect(message.length).toBeLessThan(300);
  });

  it('refuses the text format of older runbox versions with a message saying so, unless it carries nothing', () => {
    expect(() => parseNetnsConfig({ addresses: [], routes: [], nftRuleset: 'table inet x {}' }, WHAT)).toThrow(/older runbox/);
    expect(() => parseNetnsConfig({ addresses: [{ dev: 'lo', family: 'inet', local: '10.1.1.1', prefixlen: 32 }], routes: [], nftRuleset: '' }, WHAT)).toThrow(/older runbox/);
    expect(() => parseNetnsConfig({ addresses: [], routes: [], nftRuleset: '', extra: 1 }, WHAT)).toThrow(/older runbox/);
    expect(() => parseNetnsConfig({ addresses: [], routes: [] }, WHAT)).toThrow(/older runbox/);
    // What an older runbox wrote for a VPS whose root changed nothing: a rolling upgrade still moves it.
    expect(parseNetnsConfig({ addresses: [], routes: [], nftRuleset: '' }, WHAT)).toEqual(config());
  });

  it('names only plain path segments (a hostile key is never echoed)', () => {
    expect(issuePath(['routes', 3, 'gateway'])).toBe('routes.3.gateway');
    expect(issuePath(['nftables', 0, 'rule', '"; include "/etc/shadow'])).toBe('nftables.0.rule.?');
    expect(issuePath([])).toBe('(top level)');
  });
});

describe('netns configuration: replay', () => {
  const saved = config({
    addresses: [
      ...parseAddresses(ADDRS),
      { dev: 'dummy0', family: 'inet', local: '192.0.2.1', prefixlen: 24, scope: 'global' },
    ],
    routes: [...parseRoutes(ROUTES4, 'inet'), ...parseRoutes(ROUTES6, 'inet6'), { family: 'inet', dst: '198.51.100.0/24', dev: 'dummy0' }],
  });

  it('turns the saved state into one idempotent ip argv per entry, addresses before routes', () => {
    const plan = replayCommands('rbX-vps1', saved, new Set(['lo', 'eth0']));
    const ip4 = ['ip', '-n', 'rbX-vps1', '-4'];
    expect(plan.commands.map((c) => c.argv)).toEqual([
      [...ip4, 'addr', 'replace', '10.123.0.1/32', 'dev', 'lo', 'scope', 'global'],
      [...ip4, 'addr', 'replace', '10.88.0.5/24', 'dev', 'eth0', 'scope', 'global', 'broadcast', '10.88.0.255'],
      [...ip4, 'addr', 'replace', '10.88.0.6/24', 'dev', 'eth0', 'scope', 'global', 'label', 'eth0:1'],
      [...ip4, 'route', 'replace', 'default', 'via', '10.88.0.1', 'dev', 'eth0'],
      [...ip4, 'route', 'replace', '10.124.0.0/24', 'dev', 'eth0', 'metric', '7'],
      [...ip4, 'route', 'replace', 'blackhole', '10.125.0.0/16'],
      [...ip4, 'route', 'replace', '10.126.0.0/16', 'via', '10.88.0.9', 'dev', 'eth0', 'table', '100'],
      ['ip', '-n', 'rbX-vps1', '-6', 'route', 'replace', 'fd00::/64', 'dev', 'eth0', 'metric', '1024'],
    ]);
    expect(plan.commands[2]!.what).toBe('address 10.88.0.6/24 on eth0');
  });

  it('reports what belongs to links that do not exist in the new netns instead of failing on it', () => {
    expect(replayCommands('n', saved, new Set(['lo', 'eth0'])).skipped).toEqual(['address 192.0.2.1/24 on dummy0', 'route 198.51.100.0/24 on dummy0']);
  });

  it('plans nothing for an empty configuration', () => {
    expect(replayCommands('n', config(), new Set(['lo']))).toEqual({ commands: [], skipped: [] });
  });
});

// As `nft -j list ruleset` (nftables 1.0.6) prints them.
const meta = { metainfo: { version: '1.0.6', release_name: 'Lester Gooch #5', json_schema_version: 1 } };
const jobItems: NftItem[] = [
  { table: { family: 'inet', name: 'jobfw', handle: 1 } },
  { set: { family: 'inet', name: 'blocked', table: 'jobfw', type: 'ipv4_addr', handle: 2, flags: ['interval'], elem: [{ prefix: { addr: '10.0.0.0', len: 8 } }, '192.168.1.1'] } },
  { chain: { family: 'inet', table: 'jobfw', name: 'input', handle: 1, type: 'filter', hook: 'input', prio: 0, policy: 'accept' } },
  { rule: { family: 'inet', table: 'jobfw', chain: 'input', handle: 3, comment: 'a "quoted" }\n{ brace', expr: [{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 7777 } }, { drop: null }] } },
];
const criuNft: NftItem[] = [
  { table: { family: 'inet', name: 'CRIU-a113d22f-ad49-46fe-a424-007e89cb7767', handle: 3 } },
  { chain: { family: 'inet', table: 'CRIU-a113d22f-ad49-46fe-a424-007e89cb7767', name: 'output', handle: 1, type: 'filter', hook: 'output', prio: 0, policy: 'drop' } },
  { rule: { family: 'inet', table: 'CRIU-a113d22f-ad49-46fe-a424-007e89cb7767', chain: 'output', handle: 2, expr: [{ match: { op: '==', left: { meta: { key: 'mark' } }, right: 49428 } }, { accept: null }] } },
];
const criuIptables: NftItem[] = [
  { table: { family: 'ip', name: 'filter', handle: 2 } },
  { chain: { family: 'ip', table: 'filter', name: 'CRIU', handle: 1 } },
  { chain: { family: 'ip', table: 'filter', name: 'INPUT', handle: 2, type: 'filter', hook: 'input', prio: 0, policy: 'accept' } },
  { rule: { family: 'ip', table: 'filter', chain: 'CRIU', handle: 3, expr: [{ drop: null }] } },
  { rule: { family: 'ip', table: 'filter', chain: 'INPUT', handle: 5, expr: [{ counter: { packets: 0, bytes: 0 } }, { jump: { target: 'CRIU' } }] } },
  { rule: { family: 'ip', table: 'filter', chain: 'INPUT', handle: 6, expr: [{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 22 } }, { drop: null }] } },
];
const noHandles = (items: NftItem[]) => items.map((i) => Object.fromEntries(Object.entries(i).map(([k, { handle: _h, ...o }]) => [k, o])));

describe('nftables as JSON: CRIU lock, checks, replay document', () => {
  it("drops the table CRIU makes with nftables locking and CRIU's chain and jumps of iptables locking; keeps the job's; drops handles", () => {
    expect(withoutCriuLock([...jobItems, ...criuNft])).toEqual(noHandles(jobItems));
    expect(withoutCriuLock(criuIptables)).toEqual(noHandles([criuIptables[0]!, criuIptables[2]!, criuIptables[5]!]));
    expect(withoutCriuLock([])).toEqual([]);
  });

  it('parses a listing (metainfo left out), and refuses text that is not a JSON ruleset without quoting it', () => {
    expect(parseRuleset(JSON.stringify({ nftables: [meta, ...jobItems, ...criuNft] }))).toEqual(noHandles(jobItems));
    expect(parseRuleset('')).toEqual([]);
    expect(() => parseRuleset('table inet x { chain y { comment "secret-host-content" } }')).toThrow(expect.objectContaining({ code: 'checkpoint_incompatible', message: expect.not.stringContaining('secret') }));
  });

  const nft = (items: unknown[]) => () => parseNetnsConfig(config({ nftables: items as NftItem[] }), WHAT);
  it.each([
    ['an unknown kind', [{ include: { path: '/etc/shadow' } }], 'nftables.0: an nftables object of a known kind'],
    ['a command instead of a list object', [{ add: { table: { family: 'inet', name: 'x' } } }], 'nftables.0'],
    ['two kinds in one object', [{ table: { family: 'inet', name: 'x' }, chain: {} }], 'nftables.0'],
    ['an unknown family', [{ table: { family: 'inet6', name: 'x' } }], 'nftables.0.table.family'],
    ['a name with a newline', [{ table: { family: 'inet', name: 'x\ninclude' } }], 'nftables.0.table.name'],
    ['a comment over 128 bytes', [{ table: { family: 'inet', name: 'x', comment: 'é'.repeat(65) } }], 'nftables.0.table.comment'],
    ['deep nesting', [{ rule: { family: 'inet', table: 'x', chain: 'y', expr: [JSON.parse('{"a":'.repeat(40) + '1' + '}'.repeat(40))] } }], 'nftables.0.rule.expr.0'],
    ['a huge string', [{ rule: { family: 'inet', table: 'x', chain: 'y', expr: [{ s: 'x'.repeat(2000) }] } }], 'nftables.0.rule.expr.0.s'],
    ['a ruleset over 256 KiB', Array.from({ length: 300 }, (_, i) => ({ rule: { family: 'inet', table: 'x', chain: 'y', comment: 'c', expr: [{ s: 'x'.repeat(1000), i }] } })), 'nftables: a ruleset of at most 256 KiB'],
  ])('refuses %s', (_what, items, at) => {
    expect(nft(items)).toThrow(expect.objectContaining({ code: 'checkpoint_incompatible', message: expect.stringContaining(`is invalid at ${at}`) }));
    expect(nft(items)).not.toThrow(/shadow|include|éé/);
  });

  it('accepts comments with quotes, newlines and braces, and replays as flush + add of each object, as JSON', () => {
    const items = noHandles(jobItems) as NftItem[];
    expect(parseNetnsConfig(config({ nftables: items }), WHAT).nftables).toEqual(items);
    const doc = JSON.parse(replayDocument(items)) as { nftables: unknown[] };
    expect(doc.nftables).toEqual([{ metainfo: { json_schema_version: 1 } }, { flush: { ruleset: null } }, ...items.map((i) => ({ add: i }))]);
  });
});
