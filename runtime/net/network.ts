import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { exec, execOk } from '../exec.js';
import { errnoCode, netnsAdd, netnsAttach, netnsDel } from '../native/sys.js';
import { RunboxError } from '../../core/errors.js';
import { gateway, ipToInt, parseCidr, poolSize, vpsAddress, type Cidr } from './addr.js';
import { firewallScript, peerHostsScript, portGuardElements, portGuardScript, vpsElementsScript, vpsMac } from './firewall.js';
import { hostNameservers } from './dns.js';

export type NetworkMode = 'none' | 'private' | 'egress';

export interface VpsNetwork {
  mode: NetworkMode;
  /**
   * Named netns (under /run/netns), made by us in every mode, none included: runc then hands it to
   * CRIU as an external namespace, so a checkpoint restores into a netns we prepared (loopback up).
   * A netns made by runc comes back from a restore with loopback down, and CRIU cannot reconnect
   * the VPS's TCP sockets ("Can't connect inet socket back: Network is unreachable").
   */
  netns?: string;
  hostVeth?: string;
  address?: string;
  /** The VPS's MAC (derived from its address; its bridge port is pinned to it). */
  mac?: string;
  gateway?: string;
  prefix?: number;
}

export interface HostNetworkOptions {
  /** RUNBOX_EGRESS_ALLOW: CIDRs egress VPSs may reach although they are private or reserved. */
  egressAllow?: readonly string[];
  /** Port-53 destinations of egress VPSs; default: the host's nameservers (dns.ts), re-read per egress VPS. */
  nameservers?: readonly string[];
}

/**
 * Networking of one runbox instance: a bridge, an address pool, firewall tables, and per VPS a
 * named network namespace with a veth pair whose bridge port is pinned to the VPS's address.
 * Everything is named after the instance id so that several instances (state dirs) on one
 * machine never touch each other's objects.
 */
export class HostNetwork {
  readonly bridge: string;
  /** The inet and bridge tables (firewall.ts). */
  readonly table: string;
  /** The table of guarded ports (see guardPort). */
  readonly guardTable: string;
  /** Every bridge port of this instance starts with it (the bridge table filters by it). */
  readonly portPrefix: string;
  private readonly cidr: Cidr;
  private ensured?: Promise<void>;
  private guardReady?: Promise<void>;
  /** What @nameservers holds, as this process last wrote it. */
  private nameservers: string[] = [];
  private peers?: string;

  constructor(
    readonly instance: string,
    readonly cidrText: string,
    private readonly addrDir: string,
    private readonly opts: HostNetworkOptions = {},
  ) {
    this.cidr = parseCidr(cidrText);
    this.bridge = `rbb${instance}`;
    this.table = `runbox_${instance}`;
    this.guardTable = `runbox_${instance}_guard`;
    this.portPrefix = `rv${instance}`;
  }

  /**
   * Until the returned undo, only `peers` may open TCP connections to `port` on this host (anyone
   * else gets a reset). IPv4 peers; the guard expires on its own after `timeoutSec` (its owner may
   * die). The table is made afresh by the first guard of a process (one worker per instance).
   */
  async guardPort(port: number, peers: readonly string[], timeoutSec = 900): Promise<() => Promise<void>> {
    this.guardReady ??= execOk(['nft', '-f', '-'], { input: portGuardScript(this.guardTable) }).then(() => undefined);
    await this.guardReady.catch((e: unknown) => {
      this.guardReady = undefined;
      throw e;
    });
    await execOk(['nft', '-f', '-'], { input: portGuardElements(this.guardTable, port, peers, { timeoutSec }) });
    return async () => {
      await exec(['nft', '-f', '-'], { input: portGuardElements(this.guardTable, port, peers, { remove: true }) });
    };
  }

  netnsName(vpsId: string): string {
    return `rb${this.instance}-${vpsId}`;
  }

  /**
   * The host end of a VPS's veth pair (15 characters at most): the instance's port prefix (the
   * bridge table pins every port that has it) and a hash of the VPS id. Two instances in one
   * network namespace (a move between them keeps the VPS id) never clash.
   */
  vethName(vpsId: string): string {
    return `${this.portPrefix}${createHash('sha256').update(`${this.instance}:${vpsId}`).digest('hex').slice(0, 15 - this.portPrefix.length)}`;
  }

