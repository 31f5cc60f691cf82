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
