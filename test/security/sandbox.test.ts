import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SANDBOX_INPUT, sandboxExec } from '../../runtime/host/sandbox.js';

/**
 * The sandbox that replays a VPS's firewall rules (runtime/host/sandbox.ts) plays the attacker's
 * helper: whatever a tool run in it is told to read, it sees no host file. busybox stands for a
 * tool that does exactly what its input says (cat, ls, find); nft is the real tool, asked to
 * `include` host files the way the text format allows.
 */
const SECRET = `S3CR3T-${randomBytes(8).toString('hex')}`;
const tag = randomBytes(3).toString('hex');
const NS = `rbAx${tag}`;
let stateDir: string;
let tokenFile: string;
const BUSYBOX = '/bin/busybox';

/** Host mounts at or under the sandbox's mount point (other tests may mount elsewhere meanwhile). */
const mounts = () =>
  readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((mp) => mp === '/tmp' || mp?.startsWith('/tmp/input'));

beforeAll(async () => {
  // A state dir as runbox keeps it (0700) with its token file (0600).
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'rbA-sandbox-state-'));
  tokenFile = path.join(stateDir, 'api-tokens');
  await fs.writeFile(tokenFile, `default:admin=${SECRET}\n`, { mode: 0o600 });
  execFileSync('ip', ['netns', 'add', NS]);
  execFileSync('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
});

afterAll(async () => {
  execFileSync('ip', ['netns', 'del', NS]);
  await fs.rm(stateDir, { recursive: true, force: true });
});

const run = (argv: string[], input?: string) => sandboxExec({ argv, netns: NS }, { input, timeoutMs: 20_000 });
const everything = (r: { stdout: string; stderr: string }) => r.stdout + r.stderr;

describe('sandboxed exec: no host file is readable', () => {
  it.each([
    ['/etc/shadow'],
    ['/proc/1/environ'],
    ['/proc/self/root/etc/shadow'],
    ['/proc/1/root/etc/shadow'],
    ['/sys/kernel/mm/transparent_hugepage/enabled'],
    ['/run/netns'],
  ])('cat %s fails', async (file) => {
    const r = await run([BUSYBOX, 'cat', file]);
    expect(r.code).not.toBe(0);
    expect(everything(r)).toMatch(/No such file or directory/);
  });

  it("cannot read the state dir's token file, by its path or by searching the whole tree", async () => {
    const direct = await run([BUSYBOX, 'cat', tokenFile]);
    expect(direct.code).not.toBe(0);
    const all = await run([BUSYBOX, 'find', '/', '-xdev']);
    expect(all.code).toBe(0);
    const files = all.stdout.trim().split('\n').sort();
    // The tool, the capability helper and their libraries (busybox is static), and the input: nothing else.
    expect(files.filter((f) => !/^\/(usr|lib|lib64|bin|sbin)(\/|$)/.test(f))).toEqual(['/', SANDBOX_INPUT]);
    expect(files.some((f) => f.includes('shadow') || f.includes('api-tokens') || f.startsWith('/etc') || f.startsWith('/proc'))).toBe(false);
    expect(everything(direct) + all.stdout).not.toContain(SECRET);
  });

  it('runs as nobody, on a read-only root, with no capability unless asked, and hands the input over as /input', async () => {
    const id = await run([BUSYBOX, 'id']);
    expect(id.stdout.trim()).toMatch(/^uid=65534\b.*gid=65534\b/);
    const write = await run([BUSYBOX, 'touch', '/x']);
    expect(write.code).not.toBe(0);
    expect(everything(write)).toMatch(/Read-only file system|Permission denied/);
    const input = await run([BUSYBOX, 'cat', SANDBOX_INPUT], 'hello "world"\n');
    expect(input.stdout).toBe('hello "world"\n');
    // Without net_admin, nft cannot list the netns's rules; with it (below) it can.
    const noCap = await sandboxExec({ argv: ['nft', 'list', 'ruleset'], netns: NS }, { timeoutMs: 20_000 });
    expect(noCap.code).not.toBe(0);
    expect(everything(noCap)).toMatch(/Operation not permitted/);
  });

  it('nft told to include host files reads none of them and quotes nothing of them', async () => {
    const text = [tokenFile, '/etc/shadow', '/proc/1/root/etc/shadow', '/proc/self/environ'].map((f) => `include "${f}"`).join('\n');
    const r = await sandboxExec({ argv: ['nft', '-f', SANDBOX_INPUT], netns: NS, caps: ['net_admin'] }, { input: `${text}\n`, timeoutMs: 20_000 });
    expect(r.code).not.toBe(0);
    expect(everything(r)).toMatch(/File not found|No such file/);
    expect(everything(r)).not.toContain(SECRET);
    expect(everything(r)).not.toMatch(/root:[^:]*:\d+:/); // a shadow line
    // The same input given to nft as host root (the old replay) prints the token.
    const tmp = path.join(stateDir, 'ruleset.nft');
    await fs.writeFile(tmp, `include "${tokenFile}"\n`);
    let host = '';
    try {
      execFileSync('ip', ['netns', 'exec', NS, 'nft', '-f', tmp], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      host = String((e as { stderr?: string }).stderr);
    }
    expect(host).toContain(SECRET);
  });

  it('joins the named netns (its rules land there, not on the host) and leaves no mount behind', async () => {
    const before = mounts();
    const doc = JSON.stringify({ nftables: [{ add: { table: { family: 'inet', name: `sbx${tag}` } } }] });
    const r = await sandboxExec({ argv: ['nft', '-j', '-f', SANDBOX_INPUT], netns: NS, caps: ['net_admin'] }, { input: doc, timeoutMs: 20_000 });
    expect(everything(r)).toBe('');
    expect(r.code).toBe(0);
    expect(execFileSync('ip', ['netns', 'exec', NS, 'nft', 'list', 'tables'], { encoding: 'utf8' })).toContain(`table inet sbx${tag}`);
    expect(execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' })).not.toContain(`sbx${tag}`);
    expect(mounts()).toEqual(before);
  });
});
