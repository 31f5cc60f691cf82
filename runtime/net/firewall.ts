import { RunboxError } from '../../core/errors.js';
import { intToIp, ipToInt } from './addr.js';

/**
 * The host-side nftables rules of one runbox instance, as `nft -f` scripts (pure, tested).
 *
 * - bridge table: every frame a VPS sends into the bridge must carry its own address. Its port
 *   (the host end of its veth, named `<portPrefix><hash>`) is pinned to one MAC and one IPv4
 *   address (set @pins): IPv4 with another source, ARP with another sender, IPv6 and everything
 *   else is dropped. So no VPS can send as another one (an egress one, say), whatever it does
 *   inside (raw sockets, a stolen address, ARP spoofing). Ports of this instance are recognised by
 *   name, so a port whose pin is missing is closed, not open.
 * - input: nothing from the VPS bridge reaches host services (Redis, the API, sshd, ...) on any
 *   host address; only replies to connections the host opened are accepted.
 * - forward: only VPSs in "egress" mode (@egress, trustworthy thanks to the pins) leave, through any
 *   interface but a runbox bridge, and not to other runbox hosts (@peer_hosts, always), nor to
 *   private, link-local (cloud metadata), loopback, multicast or reserved ranges and the VPS range
 *   (@egress_deny) unless RUNBOX_EGRESS_ALLOW lists the destination (@egress_allow). DNS to the
 *   host's nameservers (@nameservers) stays open even when they are private.
 * - VPS to VPS on the same bridge never passes here (it is switched at layer 2): the bridge ports
 *   are "isolated", which the kernel enforces in the bridge itself.
 * - postrouting: egress traffic is masqueraded behind the host's uplink address.
 */

/**
 * Destinations an egress VPS may not reach unless RUNBOX_EGRESS_ALLOW lists them (the VPS range
 * and other runbox hosts are added per instance). IANA's special-purpose ranges that matter here:
 * nothing in them is "the internet", and cloud control planes live in them.
 */
export const EGRESS_DENY: readonly string[] = [
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // RFC 1918
  '100.64.0.0/10', // shared address space (CGNAT; also cloud-internal services, e.g. 100.100.100.200)
  '127.0.0.0/8', // loopback
  '168.63.129.16/32', // Azure's platform endpoint (WireServer, metadata)
  '169.254.0.0/16', // link-local: cloud metadata at 169.254.169.254
  '172.16.0.0/12', // RFC 1918
  '192.0.0.0/24', // IETF protocol assignments
  '192.168.0.0/16', // RFC 1918
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, and the limited broadcast address
];

export interface FirewallSpec {
  table: string;
  bridge: string;
  /** Name prefix of this instance's bridge ports (host ends of VPS veths); no other interface may start with it. */
  portPrefix: string;
  /** The instance's VPS range. */
  cidr: string;
  /** RUNBOX_EGRESS_ALLOW: CIDRs (or addresses) egress VPSs may reach although @egress_deny covers them. */
  egressAllow?: readonly string[];
  /** The host's IPv4 nameservers (port 53 stays open to them). */
  nameservers?: readonly string[];
}

/**
 * Converges the instance's tables to the current rules in one atomic `nft -f` script: tables,
 * sets and chains are added if missing, chains are refilled, the configuration-driven sets
 * (deny, allow, nameservers) are refilled; the per-VPS sets (@pins, @egress) and @peer_hosts keep
 * their elements, so another process of the same instance (a `runbox run` beside the worker)
 * never loses its VPSs' network. `recreate` first deletes both tables (a table of an incompatible
 * older layout, which the converge script cannot change).
 */