  /** Bridge, forwarding and firewall: made once per process, idempotent, safe to race. */
  ensure(): Promise<void> {
    this.ensured ??= this.ensureNow().catch((e: unknown) => {
      this.ensured = undefined;
      throw e;
    });
    return this.ensured;
  }

  private async ensureNow(): Promise<void> {
    const link = await exec(['ip', 'link', 'show', this.bridge]);
    if (link.code !== 0) {
      const add = await exec(['ip', 'link', 'add', this.bridge, 'type', 'bridge']);
      if (add.code !== 0 && !/exists/i.test(add.stderr)) throw new RunboxError('internal', `cannot create bridge: ${add.stderr}`);
      await exec(['ip', 'addr', 'add', `${gateway(this.cidr)}/${this.cidr.prefix}`, 'dev', this.bridge]);
      await execOk(['ip', 'link', 'set', this.bridge, 'up']);
    }
    // Egress needs routing between the bridge and the uplink (as Docker and libvirt enable it).
    await fs.writeFile('/proc/sys/net/ipv4/ip_forward', '1');
    const nameservers = this.opts.nameservers ? [...this.opts.nameservers] : await hostNameservers();
    const spec = { table: this.table, bridge: this.bridge, portPrefix: this.portPrefix, cidr: this.cidrText, egressAllow: this.opts.egressAllow, nameservers };
    // Converged on every start (it keeps the VPSs' elements), so a changed RUNBOX_EGRESS_ALLOW or
    // a newer rule set applies at once; only a table whose sets changed type must be made anew.
    const converge = await exec(['nft', '-f', '-'], { input: firewallScript(spec) });
    if (converge.code !== 0) {
      await execOk(['nft', '-f', '-'], { input: firewallScript(spec, { recreate: true }) });
      this.peers = undefined;
    }
    this.nameservers = nameservers;
    await fs.mkdir(this.addrDir, { recursive: true });
  }

  /**
   * Replaces the addresses of the other runbox hosts (IPv4 addresses or CIDRs; IPv6 ones are
   * ignored, VPSs have no IPv6 path out): egress VPSs never reach them, whatever
   * RUNBOX_EGRESS_ALLOW says (their migration and page-server ports, their Redis). One atomic
   * `nft` run, skipped when the list did not change.
   */
  async setPeerHosts(addresses: readonly string[]): Promise<void> {
    const v4 = [...new Set(addresses.filter((a) => !a.includes(':')))].sort();
    const script = peerHostsScript(this.table, v4); // validates: throws invalid_argument on a bad address
    await this.ensure();
    if (this.peers === script) return;
    await execOk(['nft', '-f', '-'], { input: script });
    this.peers = script;
  }

