import net from 'node:net';
import type { JobStore } from '../../core/store/jobs.js';

/**
 * Failure injection for tests, injected by the composition root: production workers get
 * `NoFaults`; with `RUNBOX_FAULT_INJECTION=1` (core/config.ts) they get `labelFaults`, where a
 * job label `runbox.fault` names the step of its migration that fails:
 *   prepare  the target cannot get the template version
 *   dump     the source's dump fails, after the target prepared
 *   send     the source breaks the connection mid-transfer
 *   restore  the target fails before restoring
 *   pages    post-copy: the source's page server is killed as soon as the target runs the job (as if the source died)
 *   port     post-copy: another process takes the page server's port before CRIU binds it (once)
 * and, after the target restored the job and said so: `channel` (the target loses its pipes to the
 * restored agent), `kill` (the restored VPS's init is killed), `crash` (the target's worker dies
 * right after adopting the job).
 */
export type FaultStep = 'prepare' | 'dump' | 'send' | 'restore' | 'pages' | 'port' | 'channel' | 'kill' | 'crash';

export interface MigrationFaults {
  /** The step of this job's migration that is to fail, if any. */
  at(jobId: string): Promise<FaultStep | undefined>;
}

export const NoFaults: MigrationFaults = { at: async () => undefined };

const STEPS: readonly string[] = ['prepare', 'dump', 'send', 'restore', 'pages', 'port', 'channel', 'kill', 'crash'] satisfies FaultStep[];

export function labelFaults(jobs: JobStore): MigrationFaults {
  return {
    async at(jobId) {
      const label = (await jobs.get(jobId))?.job.labels['runbox.fault'];
      return label !== undefined && STEPS.includes(label) ? (label as FaultStep) : undefined;
    },
  };
}

/** The `port` fault: a listener on the page server's port, as another process that took it first. */
export async function occupy(at: { address: string; port: number }): Promise<net.Server> {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.address, () => resolve());
  });
  return server;
}
