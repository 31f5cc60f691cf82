import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import type { RuncVps } from '../../runtime/runc-vps.js';

/**
 * Copies the host's nft and the libraries it links into /opt/host of the VPS, with a launcher
 * that runs it through the copied dynamic loader: so root *inside* the VPS runs a real nft
 * (`/opt/host/run nft …`), as an attacker who brought their own tools would.
 */
export async function installHostNft(vps: RuncVps): Promise<void> {
  const nft = execFileSync('sh', ['-c', 'command -v nft']).toString().trim();
  const libs = execFileSync('ldd', [nft])
    .toString()
    .split('\n')
    .map((l) => /(\/\S+)/.exec(l.includes('=>') ? l.split('=>')[1]! : l)?.[1])
    .filter((p): p is string => !!p);
  for (const f of [nft, ...libs]) await vps.writeFile(`/opt/host/${f.split('/').pop()}`, await fs.readFile(f), 0o755);
  const loader = libs.find((l) => l.includes('ld-linux'))!.split('/').pop();
  await vps.writeFile('/opt/host/run', Buffer.from(`#!/bin/sh\nexec /opt/host/${loader} --library-path /opt/host /opt/host/"$@"\n`), 0o755);
}
