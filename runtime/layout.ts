import { createHash } from 'node:crypto';
import path from 'node:path';

/**
 * On-disk layout of one runbox instance (one state dir). Everything a VPS owns lives under its own
 * directory, so that a VPS is one unit to destroy, to garbage-collect after a crash, and (with a
 * checkpoint) to move to another host:
 *
 *   <state>/vps/<id>/vps.json         what the VPS is (template + hash, network, limits, owner)
 *   <state>/vps/<id>/disk.img         its writable layer (sparse ext4), mounted at layer/
 *   <state>/vps/<id>/layer/upper      the overlay upper dir: all its filesystem changes
 *   <state>/vps/<id>/bundle/          OCI bundle: config.json
 *   <state>/vps/<id>/lower, mapped    with a user namespace: idmapped views of the template and of layer/
 *   /run/runbox/roots/<inst>/<id>/rootfs   the VPS's root (the overlay mount); see rootsDir
 *   <state>/vps/<id>/checkpoints/     CRIU images
 *   <state>/runc/ or crun/            the OCI runtime's own state (--root)
 *   <state>/cache/                    golden layer images
 *   <state>/net/addrs/                address leases
 */
export class Layout {
  /** Short hash of the state dir: names host-global objects (cgroups, bridge, netns) per instance. */
  readonly instance: string;

  constructor(
    readonly stateDir: string,
    readonly templatesDir = path.join(stateDir, 'templates'),
  ) {
    this.instance = createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 6);
  }

  /** The OCI runtime's own state (--root): one dir per runtime, their formats differ. */
  runtimeRoot(kind: 'runc' | 'crun'): string {
    return path.join(this.stateDir, kind);
  }
  get vpsRoot(): string {
    return path.join(this.stateDir, 'vps');
  }
  get cacheDir(): string {
    return path.join(this.stateDir, 'cache');
  }
  get addrDir(): string {
    return path.join(this.stateDir, 'net', 'addrs');
  }
  /** Checkpoints on their way between hosts: `<pid>.<start>.<name>.XXXXXX`, their owner's so gc can tell stale ones. */
  get transfersDir(): string {
    return path.join(this.stateDir, 'transfers');
  }
  /**
   * Where VPS roots are mounted, outside the state dir: a VPS in a user namespace has its runtime
   * open its root (and the dirs above it) as the VPS's root, an unprivileged host uid, which the
   * state dir (0700) keeps out. These dirs are searchable by all (0711, no listing) and each
   * VPS's own dir is its root's alone (0700): no other host user reaches a VPS's files.
   */
  get rootsDir(): string {
    return path.join(RUN_DIR, 'roots', this.instance);
  }
  /** Empty and read-only: what VPSs see in place of hidden /sys directories (oci/spec.ts). In rootsDir: bound as the VPS's root. */
  get emptyDir(): string {
    return path.join(this.rootsDir, '.empty');
  }
  /** CRIU options for this instance's VPSs, named in their config.json (checkpoint/criu-config.ts). */
  get criuConfig(): string {
    return path.join(this.stateDir, 'criu.conf');
  }
  /** cgroup parent of this instance's VPSs, relative to each hierarchy root. */
  get cgroupParent(): string {
    return `/runbox-${this.instance}`;
  }

  vps(id: string) {
    const dir = path.join(this.vpsRoot, id);
    const rootDir = path.join(this.rootsDir, id);
    return {
      dir,
      meta: path.join(dir, 'vps.json'),
      pidFile: path.join(dir, 'init.pid'),
      image: path.join(dir, 'disk.img'),
      layerMount: path.join(dir, 'layer'),
      bundle: path.join(dir, 'bundle'),
      config: path.join(dir, 'bundle', 'config.json'),
      /** Holds rootfs; owned by the VPS's root (mode 0700). */
      rootDir,
      rootfs: path.join(rootDir, 'rootfs'),
      /** User namespace only: the template and layer/, idmapped to the VPS's ids (overlay lower and upper). */
      lower: path.join(dir, 'lower'),
      mappedLayer: path.join(dir, 'mapped'),
      checkpoints: path.join(dir, 'checkpoints'),
      /** crun only: this VPS's CRIU options (a link to the instance's, or those of one dump or restore). */
      criuConfig: path.join(dir, 'criu.conf'),
      cgroupsPath: `${this.cgroupParent}/${id}`,
    };
  }
}

/** Host-wide runtime files of every runbox instance (tmpfs: gone with the VPSs at a reboot). */
export const RUN_DIR = '/run/runbox';

export const VPS_ID = /^[a-z0-9]{4,32}$/;