export function firewallScript(s: FirewallSpec, o: { recreate?: boolean } = {}): string {
  const t = name(s.table);
  const br = ifname(s.bridge);
  const prefix = ifname(s.portPrefix);
  const deny = [...EGRESS_DENY, s.cidr].map(cidr);
  const allow = (s.egressAllow ?? []).map(cidr);
  const ns = [...new Set((s.nameservers ?? []).map(ipv4))];
  const lines = [
    ...(o.recreate ? [`table inet ${t}`, `delete table inet ${t}`, `table bridge ${t}`, `delete table bridge ${t}`] : []),
    `add table inet ${t}`,
    `add set inet ${t} egress { type ipv4_addr; }`,
    `add set inet ${t} peer_hosts { type ipv4_addr; flags interval; auto-merge; }`,
    `add set inet ${t} nameservers { type ipv4_addr; }`,
    `add set inet ${t} egress_allow { type ipv4_addr; flags interval; auto-merge; }`,
    `add set inet ${t} egress_deny { type ipv4_addr; flags interval; auto-merge; }`,
    ...refill('inet', t, 'nameservers', ns),
    ...refill('inet', t, 'egress_allow', allow),
    ...refill('inet', t, 'egress_deny', deny),
    `add chain inet ${t} input { type filter hook input priority -10; policy accept; }`,
    `add chain inet ${t} forward { type filter hook forward priority -10; policy accept; }`,
    `add chain inet ${t} from_vps`,
    `add chain inet ${t} postrouting { type nat hook postrouting priority 100; policy accept; }`,
    ...['input', 'forward', 'from_vps', 'postrouting'].map((c) => `flush chain inet ${t} ${c}`),
    `add rule inet ${t} input iifname "${br}" ct state established,related accept`,
    `add rule inet ${t} input iifname "${br}" drop`,
    `add rule inet ${t} forward oifname "${br}" ct state established,related accept`,
    `add rule inet ${t} forward oifname "${br}" drop`,
    `add rule inet ${t} forward iifname "${br}" jump from_vps`,
    `add rule inet ${t} from_vps meta nfproto != ipv4 drop`,
    `add rule inet ${t} from_vps oifname "rbb*" drop`,
    `add rule inet ${t} from_vps ip saddr != @egress drop`,
    `add rule inet ${t} from_vps ip daddr @peer_hosts drop`,
    `add rule inet ${t} from_vps ip daddr @nameservers udp dport 53 accept`,
    `add rule inet ${t} from_vps ip daddr @nameservers tcp dport 53 accept`,
    `add rule inet ${t} from_vps ip daddr @egress_allow accept`,
    `add rule inet ${t} from_vps ip daddr @egress_deny drop`,
    `add rule inet ${t} from_vps accept`,
    `add rule inet ${t} postrouting ip saddr @egress oifname != "${br}" masquerade`,
    `add table bridge ${t}`,
    `add set bridge ${t} pins { type ifname . ether_addr . ipv4_addr; }`,
    `add chain bridge ${t} prerouting { type filter hook prerouting priority -200; policy accept; }`,
    `add chain bridge ${t} from_vps`,
    `flush chain bridge ${t} prerouting`,
    `flush chain bridge ${t} from_vps`,
    `add rule bridge ${t} prerouting iifname "${prefix}*" jump from_vps`,
    `add rule bridge ${t} from_vps ether type ip iifname . ether saddr . ip saddr @pins accept`,
    // ARP: the frame's source and the ARP sender (MAC and IP) must all be the port's.
    `add rule bridge ${t} from_vps ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ip @pins iifname . arp saddr ether . arp saddr ip @pins accept`,
    `add rule bridge ${t} from_vps drop`,
  ];
  return `${lines.join('\n')}\n`;
}

/** One VPS's port pin: its bridge port (host veth end), its MAC and its address. */
export interface VpsPin {
  veth: string;
  mac: string;
  address: string;
}

/**
 * The elements of one VPS, added (setup) or removed (teardown) in a single `nft -f` script. Both
 * never fail on a missing or present element: a delete is preceded by an add of the same element
 * (an idempotent delete in one transaction). A private VPS also clears @egress of its address, so
 * an element left by a crashed process can never give it egress. `nameservers` refills that set
 * too (the host's resolver configuration changed since the last VPS).
 */
export function vpsElementsScript(table: string, pin: VpsPin, o: { egress: boolean; remove?: boolean; nameservers?: readonly string[] }): string {
  const t = name(table);
  const p = `{ "${ifname(pin.veth)}" . ${mac(pin.mac)} . ${ipv4(pin.address)} }`;
  const a = `{ ${ipv4(pin.address)} }`;
  const gone = (family: string, set: string, el: string) => [`add element ${family} ${t} ${set} ${el}`, `delete element ${family} ${t} ${set} ${el}`];
  const lines = o.remove
    ? [...gone('inet', 'egress', a), ...gone('bridge', 'pins', p)]
    : [
        `add element bridge ${t} pins ${p}`,
        ...(o.egress ? [`add element inet ${t} egress ${a}`] : gone('inet', 'egress', a)),
        ...(o.nameservers ? refill('inet', t, 'nameservers', [...new Set(o.nameservers.map(ipv4))]) : []),
      ];
  return `${lines.join('\n')}\n`;
}

