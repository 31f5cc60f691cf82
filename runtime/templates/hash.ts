import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * Content hashes that name template versions. A template's hash covers its recipe folder (every
 * file's relative path, content and executable bit, in sorted order) and the builder inputs that
 * change the result (a host binary's hash, the parent template's hash, the Debian mirror, ...).
 * Equal hashes on two hosts mean "built from the same recipe and inputs": what checkpoint restore
 * on another host relies on.
 *
 * Only the executable bit of a file's mode counts: git records nothing else, and the rest depends
 * on the umask of whoever checked the repository out.
 */
export const HASH_LENGTH = 16;
const FORMAT = 'runbox-template-v1';

export async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** sha256 over a folder: sorted relative paths, file contents (or symlink targets), executable bits. */
export async function treeSha256(dir: string): Promise<string> {
  const entries: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const items = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    for (const it of items) {
      const r = rel ? `${rel}/${it.name}` : it.name;
      if (it.isDirectory()) await walk(r);
      else entries.push(r);
    }
  };
  await walk('');
  entries.sort();
  const h = createHash('sha256');
  for (const rel of entries) {
    const full = path.join(dir, rel);
    const st = await fs.lstat(full);
    if (st.isSymbolicLink()) h.update(`L\0${rel}\0${await fs.readlink(full)}\0`);
    else if (st.isFile()) h.update(`F\0${rel}\0${st.mode & 0o111 ? 'x' : '-'}\0${await fileSha256(full)}\0`);
    // sockets, fifos, devices: not recipe material, ignored
  }
  return h.digest('hex');
}

/** The version name: first HASH_LENGTH hex chars of sha256(format, recipe tree hash, sorted inputs). */
export function templateHash(recipeTree: string, inputs: Record<string, string>): string {
  const h = createHash('sha256').update(`${FORMAT}\0recipe\0${recipeTree}\0`);
  for (const k of Object.keys(inputs).sort()) h.update(`${k}\0${inputs[k]}\0`);
  return h.digest('hex').slice(0, HASH_LENGTH);
}
