import fs from 'node:fs';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';

/**
 * Which OCI runtime starts a host's VPSs. Both take the same config.json and the same CLI for what
 * runbox uses (run -d, kill, delete, state, list, pause/resume, checkpoint, restore); crun, a C
 * program, starts in ~0.3× runc's (Go) time and CPU (docs/runtime-evaluation.md). What differs:
 * crun's checkpoint has no lazy pages (post-copy moves need runc), finds `criu` on PATH through
 * libcriu instead of taking --criu, and refuses hybrid cgroup hosts whose cgroup2 mount still holds
 * controllers (scripts/setup.sh moves those to v1 hierarchies once per boot).
 */
export type OciRuntimeKind = 'runc' | 'crun';
export type OciRuntimePreference = OciRuntimeKind | 'auto';

export const DEFAULT_CRUN = '/opt/runbox/criu/bin/crun';

export interface OciRuntimeChoice {
  kind: OciRuntimeKind;
  path: string;
  /** Why this one (logged at start, shown by `runbox doctor`). */
  reason: string;
}

/** What the choice depends on, read from the host (cgroupReadiness/executable below) or given by tests. */
export interface HostFacts {
  crunExecutable: boolean;
  /** Controllers on the hybrid layout's cgroup2 mount; empty on pure v1 or v2 hosts. */
  hybridV2Controllers: string[];
}

/** Pure: the runtime for a preference on a host with these facts. */
export function chooseOciRuntime(pref: OciRuntimePreference, paths: { runc: string; crun: string }, host: HostFacts): OciRuntimeChoice {
  const crunBlocker = !host.crunExecutable
    ? `${paths.crun} is not an executable (scripts/setup.sh installs crun with CRIU support)`
    : host.hybridV2Controllers.length > 0
      ? `crun refuses this hybrid cgroup layout while cgroup2 holds controllers (${host.hybridV2Controllers.join(', ')}); scripts/setup.sh moves them to v1 hierarchies when no VPS runs`
      : undefined;
  if (pref === 'runc') return { kind: 'runc', path: paths.runc, reason: 'RUNBOX_RUNTIME=runc' };
  if (pref === 'crun') {
    if (crunBlocker) throw new RunboxError('host_unsupported', `RUNBOX_RUNTIME=crun, but ${crunBlocker}`);
    return { kind: 'crun', path: paths.crun, reason: 'RUNBOX_RUNTIME=crun' };
  }
  if (crunBlocker) return { kind: 'runc', path: paths.runc, reason: `auto: runc, because ${crunBlocker}` };
  return { kind: 'crun', path: paths.crun, reason: 'auto: crun (cheaper start than runc)' };
}

/** Controllers listed by a hybrid host's cgroup2 mount (/sys/fs/cgroup/unified). */
export function hybridV2Controllers(cgroupRoot = '/sys/fs/cgroup'): string[] {
  if (fs.existsSync(path.join(cgroupRoot, 'cgroup.controllers'))) return []; // pure v2
  try {
    return fs.readFileSync(path.join(cgroupRoot, 'unified', 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean);
  } catch {
    return []; // pure v1
  }
}

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The runtime for `pref` on this host. */
export function resolveOciRuntime(pref: OciRuntimePreference, paths: { runc: string; crun?: string }): OciRuntimeChoice {
  const crun = paths.crun ?? DEFAULT_CRUN;
  return chooseOciRuntime(pref, { runc: paths.runc, crun }, { crunExecutable: executable(crun), hybridV2Controllers: hybridV2Controllers() });
}
