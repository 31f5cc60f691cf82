import fs from 'node:fs/promises';
import fsSync, { existsSync } from 'node:fs';
import path from 'node:path';
import type { AgentChannel } from './agent/channel.js';
import { RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { MiB } from '../core/units.js';
import { VpsCgroup } from './cgroups/cgroup.js';
import { detectCgroupLayout, type CgroupLayout } from './cgroups/layout.js';
import { hasExited, isAlive, processStart, selfRef, type ProcessRef } from './host/proc.js';
import { Layout, VPS_ID } from './layout.js';
import { HostNetwork, type VpsNetwork } from './net/network.js';
import { removeVpsCgroup, transferDir } from './gc.js';
import { applyNetnsConfig } from './net/netns-config.js';
import { hostResolvConf } from './net/dns.js';
import { lazyCriuOptions, restoreArgs, runArgs, runcDelete, runcKill, type RuncGlobal } from './oci/runc.js';
import { DEFAULT_CRUN, resolveOciRuntime, type OciRuntimeChoice, type OciRuntimePreference } from './oci/runtime-choice.js';
import { execOk } from './exec.js';
import { buildSpec, STANDARD_DEVICES, SYS_DIRS_HIDDEN } from './oci/spec.js';
import { denyTunAfterStart } from './oci/devices.js';
import { RuncVps, startWithPipes, waitReady } from './runc-vps.js';
import { type GoldenContents, mountLayer, mountLayerImage, unmountLayer } from './storage/layer.js';
import { idmapProbe } from './native/sys.js';
import { prepareUsernsImages } from './userns/criu-image.js';
import { HOST_INOTIFY, userLimitsArgv, USERNS_LIMITS_HELPER, UsernsRanges, type UsernsLease } from './userns/ranges.js';
import { RUN_DIR } from './layout.js';
import { writeCriuConfig } from './checkpoint/criu-config.js';
import { seccompFilter } from './native/sys.js';
import { isFilterProgram, readCachedFilter, seccompCacheFile, seccompCacheKey, writeCachedFilter } from './oci/seccomp-bpf.js';
import { parseVpsRecord } from './vps-record.js';
import type { VpsEngine, VpsId, VpsSpec } from './vps.js';

export interface RuncEngineOptions {
  stateDir: string;
  templatesDir?: string;
  runcPath: string;
  /** crun's binary (default: the one scripts/setup.sh installs). */
  crunPath?: string;
  /** Which OCI runtime starts this engine's VPSs (oci/runtime-choice.ts); default auto. */
  runtime?: OciRuntimePreference;
  criuPath?: string;
  agentPath: string;
  netCidr: string;
  log: Logger;
  /** RUNBOX_EGRESS_ALLOW: CIDRs egress VPSs may reach although private/reserved (runtime/net/firewall.ts). */
  egressAllow?: readonly string[];
  /** RUNBOX_VPS_TUN: VPSs get /dev/net/tun and keep CAP_NET_ADMIN (default: neither). */
  vpsTun?: boolean;
  /** Port-53 destinations of egress VPSs (default: the host's nameservers; tests name their own). */
  nameservers?: readonly string[];
  /**
   * Who compiles the VPS seccomp profile: 'agent' (default) installs the program runc compiled for
   * an earlier VPS (oci/seccomp-bpf.ts), 'runc' makes runc compile it for every VPS (as before;
   * also what 'agent' falls back to when the program cannot be had).
   */
  seccomp?: 'agent' | 'runc';
  /**
   * RUNBOX_USERNS: each VPS in its own user namespace with its own host id range (runtime/userns/),
   * root inside an unprivileged host uid. auto (default): where the kernel has idmapped mounts;
   * on: a host without them fails VPS creation (host_unsupported); off: root inside is host root.
   */
  userns?: 'auto' | 'on' | 'off';
}

/** What vps.json records: enough to destroy (or, with a checkpoint, restore) the VPS later. */
export interface VpsRecord {
  id: VpsId;
  spec: VpsSpec;
  network: VpsNetwork;
  owner: ProcessRef;
  /** The container's init process on the host, once started. */
  init?: ProcessRef;
  /** Its user namespace's host id range (absent: no user namespace); given back at destroy or by gc. */
  userns?: UsernsLease;
  createdAt: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What a restore can have made before its checkpoint exists (see RuncEngine.prepareRestore). */
export interface RestorePlan {
  network: VpsSpec['network'];
  diskMb: number;
  address?: string;
}

interface PreparedRestore {
  plan: RestorePlan;
  record: VpsRecord;
}

/**
 * Waits for `p` at most `ms`, and clears the timer either way: a leftover timer would keep a CLI
 * process alive for no reason (an unref'd one would let it exit in the middle of an await).
 */
export async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/** The container's init as a ProcessRef, taken right after runc started it (so pid reuse is detected later). */
export async function readInitRef(pidFile: string): Promise<ProcessRef | undefined> {
  const pid = Number(await fs.readFile(pidFile, 'utf8').catch(() => ''));
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const start = processStart(pid);
  return start === undefined ? undefined : { pid, start };
}

async function waitGone(ref: ProcessRef, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!hasExited(ref) && Date.now() < deadline) await sleep(5);
}

/** Where a VPS restored from a checkpoint comes from. */
export interface RestoreSource {
  /** CRIU images. */
  imagesDir: string;
  /**
   * The VPS's disk image of the same instant (runtime/storage/layer.ts): `move` renames it into
   * the VPS (a received transfer), else it is copied (a checkpoint that must stay).
   */
  disk: { path: string; move: boolean };
  /** The VPS's address on its previous host (kept: its processes and sockets know it). */
  address?: string;
  /** Post-copy: the images have no memory pages; the `criu lazy-pages` daemon with this work dir serves them. */
  lazyPagesWorkDir?: string;
  /** Settles once the lazy-pages daemon is listening (it starts while the layer and netns are made). */
  lazyPagesReady?: Promise<unknown>;
}

/**
 * RLIMIT_NOFILE inside VPSs. The host's hard limit may be low (20000 here) and without
 * CAP_SYS_RESOURCE nothing can raise it, so stay well below.
 */
const VPS_NOFILE = 4096;

export class RuncEngine implements VpsEngine {
  readonly layout: Layout;
  readonly net: HostNetwork;
  readonly runc: RuncGlobal;
  /** The OCI runtime this engine uses, and why. */
  readonly ociRuntime: OciRuntimeChoice;
  readonly cgroups: CgroupLayout;
  private readonly live = new Map<VpsId, RuncVps>();
  /** VPSs whose network and disk were made ahead of a restore (prepareRestore), not yet created. */
  private readonly prepared = new Map<VpsId, PreparedRestore>();
  private criuConfigWritten?: Promise<string | undefined>;
  /** The compiled seccomp program (hex) new VPSs' agents install; undefined while runc compiles it. */
  private seccompHex?: string;
  private seccompCache?: Promise<string | undefined>;
  private readonly sysDirsHidden = SYS_DIRS_HIDDEN.filter((d) => existsSync(d));
  /** Machine-wide id ranges of VPS user namespaces. */
  readonly usernsRanges: UsernsRanges;
  private usernsChecked?: Promise<boolean>;
  private rootsDirMade?: Promise<void>;

  constructor(readonly opts: RuncEngineOptions) {
    this.layout = new Layout(opts.stateDir, opts.templatesDir);
    this.net = new HostNetwork(this.layout.instance, opts.netCidr, this.layout.addrDir, { egressAllow: opts.egressAllow, nameservers: opts.nameservers });
    this.ociRuntime = resolveOciRuntime(opts.runtime ?? 'auto', { runc: opts.runcPath, crun: opts.crunPath });
    const kind = this.ociRuntime.kind;
    this.runc = { kind, runc: this.ociRuntime.path, root: this.layout.runtimeRoot(kind), criu: opts.criuPath };
    this.cgroups = detectCgroupLayout();
    this.usernsRanges = new UsernsRanges(this.layout.instance);
  }

  /**
   * Whether this engine's VPSs get user namespaces (RUNBOX_USERNS), found out once: auto tries an
   * idmapped mount (the kernel feature VPS layers need) and falls back to none, logged, when the
   * host cannot; on fails instead.
   */
  usernsEnabled(): Promise<boolean> {
    const mode = this.opts.userns ?? 'auto';
    if (mode === 'off') return Promise.resolve(false);
    return (this.usernsChecked ??= this.makeRootsDir().then(async () => {
      try {
        const idmap = await idmapProbe(this.layout.rootsDir);
        if (idmap) throw new RunboxError('host_unsupported', `idmapped mounts fail: ${idmap}`);
        await fs.access(USERNS_LIMITS_HELPER, fsSync.constants.X_OK).catch(() => {
          throw new RunboxError('host_unsupported', `${USERNS_LIMITS_HELPER} is missing: run scripts/setup.sh (it builds it)`);
        });
        await this.raiseHostInotify();
        return true;
      } catch (e) {
        if (mode === 'on') throw new RunboxError('host_unsupported', `RUNBOX_USERNS=on, but VPSs cannot have user namespaces here: ${(e as Error).message}`);
        this.opts.log.warn({ err: e }, 'VPSs run without user namespaces here (root inside is host root)');
        return false;
      }
    }).catch((e: unknown) => {
      this.usernsChecked = undefined;
      throw e;
    }));
  }

  /**
   * Host root's inotify budget holds every VPS's (they count in it too, see VPS_USER_LIMITS):
   * raised where lower (a host setting; it stays so), logged.
   */
  private async raiseHostInotify(): Promise<void> {
    for (const [name, want] of Object.entries(HOST_INOTIFY)) {
      const file = `/proc/sys/fs/inotify/${name}`;
      const now = Number((await fs.readFile(file, 'utf8').catch(() => '0')).trim());
      if (now >= want) continue;
      await fs.writeFile(file, String(want)).then(
        () => this.opts.log.info({ sysctl: `fs.inotify.${name}`, was: now, now: want }, "raised host root's inotify budget: VPSs in user namespaces count in it"),
        (e: unknown) => this.opts.log.warn({ err: e, sysctl: `fs.inotify.${name}` }, "could not raise host root's inotify budget: VPSs share the lower one"),
      );
    }
  }

  /**
   * Caps the VPS's own inotify counts (VPS_USER_LIMITS) in its user namespace: written from
   * inside it by a helper that joins it (a process joining a user namespace holds every capability
   * there; the VPS's processes lack CAP_SYS_RESOURCE and cannot change them). After a start and
   * after a restore (CRIU makes the namespace anew, with the kernel's defaults).
   */
  private async capUserCounts(init: ProcessRef): Promise<void> {
    await execOk(userLimitsArgv(init.pid), { timeoutMs: 10_000 });
  }

  /**
   * CRIU options of a restore beyond those of its mode: crun's cgroup mounts, and a userns VPS's
   * veth pair (CRIU makes its netns again).
   */
  private restoreOptions(id: VpsId, record: VpsRecord | undefined): string[] {
    return [...this.restoreCgroupMounts(this.layout.vps(id).cgroupsPath), ...(record?.userns ? this.net.criuVethOptions(record.network) : [])];
  }

  /** After CRIU restored a userns VPS: its netns named and linked up again, its user counts capped in its new namespace. */
  private async adoptRestoredUserns(id: VpsId, record: VpsRecord, init: ProcessRef): Promise<void> {
    await Promise.all([this.net.adoptRestored(id, record.network, init.pid), this.capUserCounts(init)]);
  }

  /** /run/runbox/roots/<instance> and the dirs above it: searchable by all, listable by none. Once per engine. */
  private makeRootsDir(): Promise<void> {
    return (this.rootsDirMade ??= (async () => {
      for (const dir of [RUN_DIR, path.dirname(this.layout.rootsDir), this.layout.rootsDir]) {
        await fs.mkdir(dir, { recursive: true });
        await fs.chmod(dir, 0o711);
      }
      await fs.mkdir(this.layout.emptyDir, { recursive: true, mode: 0o555 });
    })().catch((e: unknown) => {
      this.rootsDirMade = undefined;
      throw e;
    }));
  }

  /** The VPS's root dir, its root's own: host users other than root and the VPS's root cannot pass it. */
  private async makeRootDir(dir: string, userns: UsernsLease | undefined): Promise<void> {
    await this.makeRootsDir();
    // Made here, it is root's and 0700 already (0700 & ~umask); one left from before is made so.
    const existed = await fs.mkdir(dir, { mode: 0o700 }).then(
      () => false,
      (e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
        return true;
      },
    );
    if (userns || existed) await fs.chown(dir, userns?.hostId ?? 0, userns?.hostId ?? 0);
    if (existed) await fs.chmod(dir, 0o700);
  }

  /**
   * The CRIU configuration file VPSs name in their config.json, written once per engine (CRIU's
   * abilities can change with an upgrade); undefined without CRIU or when it could not be written
   * (CRIU then runs with its defaults: slower network locking, same results).
   */
  private criuConfig(): Promise<string | undefined> {
    const criu = this.runc.criu;
    if (!criu) return Promise.resolve(undefined);
    return (this.criuConfigWritten ??= writeCriuConfig(criu, this.layout.criuConfig).then(
      (settings) => {
        this.opts.log.debug({ settings }, 'criu configuration written');
        return this.layout.criuConfig;
      },
      (e: unknown) => {
        this.opts.log.warn({ err: e }, 'could not write the CRIU configuration; CRIU runs with its defaults');
        return undefined;
      },
    ));
  }

  /**
   * The program for a new VPS's agent, when known: read from the host's cache once per engine (its
   * key names the runc build, see seccompCacheKey). When it is not there, runc compiles the profile
   * and the VPS's init gives the program back (captureSeccomp).
   */
  private async agentSeccomp(): Promise<string | undefined> {
    if (this.opts.seccomp === 'runc') return undefined;
    if (this.seccompHex) return this.seccompHex;
    const file = await (this.seccompCache ??= execOk([this.runc.runc, '--version'], { timeoutMs: 30_000 }).then(
      (r) => seccompCacheFile(this.layout.cacheDir, seccompCacheKey(r.stdout)),
      (e: unknown) => {
        this.opts.log.warn({ err: e }, 'cannot read the runc version: runc compiles the seccomp profile for every VPS');
        return undefined;
      },
    ));
    const cached = file && !this.seccompHex ? await readCachedFilter(file) : undefined;
    if (cached) this.seccompHex ??= cached.toString('hex');
    return this.seccompHex;
  }

  /**
   * Reads the filter runc installed in a fresh VPS's init and keeps it (cache file, this engine)
   * for the VPSs after it. Best effort: a failure leaves runc compiling, logged once.
   */
  private async captureSeccomp(init: ProcessRef, log: Logger): Promise<void> {
    const file = await this.seccompCache;
    if (!file || this.seccompHex || this.seccompCaptureFailed) return;
    try {
      const program = await seccompFilter(init.pid);
      if (!isFilterProgram(program)) throw new Error(`${program.length} bytes are not a seccomp program`);
      await writeCachedFilter(file, program);
      this.seccompHex ??= program.toString('hex');
      log.debug({ instructions: program.length / 8, file }, 'seccomp program captured from runc; agents install it from now on');
    } catch (e) {
      this.seccompCaptureFailed = true;
      log.warn({ err: e }, 'cannot read back the seccomp program runc compiled: runc compiles it for every VPS');
    }
  }
  private seccompCaptureFailed = false;

  private async forgetSeccomp(hex: string, log: Logger): Promise<void> {
    if (this.seccompHex !== hex) return;
    this.seccompHex = undefined;
    const file = await this.seccompCache;
    if (file) await fs.rm(file, { force: true });
    log.warn({ file }, 'the agent could not install the cached seccomp program: removed; runc compiles the profile again');
  }

  /**
   * The CRIU configuration file a new VPS names. runc: the instance's. crun: the VPS's own, a link
   * to the instance's, because crun has no flags for lazy pages: setCriuOptions puts them there for
   * one dump or restore.
   */
  private async vpsCriuConfig(id: VpsId): Promise<string | undefined> {
    const base = await this.criuConfig();
    if (!base || this.runc.kind !== 'crun') return base;
    // The VPS dir is new (begin() makes it, refusing one that exists): nothing to replace.
    const file = this.layout.vps(id).criuConfig;
    await linkOrCopy(base, file);
    return file;
  }

  /**
   * Adds CRIU options (long names, one per line) to VPS `id`'s configuration file for its next
   * dump or restore, under crun (runc takes them as flags: nothing to do). CRIU reads the file when
   * it starts; the returned function puts the plain file back and must run once CRIU has started
   * (a lazy dump's page server is ready, a restore returned), whatever happened.
   */
  async setCriuOptions(id: VpsId, lines: readonly string[]): Promise<() => Promise<void>> {
    if (this.runc.kind !== 'crun' || lines.length === 0) return async () => undefined;
    const base = await this.criuConfig();
    if (!base) throw new RunboxError('host_unsupported', 'crun takes lazy-pages options only from a CRIU configuration file, and none could be written');
    const file = this.layout.vps(id).criuConfig;
    const replace = async (write: (tmp: string) => Promise<void>) => {
      const tmp = `${file}.${process.pid}.tmp`;
      await fs.rm(tmp, { force: true });
      await write(tmp);
      await fs.rename(tmp, file);
    };
    await replace(async (tmp) => fs.writeFile(tmp, `${await fs.readFile(base, 'utf8')}${lines.join('\n')}\n`));
    return () => replace((tmp) => linkOrCopy(base, tmp));
  }

  /**
   * crun restores a VPS's cgroup v1 mounts (/sys/fs/cgroup/<controller> inside) as bind mounts of
   * the cgroups crun itself runs in, read from its /proc/self/cgroup: the worker's, the host's root
   * here, which would show a restored VPS every cgroup of the host and none of its own limits.
   * runc maps them to the container's cgroup. These CRIU options map them so under crun, one line
   * per hierarchy crun would name (the same /proc/self/cgroup, which crun inherits from us).
   */
  private restoreCgroupMounts(cgroupsPath: string): string[] {
    if (this.runc.kind !== 'crun' || this.cgroups.kind === 'v2') return [];
    return v1Hierarchies().map((h) => `ext-mount-map /sys/fs/cgroup/${h}:${path.join('/sys/fs/cgroup', h, cgroupsPath)}`);
  }

  /** Made once per engine (every create names it), with the roots dir. */
  private async emptyDir(): Promise<string> {
    await this.makeRootsDir();
    return this.layout.emptyDir;
  }

  /** The other OCI runtime's state of this instance, where an earlier run used it (gc clears it). */
  formerRuntimes(): RuncGlobal[] {
    const other = this.runc.kind === 'crun'
      ? { kind: 'runc' as const, runc: this.opts.runcPath }
      : { kind: 'crun' as const, runc: this.opts.crunPath ?? DEFAULT_CRUN };
    const root = this.layout.runtimeRoot(other.kind);
    return existsSync(root) && (other.kind === 'runc' || existsSync(other.runc)) ? [{ ...other, root, criu: this.runc.criu }] : [];
  }

  get(id: VpsId): RuncVps | undefined {
    return this.live.get(id);
  }

  /**
   * Creates a VPS. With `restore`, the VPS is made from a checkpoint instead of booting the agent:
   * its filesystem changes are replayed into a fresh layer, it keeps its network address, and
   * `runc restore` brings back its processes (then use `adopt` to supervise the running job).
   */
  async create(id: VpsId, spec: VpsSpec, restore?: RestoreSource): Promise<RuncVps> {
    if (!VPS_ID.test(id)) throw new RunboxError('invalid_argument', `invalid VPS id "${id}"`);
    const p = this.layout.vps(id);
    const log = this.opts.log.child({ vpsId: id });
    const prepared = restore ? await this.takePrepared(id, { network: spec.network, diskMb: spec.diskMb, address: restore.address }) : undefined;
    // Written once more below, with its network (begin() wrote the first version).
    const record: VpsRecord = prepared ? { ...prepared.record, spec } : await this.begin(id, spec);
    const t0 = performance.now();
    let agentSeccomp: string | undefined;
    const phaseMs: Record<string, number> = {};
    const mark = (name: string, since: number) => (phaseMs[name] = Math.round(performance.now() - since));
    try {
      await Promise.all([this.makeRootDir(p.rootDir, record.userns), fs.mkdir(p.bundle, { recursive: true })]);
      // A userns VPS's disk holds the mount points and device files its runtime needs from its golden
      // image (USERNS_GOLDEN); a restored one's disk came from such an image too.
      const idmap = { idmap: record.userns, contents: record.userns ? USERNS_GOLDEN : undefined };
      const layer = restore
        ? mountLayerImage(p, spec.template.rootfs, { ...restore.disk, sizeMb: spec.diskMb }, idmap)
        : mountLayer({ cacheDir: this.layout.cacheDir }, p, spec.template.rootfs, spec.diskMb, idmap);
      const [network] = await Promise.all([
        // A move's target made the network while the job still ran on its source (prepareRestore).
        prepared
          ? prepared.record.network
          : record.userns && !restore
            ? { mode: spec.network } // attached once the runtime made its namespace (below)
            : this.net.setup(id, spec.network, restore?.address, !!restore, record.userns ? {} : undefined).finally(() => mark('network', t0)),
        layer.finally(() => mark('layer', t0)),
      ]);
      record.network = network;
      // A runtime in a user namespace makes /dev/ptmx a link to pts/ptmx and fails when the template
      // has one (crun: "symlinkat `/dev/ptmx`: File exists"): the VPS's layer hides the template's.
      if (record.userns && !restore) await fs.rm(path.join(p.rootfs, 'dev/ptmx'), { force: true });
      await this.writeRecord(record);
      if (restore) await prepareUsernsImages(restore.imagesDir, record.userns);
      // A userns VPS's network config comes back with CRIU's restore of its netns.
      if (restore && network.netns && !record.userns) {
        // Addresses, routes and firewall rules the job made in its netns on the previous host.
        const { skipped } = await applyNetnsConfig(network.netns, restore.imagesDir, log);
        if (skipped.length) log.warn({ skipped }, 'network configuration of links the job created itself was not restored');
      }
      agentSeccomp = await this.agentSeccomp();
      const config = buildSpec({
        rootfs: p.rootfs,
        hostname: spec.hostname,
        agentHostPath: this.opts.agentPath,
        cgroupsPath: p.cgroupsPath,
        // A userns VPS's netns is made by its runtime (create) or by CRIU (restore), inside its user namespace.
        netnsPath: network.netns && !record.userns ? `/run/netns/${network.netns}` : undefined,
        memoryBytes: spec.memoryMb * MiB,
        cpus: spec.cpus,
        pids: spec.pids,
        nofile: VPS_NOFILE,
        emptyDir: await this.emptyDir(),
        sysDirsHidden: this.sysDirsHidden,
        criuConfig: await this.vpsCriuConfig(id),
        tun: this.opts.vpsTun,
        agentSeccomp,
        userns: record.userns,
        deviceMounts: this.runc.kind === 'crun',
      });
      await fs.writeFile(p.config, JSON.stringify(config));
      // CRIU's work dir (its log, its cgroup yard) under this host's transfers, never beside the
      // images: those may be the checkpoint store, and a CRIU killed mid-restore leaves its yard
      // mounted where only gc's look at transfers finds it.
      const workPath = restore ? restore.lazyPagesWorkDir ?? (await transferDir(this.layout.transfersDir, `restore-${id}`)) : '';
      await restore?.lazyPagesReady;
      const tRunc = performance.now();
      const restoreOpts = restore && { bundle: p.bundle, pidFile: p.pidFile, imagePath: restore.imagesDir, workPath, lazyPages: !!restore.lazyPagesWorkDir };
      const plainCriuConfig = restoreOpts
        ? await this.setCriuOptions(id, [...lazyCriuOptions(restoreOpts), ...this.restoreOptions(id, record)])
        : undefined;
      const channel = await startWithPipes(restoreOpts ? restoreArgs(this.runc, id, restoreOpts) : runArgs(this.runc, id, p.bundle, p.pidFile), log)
        .catch(async (e: unknown) => {
          if (restore && !restore.lazyPagesWorkDir) await fs.rm(workPath, { recursive: true, force: true });
          throw e;
        })
        .finally(() => plainCriuConfig?.());
      mark(restore ? 'runcRestore' : 'runcRun', tRunc);
      record.init = await readInitRef(p.pidFile);
      if (restore && record.userns) {
        if (!record.init) throw new RunboxError('unavailable', `VPS ${id} was restored without a known init process`);
        await this.adoptRestoredUserns(id, record, record.init);
      }
      if (restore) {
        try {
          await this.checkRestoredStdio(record.init, channel, workPath, restore.imagesDir, log);
        } finally {
          if (!restore.lazyPagesWorkDir) await fs.rm(workPath, { recursive: true, force: true });
        }
      }
      if (!this.opts.vpsTun) await denyTunAfterStart(this.cgroups, p.cgroupsPath);
      await this.writeRecord(record);
      const vps = new RuncVps(
        { id, spec, network: record.network, createdAt: record.createdAt },
        channel,
        new VpsCgroup(this.cgroups, p.cgroupsPath),
        this.runc,
        log,
      );
      vps.initPid = record.init?.pid;
      vps.onSpecChange = async (changed) => this.writeRecord({ ...((await this.readRecord(id)) ?? record), spec: changed });
      this.live.set(id, vps);
      // A restored agent said "ready" long ago, on its first host; it is running a job now.
      // Beside the agent's start (a failure of either fails the create; neither is left unawaited).
      const capped = record.userns && record.init && !restore ? this.capUserCounts(record.init).then(() => undefined, (e: unknown) => e) : undefined;
      if (!restore) await waitReady(channel).finally(() => capped);
      const capError = await capped;
      if (capError) throw capError;
      if (record.userns && !restore) {
        // Its network namespace is the runtime's, made inside its user namespace (CRIU dumps and
        // restores a VPS only with namespaces its user namespace owns): linked up now, once the
        // agent is ready (one that fails, e.g. its seccomp program refused, says so first).
        if (!record.init) throw new RunboxError('unavailable', `VPS ${id} started without a known init process`);
        record.network = await this.net.setup(id, spec.network, undefined, false, { attachPid: record.init.pid });
        vps.setNetwork(record.network);
        await this.writeRecord(record);
      }
      // A fresh VPS runc gave the profile to: its agent (exec'd, so under the filter) holds the
      // compiled program, and no job has run yet.
      if (!restore && !agentSeccomp && record.init && this.opts.seccomp !== 'runc') await this.captureSeccomp(record.init, log);
      vps.transition('markReady');
      if (!restore && spec.network === 'egress') {
        const resolv = await hostResolvConf();
        // A template may make resolv.conf a symlink (the agent refuses to write through one): then keep its own.
        if (resolv) await vps.writeFile('/etc/resolv.conf', Buffer.from(resolv)).catch((e: unknown) => log.warn({ err: e }, 'could not write resolv.conf'));
      }
      mark('total', t0);
      log.debug({ template: spec.template.name, network: spec.network, restored: !!restore, phaseMs }, 'vps ready');
      return vps;
    } catch (e) {
      // An agent that could not install the program (one this kernel refuses): forget it, runc
      // compiles the profile for the next VPS and gives the program back anew.
      if (agentSeccomp && e instanceof Error && /seccomp: /.test(e.message)) await this.forgetSeccomp(agentSeccomp, log);
      await this.destroy(id).catch((cleanupErr: unknown) => {
        log.error({ err: cleanupErr }, 'cleanup after a failed create also failed');
        throw new RunboxError('internal', `creating VPS ${id} failed and so did its cleanup`, { cause: new AggregateError([e, cleanupErr]) });
      });
      // The runtime removes its cgroup on delete, but not always after a failed start or restore
      // (crun leaves one with a nested .proxy-crun after a failed restore).
      await removeVpsCgroup(this.cgroups, p.cgroupsPath);
      throw e;
    }
  }

  /**
   * A restored agent must read and write this host's pipes: runc asks CRIU to put them in place
   * of the pipes named in the checkpoint's descriptors.json. Should CRIU find no such pipe in the
   * images, it recreates the old one instead and the agent runs on, connected to nothing (the
   * host's first write fails with EPIPE). Refused here, with what CRIU said about it in the log.
   */
  private async checkRestoredStdio(init: ProcessRef | undefined, channel: AgentChannel, workPath: string, imagesDir: string, log: Logger): Promise<void> {
    if (!init) return;
    const link = (fd: number) => {
      try {
        return fsSync.readlinkSync(`/proc/${init.pid}/fd/${fd}`);
      } catch {
        return '?';
      }
    };
    const got = { stdin: link(0), stdout: link(1) };
    if (got.stdin === channel.pipes.control && got.stdout === channel.pipes.output) return;
    const descriptors = await fs.readFile(path.join(imagesDir, 'descriptors.json'), 'utf8').catch(() => '?');
    const criuLines = (await fs.readFile(path.join(workPath, 'restore.log'), 'utf8').catch(() => ''))
      .split('\n')
      .filter((l) => /inherit|pipe:\[/i.test(l))
      .slice(-20);
    log.error({ got, want: channel.pipes, descriptors: descriptors.slice(0, 300), criuLines }, "a restored VPS's agent is not on this host's pipes");
    channel.close();
    throw new RunboxError('unavailable', `the restored agent's stdio is not this host's pipes (stdin ${got.stdin}, stdout ${got.stdout}): CRIU did not map them`);
  }

  /** The VPS dir and its record (owner: this process, so gc can tell a leftover). */
  private async begin(id: VpsId, spec: VpsSpec): Promise<VpsRecord> {
    const p = this.layout.vps(id);
    try {
      await fs.mkdir(p.dir, { recursive: false });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new RunboxError('conflict', `VPS ${id} already exists`);
      await fs.mkdir(this.layout.vpsRoot, { recursive: true });
      await fs.mkdir(p.dir);
    }
    const record: VpsRecord = { id, spec, network: { mode: spec.network }, owner: selfRef(), createdAt: new Date().toISOString() };
    try {
      // A crash before the record names the slot leaves a slot whose VPS has no dir: gc frees it.
      if (await this.usernsEnabled()) record.userns = await this.usernsRanges.allocate(id);
      await this.writeRecord(record);
    } catch (e) {
      if (record.userns) await this.usernsRanges.release(record.userns.slot, id);
      await fs.rm(p.dir, { recursive: true, force: true });
      throw e;
    }
    return record;
  }

  /**
   * Makes what a restore of `id` needs before its checkpoint exists: its network namespace (with
   * the address it keeps). A move's target does this while the job still runs on its source, so
   * the freeze no longer waits for it; `create(id, spec, restore)` then mounts the disk image that
   * came with the checkpoint and restores. Idempotent for the same plan; `destroy(id)` releases a
   * prepared VPS that will not be restored.
   */
  async prepareRestore(id: VpsId, spec: VpsSpec, plan: RestorePlan): Promise<void> {
    if (!VPS_ID.test(id)) throw new RunboxError('invalid_argument', `invalid VPS id "${id}"`);
    const had = this.prepared.get(id);
    if (had && samePlan(had.plan, plan)) return;
    if (had) await this.destroy(id);
    const record = await this.begin(id, spec);
    try {
      record.network = await this.net.setup(id, plan.network, plan.address, true, record.userns ? {} : undefined);
      await this.writeRecord(record);
      this.prepared.set(id, { plan, record });
    } catch (e) {
      await this.destroy(id).catch(() => undefined);
      throw e;
    }
  }

  /** A prepared VPS for this plan, taken out of the map; one for another plan is destroyed first. */
  private async takePrepared(id: VpsId, plan: RestorePlan): Promise<PreparedRestore | undefined> {
    const had = this.prepared.get(id);
    if (!had) return undefined;
    this.prepared.delete(id);
    if (samePlan(had.plan, plan)) return had;
    await this.destroy(id);
    return undefined;
  }

  private readonly destroying = new Map<VpsId, Promise<void>>();

  /** Idempotent, also when called concurrently: kills, unmounts, frees the network, removes files. */
  destroy(id: VpsId): Promise<void> {
    if (!VPS_ID.test(id)) return Promise.resolve();
    let p = this.destroying.get(id);
    if (!p) {
      p = this.destroyNow(id).finally(() => this.destroying.delete(id));
      this.destroying.set(id, p);
    }
    return p;
  }

  private async destroyNow(id: VpsId): Promise<void> {
    this.prepared.delete(id);
    const p = this.layout.vps(id);
    const vps = this.live.get(id);
    if (vps && vps.state !== 'destroyed' && vps.state !== 'destroying') vps.transition('destroy');
    const record = await this.readRecord(id);
    const gone = await this.killInit(record?.init, vps);
    const deleted = this.deleteContainer(id);
    // Its processes gone, the runtime's delete and the network teardown (ip, nft) are independent:
    // in parallel. Otherwise the delete (forced) comes first. The disk is unmounted after the delete:
    // alongside it, its umount made `none` destroys slower (measured, 15 → 18–21 ms p50).
    if (!gone) await deleted;
    vps?.channel.close();
    await Promise.all([deleted.then(() => unmountLayer(p)), this.net.teardown(id, record?.network ?? { mode: 'private' })]);
    await Promise.all([fs.rm(p.dir, { recursive: true, force: true }), fs.rm(p.rootDir, { recursive: true, force: true })]);
    // Its ids go back only once nothing of the VPS is left that they own (processes, files).
    if (record?.userns) await this.usernsRanges.release(record.userns.slot, id);
    this.live.delete(id);
    if (vps) vps.transition('markDestroyed');
  }

  /**
   * Kills the VPS's init (the kernel then kills everything in its pid namespace) and waits for the
   * agent's pipe to close (or the process to go). Resolves whether it is gone (true without one).
   */
  private async killInit(init: ProcessRef | undefined, vps: RuncVps | undefined): Promise<boolean> {
    if (!init || !isAlive(init)) return true;
    try {
      process.kill(init.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    if (vps) await within(vps.channel.whenClosed(), 2000);
    else await waitGone(init, 2000);
    return hasExited(init);
  }

  /**
   * Deletes the stopped container: ~5–10 ms, where `delete --force` takes ~100 ms with runc
   * because it polls. Falls back to the forced delete when anything is unexpected.
   */
  private async deleteContainer(id: VpsId): Promise<void> {
    try {
      await runcDelete(this.runc, id, false);
    } catch {
      await runcDelete(this.runc, id, true);
    }
  }

  /** Destroys every VPS this process created (shutdown); waits for destroys already under way. */
  async destroyAll(): Promise<void> {
    await Promise.all([...this.live.keys()].map((id) => this.destroy(id)));
  }

  async list(): Promise<VpsId[]> {
    const ids = await fs.readdir(this.layout.vpsRoot).catch(() => [] as string[]);
    return ids.filter((i) => VPS_ID.test(i));
  }

  async readRecord(id: VpsId): Promise<VpsRecord | undefined> {
    let raw: unknown;
    try {
      raw = JSON.parse(await fs.readFile(this.layout.vps(id).meta, 'utf8'));
    } catch {
      return undefined;
    }
    // Checked: destroy and gc delete the host objects it names (vps-record.ts).
    const { record, invalid } = parseVpsRecord(raw, id);
    if (invalid) this.opts.log.warn({ vpsId: id, field: invalid }, 'ignoring an invalid vps.json');
    return record;
  }

  async writeRecord(r: VpsRecord): Promise<void> {
    const file = this.layout.vps(r.id).meta;
    await fs.writeFile(`${file}.tmp`, JSON.stringify(r, null, 2));
    await fs.rename(`${file}.tmp`, file);
  }

  /** Starts a restored container for an existing VPS dir (see checkpoint/). */
  async startRestored(vps: RuncVps, argv: string[], o: { pidFile: string; workPath: string; imagesDir: string }): Promise<void> {
    const log = this.opts.log.child({ vpsId: vps.id });
    const record = await this.readRecord(vps.id);
    await prepareUsernsImages(o.imagesDir, record?.userns);
    const userns = record?.userns ? record : undefined;
    if (userns) await this.net.releaseForRestore(vps.id, userns.network);
    const plainCriuConfig = await this.setCriuOptions(vps.id, this.restoreOptions(vps.id, record));
    const channel = await startWithPipes(argv, log).finally(plainCriuConfig);
    try {
      const init = await readInitRef(o.pidFile);
      await this.checkRestoredStdio(init, channel, o.workPath, o.imagesDir, log);
      if (userns && init) await this.adoptRestoredUserns(vps.id, userns, init);
    } catch (e) {
      channel.close();
      await runcKill(this.runc, vps.id).catch(() => undefined);
      await runcDelete(this.runc, vps.id, true).catch(() => undefined);
      throw e;
    }
    if (!this.opts.vpsTun) await denyTunAfterStart(this.cgroups, this.layout.vps(vps.id).cgroupsPath);
    vps.endSwap(channel);
  }

}

/**
 * What a userns VPS's disk holds from the start: the mount points a runtime in a user namespace
 * cannot make (those nested in another mount, /sys/firmware...) and the files it binds the
 * host's device nodes over. Made once per golden image, with the modes templates have.
 */
const USERNS_GOLDEN: GoldenContents = {
  tag: 'userns',
  dirs: [['/sys', 0o555], ['/dev', 0o755], ...SYS_DIRS_HIDDEN.map((d) => [d, 0o755] as const)],
  files: STANDARD_DEVICES,
};

/** A hard link (no copy per VPS), or a copy where the VPS dirs are on another file system. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  await fs.link(from, to).catch(async (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EXDEV') throw e;
    await fs.copyFile(from, to);
  });
}

/** The v1 hierarchies this process is in, named as crun names their mount points (criu.c restore_cgroup_v1_mount). */
function v1Hierarchies(): string[] {
  const names: string[] = [];
  for (const line of fsSync.readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    let subsystem = line.split(':')[1] ?? '';
    if (!subsystem) continue;
    if (subsystem.startsWith('name=')) subsystem = subsystem.slice(5);
    if (subsystem === 'net_prio,net_cls') subsystem = 'net_cls,net_prio';
    if (subsystem === 'cpuacct,cpu') subsystem = 'cpu,cpuacct';
    names.push(subsystem);
  }
  return names;
}

function samePlan(a: RestorePlan, b: RestorePlan): boolean {
  return a.network === b.network && a.diskMb === b.diskMb && (a.address ?? null) === (b.address ?? null);
}
