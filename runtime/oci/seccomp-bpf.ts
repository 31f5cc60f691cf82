import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { vpsSeccompProfile } from './seccomp.js';

/**
 * The VPS seccomp filter as a compiled program, so that runc does not compile the OCI profile
 * again for every VPS (libseccomp plus runc's own patching: ~30 ms of each create, the largest
 * single step). The program is the one runc itself made: read back (ptrace, as CRIU does) from
 * the init of a VPS runc started with the profile, kept in the host's cache under a key of the
 * profile and the runc build, and installed by the agent as its first act
 * (RUNBOX_AGENT_SECCOMP, runtime/agent/agent.c).
 */

/** struct sock_filter: u16 code, u8 jt, u8 jf, u32 k. */
export const SOCK_FILTER_BYTES = 8;
/** BPF_MAXINSNS: the kernel refuses longer classic BPF programs. */
export const BPF_MAXINSNS = 4096;

/** The environment variable the agent reads its filter from. */
export const AGENT_SECCOMP_ENV = 'RUNBOX_AGENT_SECCOMP';

/** A program the kernel could accept: whole records, 1..BPF_MAXINSNS of them. */
export function isFilterProgram(buf: Buffer): boolean {
  return buf.length > 0 && buf.length % SOCK_FILTER_BYTES === 0 && buf.length / SOCK_FILTER_BYTES <= BPF_MAXINSNS;
}

/**
 * Names the program of this profile as compiled by this runc build (its `--version` text names
 * runc, its commit and its libseccomp) on this architecture: another runc or profile, another key.
 */
export function seccompCacheKey(runcVersion: string, profile: unknown = vpsSeccompProfile(), arch: string = process.arch): string {
  return createHash('sha256').update(JSON.stringify({ profile, runcVersion: runcVersion.trim(), arch })).digest('hex').slice(0, 24);
}

export const seccompCacheFile = (cacheDir: string, key: string): string => path.join(cacheDir, `seccomp-${key}.bpf`);

const DIGEST_BYTES = 32;
const digest = (buf: Buffer): Buffer => createHash('sha256').update(buf).digest();

/**
 * The cached program, or undefined when there is none, or it is damaged (the file is its SHA-256
 * and then the program) or not a program: then runc compiles it again. A damaged program handed
 * to every agent would fail every create (the agent refuses to start without its filter).
 */
export async function readCachedFilter(file: string): Promise<Buffer | undefined> {
  const raw = await fs.readFile(file).catch(() => undefined);
  if (!raw || raw.length <= DIGEST_BYTES) return undefined;
  const program = raw.subarray(DIGEST_BYTES);
  return isFilterProgram(program) && digest(program).equals(raw.subarray(0, DIGEST_BYTES)) ? Buffer.from(program) : undefined;
}

/**
 * Written under a unique name and renamed: a reader never sees half a program. Programs cached
 * under other keys (an older runc, an older profile) are removed: one per host is in use.
 */
export async function writeCachedFilter(file: string, buf: Buffer): Promise<void> {
  if (!isFilterProgram(buf)) throw new Error(`not a seccomp program (${buf.length} bytes)`);
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  try {
    await fs.writeFile(tmp, Buffer.concat([digest(buf), buf]), { mode: 0o600 });
    await fs.rename(tmp, file);
  } finally {
    await fs.rm(tmp, { force: true });
  }
  const dir = path.dirname(file);
  const stale = (await fs.readdir(dir)).filter((n) => /^seccomp-[0-9a-f]+\.bpf$/.test(n) && n !== path.basename(file));
  await Promise.all(stale.map((n) => fs.rm(path.join(dir, n), { force: true })));
}