/**
 * Replaces the set of other runbox hosts' addresses (egress VPSs never reach them, whatever
 * RUNBOX_EGRESS_ALLOW says): one atomic script. IPv4 addresses or CIDRs.
 */
export function peerHostsScript(table: string, peers: readonly string[]): string {
  return `${refill('inet', name(table), 'peer_hosts', [...new Set(peers.map(cidr))]).join('\n')}\n`;
}

/** A VPS's MAC, derived from its address: the same on every host it moves to. Locally administered. */
export function vpsMac(address: string): string {
  const n = ipToInt(address);
  return ['02', '72', n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].map((b) => (typeof b === 'string' ? b : b.toString(16).padStart(2, '0'))).join(':');
}

function refill(family: string, table: string, set: string, elements: readonly string[]): string[] {
  return [`flush set ${family} ${table} ${set}`, ...(elements.length ? [`add element ${family} ${table} ${set} { ${elements.join(', ')} }`] : [])];
}

// Everything interpolated into a script passes one of these: nothing from outside can add syntax.
function name(s: string): string {
  if (!/^[A-Za-z0-9_]{1,64}$/.test(s)) throw new RunboxError('invalid_argument', `invalid nftables name "${s}"`);
  return s;
}

function ifname(s: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(s)) throw new RunboxError('invalid_argument', `invalid interface name "${s}"`);
  return s;
}

function mac(s: string): string {
  if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(s)) throw new RunboxError('invalid_argument', `invalid MAC address "${s}"`);
  return s;
}

function ipv4(s: string): string {
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(s)) throw new RunboxError('invalid_argument', `invalid IPv4 address "${s}"`);
  return intToIp(ipToInt(s));
}

/** An IPv4 address or CIDR, normalised to `base/prefix` (host bits cleared; nft refuses them). */
export function cidr(s: string): string {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(s.trim());
  const prefix = m ? Number(m[2] ?? 32) : NaN;
  if (!m || prefix > 32) throw new RunboxError('invalid_argument', `invalid IPv4 CIDR "${s}" (expected a.b.c.d or a.b.c.d/n)`);
  const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0;
  return `${intToIp((ipToInt(m[1]!) & mask) >>> 0)}/${prefix}`;
}

/**
 * The table that closes ports to all but named peers (`nft -f` script, replaces the table). Used for
 * CRIU's page server (post-copy), which serves a frozen VPS's memory to whoever connects first and
 * has no authentication of its own: only the move's target (and this host) may connect. Elements
 * carry a timeout, so a guard whose owner died expires on its own.
 */
export function portGuardScript(table: string): string {
  return `table inet ${table}
delete table inet ${table}
table inet ${table} {
  set ports {
    type inet_service
    flags timeout
  }
  set peers {
    type ipv4_addr . inet_service
    flags timeout
  }
  chain input {
    type filter hook input priority -20; policy accept;
    tcp dport @ports ip saddr . tcp dport @peers accept
    tcp dport @ports reject with tcp reset
  }
}
`;
}

/** Adds (or with `remove`, deletes) one guarded port and its peers: a single atomic `nft -f` script. */
export function portGuardElements(table: string, port: number, peers: readonly string[], o: { remove?: boolean; timeoutSec?: number } = {}): string {
  const timeout = o.remove ? '' : ` timeout ${o.timeoutSec ?? 900}s`;
  const verb = o.remove ? 'delete' : 'add';
  const pairs = [...new Set(peers)].map((p) => `${p} . ${port}${timeout}`).join(', ');
  // Peers before the port: from the moment the port is in @ports, only they get through.
  const lines = [`${verb} element inet ${table} peers { ${pairs} }`, `${verb} element inet ${table} ports { ${port}${timeout} }`];
  return `${(o.remove ? lines.reverse() : lines).join('\n')}\n`;
}
