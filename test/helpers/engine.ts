import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../core/config.js';
import { newId } from '../../core/ids.js';
import { createLogger } from '../../core/log.js';
import { gc } from '../../runtime/gc.js';
import { RuncEngine, type RuncEngineOptions } from '../../runtime/runc-engine.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { resolveTemplate, type TemplateRef } from '../../runtime/templates/store.js';
import type { JobRun, RunResult, VpsSpec } from '../../runtime/vps.js';
import { Layout } from '../../runtime/layout.js';
import type { RuncGlobal } from '../../runtime/oci/runc.js';
import { resolveOciRuntime, type OciRuntimePreference } from '../../runtime/oci/runtime-choice.js';

/** Templates are built once by setup; tests share them read-only. */
export const TEMPLATES_DIR = process.env.RUNBOX_TEMPLATES_DIR ?? path.join(process.env.RUNBOX_STATE_DIR ?? '/var/lib/runbox', 'templates');
export const CRIU = process.env.RUNBOX_CRIU ?? '/opt/runbox/criu/bin/criu';
export const AGENT = path.join(REPO_ROOT, 'build/runbox-agent');
/** The OCI runtime tests run VPSs with (RUNBOX_RUNTIME, as for a worker; default auto). */
export const RUNTIME = (process.env.RUNBOX_RUNTIME ?? 'auto') as OciRuntimePreference;

/** User namespaces for test VPSs (RUNBOX_USERNS, as for a worker; default auto). */
export const USERNS = (process.env.RUNBOX_USERNS ?? 'auto') as 'auto' | 'on' | 'off';

/** How a state dir's containers are reached, as a worker on this host started with the same environment would. */
export function runtimeOf(stateDir: string): RuncGlobal {
  const { kind, path: bin } = resolveOciRuntime(RUNTIME, { runc: 'runc', crun: process.env.RUNBOX_CRUN });
  return { kind, runc: bin, root: new Layout(stateDir).runtimeRoot(kind) };
}

let subnet = 0;

/**
 * A runtime instance of its own for one test file: own state dir, own runc root, own cgroup
 * parent, own bridge and address range (10.<200-250>.<k>.0/24), all removed by `cleanup()`.
 */
export async function testEngine(name: string, extra: Partial<Pick<RuncEngineOptions, 'egressAllow' | 'vpsTun' | 'nameservers' | 'seccomp' | 'runtime' | 'userns'>> = {}): Promise<TestEngine> {
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), `runbox-test-${name}-`));
  // Distinct /24 per engine: derived from the pid and a counter so parallel test files differ.
  const k = (process.pid * 7 + subnet++) % 12800;
  const cidr = `10.${200 + Math.floor(k / 256) % 50}.${k % 256}.0/24`;
  const engine = new RuncEngine({
    stateDir,
    templatesDir: TEMPLATES_DIR,
    runcPath: 'runc',
    runtime: RUNTIME,
    userns: USERNS,
    criuPath: CRIU,
    agentPath: AGENT,
    netCidr: cidr,
    log: createLogger(process.env.RUNBOX_TEST_LOG ?? 'silent'),
    ...extra,
  });
  return new TestEngine(engine, stateDir);
}

export class TestEngine {
  private template?: TemplateRef;
  constructor(
    readonly engine: RuncEngine,
    readonly stateDir: string,
  ) {}

  async base(): Promise<TemplateRef> {
    return (this.template ??= await resolveTemplate(TEMPLATES_DIR, 'base'));
  }

  async create(spec: Partial<VpsSpec> = {}, id = newId()): Promise<RuncVps> {
    return this.engine.create(id, {
      template: await this.base(),
      hostname: `t-${id.slice(0, 6)}`,
      network: 'none',
      memoryMb: 256,
      cpus: 1,
      pids: 256,
      diskMb: 64,
      ...spec,
    });
  }

  /** create → run → destroy, collecting output. */
  async run(
    argv: string[],
    opts: Partial<JobRun> & { spec?: Partial<VpsSpec>; inside?: (vps: RuncVps) => Promise<void> } = {},
  ): Promise<RunResult & { stdout: string; stderr: string }> {
    const vps = await this.create(opts.spec);
    try {
      await opts.inside?.(vps);
      const out = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
      const r = await vps.run({
        argv,
        timeoutSec: 30,
        outputBytes: 16 * 1024 * 1024,
        ...opts,
        onOutput: (s, d, o) => {
          out[s].push(Buffer.from(d));
          opts.onOutput?.(s, d, o);
        },
      });
      return { ...r, stdout: Buffer.concat(out.stdout).toString(), stderr: Buffer.concat(out.stderr).toString() };
    } finally {
      await this.engine.destroy(vps.id);
    }
  }

  /** `sh -c script` shorthand. */
  sh(script: string, opts: Parameters<TestEngine['run']>[1] = {}) {
    return this.run(['sh', '-c', script], opts);
  }

  async cleanup(): Promise<void> {
    await gc(this.engine, { all: true });
    await fs.rm(this.stateDir, { recursive: true, force: true });
  }
}
