import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';

/** A throwaway redis-server on all host addresses, standing for the host's own services. */
export async function startHostRedis(): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '0.0.0.0', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
    stdio: 'ignore',
  });
  await waitFor(() => canConnect('127.0.0.1', port), `redis-server on port ${port}`);
  return { port, stop: () => stopChild(child) };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export function canConnect(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.on('connect', () => done(true));
    sock.on('error', () => done(false));
  });
}

export async function waitFor(pred: () => Promise<boolean> | boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/** The host's non-loopback IPv4 addresses (the uplink a VPS must not reach either). */
export function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((a): a is os.NetworkInterfaceInfo => !!a && a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

/**
 * A stand-in for "the internet": a network namespace of the test's own, reached from the host
 * through a veth pair, with no route back to the VPS range. A VPS that gets an answer from it
 * must have been masqueraded. Uses TEST-NET-2 (198.51.100.0/24) unless told another /24 (TEST-NET-3,
 * 203.0.113.0/24, for tests that may run beside it), never a real address.
 */
export function createUplink(name: string, net = '198.51.100'): { ns: string; address: string; remove: () => void } {
  const ns = `rbtest-${name}`;
  const hostIf = `rbt${name}`.slice(0, 15);
  const run = (args: string[]) => execFileSync('ip', args);
  run(['netns', 'add', ns]);
  run(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  run(['addr', 'add', `${net}.1/24`, 'dev', hostIf]);
  run(['link', 'set', hostIf, 'up']);
  run(['-n', ns, 'addr', 'add', `${net}.2/24`, 'dev', 'eth0']);
  run(['-n', ns, 'link', 'set', 'eth0', 'up']);
  run(['-n', ns, 'link', 'set', 'lo', 'up']);
  return {
    ns,
    address: `${net}.2`,
    remove: () => {
      try {
        run(['link', 'del', hostIf]);
      } catch {
        /* gone */
      }
      run(['netns', 'del', ns]);
    },
  };
}

/** A one-shot-per-connection TCP responder inside a netns (busybox nc -ll -e). */
export function listenInNetns(ns: string, port: number, reply: string): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, 'busybox', 'nc', '-ll', '-p', String(port), '-e', 'echo', reply], { stdio: 'ignore' });
}
