import fs from 'node:fs/promises';
import path from 'node:path';
import { exec } from '../exec.js';

/**
 * CRIU options for every dump and restore of runbox's VPSs. runc 1.1 has no flags for them, but it
 * hands CRIU the configuration file named by the container's `org.criu.config` annotation, whose
 * settings override runc's own (runc: handleCriuConfigurationFile).
 */
export interface CriuSettings {
  /**
   * Lock the network during a dump and a restore with nftables, inside CRIU (libnftables), instead
   * of the default iptables-restore processes: CRIU runs 4–6 of those per lock or unlock, ~15–20 ms
   * each here, all of it while the job is frozen.
   */
  nftablesLock: boolean;
}

/** The configuration file's text: one CRIU long option per line, without the dashes. */
export function criuConfigText(s: CriuSettings): string {
  const lines = ['# Written by runbox (runtime/checkpoint/criu-config.ts); read by CRIU through runc.'];
  if (s.nftablesLock) lines.push('network-lock nftables');
  return `${lines.join('\n')}\n`;
}

/** What this host's CRIU can do, of what runbox would like to set. */
export async function detectCriuSettings(criu: string): Promise<CriuSettings> {
  // CRIU rejects the option up front when built without libnftables ("CRIU was built without
  // libnftables support"), before any check runs.
  const r = await exec([criu, 'check', '--network-lock', 'nftables'], { timeoutMs: 30_000 }).catch(() => undefined);
  return { nftablesLock: !!r && r.code === 0 };
}

/** Writes the file (atomically, as a VPS being created may read it) and returns its settings. */
export async function writeCriuConfig(criu: string, file: string): Promise<CriuSettings> {
  const settings = await detectCriuSettings(criu);
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, criuConfigText(settings));
  await fs.rename(tmp, file);
  return settings;
}
