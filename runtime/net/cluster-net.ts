import fs from 'node:fs/promises';
import { exec, execOk } from '../exec.js';
import { parseCidr, vpsAddress, gateway } from './addr.js';

/**
 * The network of a development cluster on one machine (`runbox cluster up`): a bridge on the host
 * and, per simulated host, a network namespace with a veth to that bridge and its own address.
 * Workers run inside those namespaces, so traffic between "hosts" is real TCP between addresses.
 * Their traffic to anything else is masqueraded behind this machine (clusterNatScript).
 */
export interface ClusterHostNet {
  index: number;
  netns: string;
  address: string;
}

export function clusterNames(instance: string) {
  return {
    bridge: `rbc${instance}`,
    table: `runbox_cluster_${instance}`,
    netns: (i: number) => `rbc${instance}-h${i}`,
    veth: (i: number) => `rbc${instance}h${i}`.slice(0, 15),
  };
}

/**
 * The cluster's way out (`nft -f` script, replaces the table): its hosts reach beyond this machine
 * as real hosts would (a host builds a template from the Debian mirror of this machine's apt
 * configuration), masqueraded behind this machine's own address; nothing comes in unasked.
 */
export function clusterNatScript(table: string, bridge: string, cidr: string): string {
  return `table ip ${table}
delete table ip ${table}
table ip ${table} {
  chain forward {
    type filter hook forward priority -5; policy accept;
    iifname "${bridge}" oifname != "${bridge}" accept
    oifname "${bridge}" iifname != "${bridge}" ct state established,related accept
    oifname "${bridge}" iifname != "${bridge}" drop
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    ip saddr ${cidr} oifname != "${bridge}" masquerade
  }
}
`;
}

export async function createClusterNet(instance: string, cidrText: string, hosts: number): Promise<ClusterHostNet[]> {
  const cidr = parseCidr(cidrText);
  const n = clusterNames(instance);
  if ((await exec(['ip', 'link', 'show', n.bridge])).code !== 0) {
    await execOk(['ip', 'link', 'add', n.bridge, 'type', 'bridge']);
    await execOk(['ip', 'addr', 'add', `${gateway(cidr)}/${cidr.prefix}`, 'dev', n.bridge]);
    await execOk(['ip', 'link', 'set', n.bridge, 'up']);
  }
  await fs.writeFile('/proc/sys/net/ipv4/ip_forward', '1');
  await execOk(['nft', '-f', '-'], { input: clusterNatScript(n.table, n.bridge, cidrText) });
  const out: ClusterHostNet[] = [];
  for (let i = 1; i <= hosts; i++) {
    const netns = n.netns(i);
    const address = vpsAddress(cidr, i - 1);
    await exec(['ip', 'netns', 'del', netns]);
    await exec(['ip', 'link', 'del', n.veth(i)]);
    await execOk(['ip', 'netns', 'add', netns]);
    await execOk(['ip', '-n', netns, '-batch', '-'], {
      input: [
        'link set lo up',
        `link add eth0 type veth peer name ${n.veth(i)} netns 1`,
        `addr add ${address}/${cidr.prefix} dev eth0`,
        'link set eth0 up',
        `route add default via ${gateway(cidr)}`,
      ].join('\n'),
    });
    await execOk(['ip', 'link', 'set', n.veth(i), 'master', n.bridge, 'up']);
    out.push({ index: i, netns, address });
  }
  return out;
}

export async function removeClusterNet(instance: string, hosts: number): Promise<void> {
  const n = clusterNames(instance);
  for (let i = 1; i <= hosts; i++) {
    await exec(['ip', 'link', 'del', n.veth(i)]);
    await exec(['ip', 'netns', 'del', n.netns(i)]);
  }
  await exec(['ip', 'link', 'del', n.bridge]);
  await exec(['nft', 'delete', 'table', 'ip', n.table]);
}