  /** Reserves an address with an O_EXCL file per address: crash-safe and shared between processes. */
  private async allocate(vpsId: string, wanted?: string): Promise<string> {
    if (wanted) {
      // A VPS moved here keeps its address (its processes and sockets know it).
      if (!this.contains(wanted)) throw new RunboxError('checkpoint_incompatible', `address ${wanted} is outside this host's VPS range ${this.cidrText}`);
      try {
        await fs.writeFile(path.join(this.addrDir, wanted), vpsId, { flag: 'wx' });
        return wanted;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new RunboxError('conflict', `address ${wanted} is already used by another VPS on this host`);
        throw e;
      }
    }
    const size = poolSize(this.cidr);
    const start = Math.floor(Math.random() * size);
    for (let k = 0; k < size; k++) {
      const ip = vpsAddress(this.cidr, (start + k) % size);
      try {
        await fs.writeFile(path.join(this.addrDir, ip), vpsId, { flag: 'wx' });
        return ip;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    throw new RunboxError('unavailable', `no free address left in ${this.cidrText}`);
  }

  private contains(ip: string): boolean {
    const n = ipToInt(ip);
    return n > this.cidr.base + 1 && n < this.cidr.base + 2 + poolSize(this.cidr);
  }

  /**
   * The VPS's network: a netns of its own with a veth pair on the bridge, its address, the pins.
   * `restoring`: the VPS's processes come from a checkpoint, its agent does not start afresh.
   * A VPS in a user namespace (`userns`) has a netns its runtime made inside it (CRIU dumps a VPS
   * only with namespaces its user namespace owns): `attachPid` names the one that process is in
   * and links it up; without `attachPid` (a restore: CRIU makes the netns and its veth pair, see
   * criuVethOptions), only the host's side is made: the address lease and the pins, and
   * adoptRestored names the netns CRIU made.
   */
  async setup(vpsId: string, mode: NetworkMode, wantedAddress?: string, restoring = false, userns?: { attachPid?: number }): Promise<VpsNetwork> {
    if (mode === 'none') {
      const netns = this.netnsName(vpsId);
      if (userns) {
        if (userns.attachPid) await netnsAttach(netns, userns.attachPid);
        return { mode, netns };
      }
      // A fresh agent brings loopback up itself; a restored VPS's sockets need it up before CRIU
      // reconnects them.
      await netnsAdd(netns, { loopbackUp: restoring });
      return { mode, netns };
    }
    await this.ensure();
    const address = await this.allocate(vpsId, wantedAddress);
    const netns = this.netnsName(vpsId);
    const hostVeth = this.vethName(vpsId);
    const mac = vpsMac(address);
    const gw = gateway(this.cidr);
    const net: VpsNetwork = { mode, netns, hostVeth, address, mac, gateway: gw, prefix: this.cidr.prefix };
    try {
      const nameservers = mode === 'egress' ? await this.changedNameservers() : undefined;
      const elements = vpsElementsScript(this.table, { veth: hostVeth, mac, address }, { egress: mode === 'egress', nameservers });
      // The pin (one nft run, which egress VPSs always had) runs beside the ip commands: a port of
      // this instance without its pin drops every frame, so the order does not matter for safety.
      const done = await Promise.allSettled([
        execOk(['nft', '-f', '-'], { input: elements }),
        (async () => {
          if (userns && !userns.attachPid) return;
          if (userns?.attachPid) await netnsAttach(netns, userns.attachPid);
          else await netnsAdd(netns);
          // The VPS end is created inside the netns (with the MAC its port is pinned to) and the
          // host end moved to the network namespace this process runs in (by pid: a worker of
          // `runbox cluster` runs in a namespace of its own, not in PID 1's): one ip process per
          // side instead of one per command.
          await execOk(['ip', '-n', netns, '-batch', '-'], {
            input: [
              'link set lo up',
              // A userns VPS's pair is made again by CRIU from the host's netns: fixed high indexes.
              userns
                ? `link add eth0 address ${mac} index ${vethIndex(vpsId, 'vps')} type veth peer name ${hostVeth} index ${vethIndex(vpsId, 'host')} netns ${process.pid}`
                : `link add eth0 address ${mac} type veth peer name ${hostVeth} netns ${process.pid}`,
              `addr add ${address}/${this.cidr.prefix} dev eth0`,
              'link set eth0 up',
              `route add default via ${gw}`,
            ].join('\n'),
          });
          await execOk(['ip', '-batch', '-'], {
            input: [`link set ${hostVeth} master ${this.bridge} up`, `link set ${hostVeth} type bridge_slave isolated on`].join('\n'),
          });
        })(),
      ]);
      const failed = done.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      if (nameservers) this.nameservers = nameservers;
      return net;
    } catch (e) {
      await this.teardown(vpsId, net).catch(() => undefined);
      throw e;
    }
  }

  /**
   * A VPS in a user namespace has its network namespace made by the runtime and then by CRIU on a
   * restore, with its links: CRIU makes the veth pair again, the host end named and put on the
   * bridge by these CRIU options. The address lease and the firewall pins stay as they were.
   */
  criuVethOptions(net: VpsNetwork): string[] {
    return net.hostVeth ? [`veth-pair eth0=${net.hostVeth}`] : [];
  }

  /** Before CRIU makes a userns VPS's network again: its old namespace name and host link go (lease and pins stay). */
  async releaseForRestore(vpsId: string, net: VpsNetwork): Promise<void> {
    if (net.mode !== 'none') await exec(['ip', 'link', 'del', net.hostVeth ?? this.vethName(vpsId)]);
    await removeNetns(net.netns ?? this.netnsName(vpsId));
  }

  /** After CRIU made it again: the namespace named as before, the host link isolated on the bridge as setup() leaves it. */
  async adoptRestored(vpsId: string, net: VpsNetwork, pid: number): Promise<void> {
    await netnsAttach(net.netns ?? this.netnsName(vpsId), pid);
    if (net.mode === 'none') return;
    const hostVeth = net.hostVeth ?? this.vethName(vpsId);
    await execOk(['ip', '-batch', '-'], { input: [`link set ${hostVeth} master ${this.bridge} up`, `link set ${hostVeth} type bridge_slave isolated on`].join('\n') });
  }

  /** The host's nameservers when they differ from what @nameservers holds (then they are refilled with the VPS's elements). */
  private async changedNameservers(): Promise<string[] | undefined> {
    if (this.opts.nameservers) return undefined;
    const now = await hostNameservers();
    return now.join(',') === this.nameservers.join(',') ? undefined : now;
  }

  /** Idempotent. Deletes the veth explicitly: netns removal frees its devices only asynchronously. */
  async teardown(vpsId: string, net: VpsNetwork): Promise<void> {
    if (net.mode === 'none') {
      if (net.netns) await removeNetns(net.netns);
      return;
    }
    const veth = net.hostVeth ?? this.vethName(vpsId);
    // The pin and any egress element of the address go in one run (a no-op when absent).
    const unpin = net.address ? unpinScript(this.table, veth, net.address, net.mac) : undefined;
    await Promise.all([unpin && exec(['nft', '-f', '-'], { input: unpin }), exec(['ip', 'link', 'del', veth])]);
    await removeNetns(net.netns ?? this.netnsName(vpsId));
    if (net.address) await fs.rm(path.join(this.addrDir, net.address), { force: true });
  }

  /** Removes the bridge and the firewall tables (when the instance is shut down for good). */
  async removeAll(): Promise<void> {
    await exec(['nft', 'delete', 'table', 'inet', this.table]);
    await exec(['nft', 'delete', 'table', 'bridge', this.table]);
    await exec(['nft', 'delete', 'table', 'inet', this.guardTable]);
    this.guardReady = undefined;
    await exec(['ip', 'link', 'del', this.bridge]);
    await fs.rm(this.addrDir, { recursive: true, force: true });
    this.ensured = undefined;
    this.peers = undefined;
  }

  /** Netns names of this instance still present on the host (for gc). */
  async listNetns(): Promise<string[]> {
    const names = await fs.readdir('/run/netns').catch(() => [] as string[]);
    return names.filter((n) => n.startsWith(`rb${this.instance}-`));
  }

  /** Address files and the VPS ids holding them (for gc). */
  async listAllocations(): Promise<Array<{ address: string; vpsId: string }>> {
    const files = await fs.readdir(this.addrDir).catch(() => [] as string[]);
    return Promise.all(
      files.map(async (address) => ({ address, vpsId: (await fs.readFile(path.join(this.addrDir, address), 'utf8').catch(() => '')).trim() })),
    );
  }
}

/**
 * Interface indexes of a VPS's veth pair, high and spread (a hash of its id): CRIU restores a
 * userns VPS's veth pair from the host's network namespace with the indexes it had, and an index
 * the host already uses there makes the kernel take the request for a change of that device
 * (EOPNOTSUPP). The host numbers its own devices from 1 upwards.
 */
export function vethIndex(vpsId: string, end: 'vps' | 'host'): number {
  const h = createHash('sha256').update(`${end}\0${vpsId}`).digest();
  return 2 ** 30 + (h.readUInt32BE(0) % (2 ** 30 - 1));
}

/** Idempotent `ip netns del` (in this process): a netns already gone is fine. */
async function removeNetns(name: string): Promise<void> {
  await netnsDel(name).catch((e: unknown) => {
    if (errnoCode(e) !== 'ENOENT') throw e;
  });
}

/** The teardown script of a VPS's elements; undefined when its record holds nothing valid (never throws). */
function unpinScript(table: string, veth: string, address: string, mac?: string): string | undefined {
  try {
    return vpsElementsScript(table, { veth, mac: mac ?? vpsMac(address), address }, { egress: false, remove: true });
  } catch {
    return undefined;
  }
}

