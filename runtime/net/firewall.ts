/**
 * The host-side nftables ruleset of one runbox instance, as an `nft -f` script (pure, tested).
 *
 * - input: nothing from the VPS bridge reaches host services (Redis, the API, sshd, ...) on any
 *   host address; only replies to connections the host opened are accepted.
 * - forward: VPSs in "egress" mode (their addresses are in the @egress set) may go out through
 *   any interface other than a runbox bridge; everything else from the bridge is dropped, so
 *   "private" VPSs reach nothing, and no VPS reaches another instance's VPSs.
 * - VPS to VPS on the same bridge never passes here (it is switched at layer 2): the bridge ports
 *   are "isolated", which the kernel enforces in the bridge itself.
 * - postrouting: egress traffic is masqueraded behind the host's uplink address.
 */
export function firewallScript(table: string, bridge: string, cidr: string): string {
  return `table inet ${table}
delete table inet ${table}
table inet ${table} {
  set egress {
    type ipv4_addr
  }
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "${bridge}" ct state established,related accept
    iifname "${bridge}" drop
  }
  chain forward {
    type filter hook forward priority -10; policy accept;
    oifname "${bridge}" ct state established,related accept
    oifname "${bridge}" drop
    iifname "${bridge}" oifname "rbb*" drop
    iifname "${bridge}" ip saddr @egress ip daddr != ${cidr} accept
    iifname "${bridge}" drop
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    ip saddr @egress oifname != "${bridge}" masquerade
  }
}
`;
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
