import { RuncEngine } from './dist/runtime/runc-engine.js';
import { resolveTemplate } from './dist/runtime/templates/store.js';
import pino from 'pino';
import fs from 'node:fs';
const stateDir = fs.mkdtempSync('/tmp/exp/state-');
const engine = new RuncEngine({ stateDir, templatesDir: '/var/lib/runbox/templates', runcPath: 'runc', agentPath: '/work/main/build/runbox-agent', netCidr: '10.251.9.0/24', log: pino({level:'warn'}) });
const t = await resolveTemplate('/var/lib/runbox/templates', 'base');
const c0 = process.cpuUsage(); const t0 = performance.now();
const N = Number(process.argv[2] ?? 100);
for (let i = 0; i < N; i++) {
  const id = 'exp' + i + 'x' + Date.now();
  const vps = await engine.create(id, { template: t, hostname: 'x', network: 'none', memoryMb: 256, cpus: 1, pids: 256, diskMb: 64 });
  await vps.run({ argv: ['true'], timeoutSec: 10, outputBytes: 1000 });
  await engine.destroy(id);
}
const c = process.cpuUsage(c0);
console.log('per VPS: wall', ((performance.now() - t0) / N).toFixed(1), 'ms; node cpu user', (c.user / 1000 / N).toFixed(1), 'sys', (c.system / 1000 / N).toFixed(1));
fs.rmSync(stateDir, { recursive: true });
