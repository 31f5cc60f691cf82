import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../core/errors.js';

/** Tenant names end up in Redis keys and logs: keep them plain. */
export const TENANT_RE = /^[A-Za-z0-9._-]{1,63}$/;
const TOKEN_RE = /^[\x21-\x7e]{1,512}$/;

export interface TokenEntry {
  tenant: string;
  token: string;
}

/**
 * Parses `tenant=token,tenant2=token2`; a token file has the same format, one or more entries a
 * line, lines starting with `#` are comments. Errors name the entry's position, never the token.
 */
export function parseTokens(text: string, source: string): TokenEntry[] {
  const out: TokenEntry[] = [];
  text.split('\n').forEach((rawLine, lineNo) => {
    const line = rawLine.trim();
    if (!line || line.startsWith('#')) return;
    line.split(',').forEach((part, n) => {
      const entry = part.trim();
      if (!entry) return;
      const eq = entry.indexOf('=');
      const where = `${source}${text.includes('\n') ? ` line ${lineNo + 1}` : ''} entry ${n + 1}`;
      const tenant = eq > 0 ? entry.slice(0, eq) : '';
      const token = eq > 0 ? entry.slice(eq + 1) : '';
      if (!TENANT_RE.test(tenant)) throw new RunboxError('invalid_argument', `${where}: expected tenant=token with a tenant name of [A-Za-z0-9._-]{1,63}`);
      if (!TOKEN_RE.test(token)) throw new RunboxError('invalid_argument', `${where}: the token of tenant "${tenant}" must be 1 to 512 printable characters without spaces or commas`);
      out.push({ tenant, token });
    });
  });
  return out;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Bearer token → tenant. */
export class TokenAuth {
  private readonly entries: Array<{ tenant: string; digest: Buffer }>;

  constructor(entries: TokenEntry[]) {
    this.entries = entries.map((e) => ({ tenant: e.tenant, digest: digest(e.token) }));
  }

  /** Tokens from the `RUNBOX_API_TOKENS` value and/or a token file (a missing file is no error). */
  static async load(opts: { apiTokens?: string; tokenFile?: string }): Promise<TokenAuth> {
    const entries = opts.apiTokens ? parseTokens(opts.apiTokens, 'RUNBOX_API_TOKENS') : [];
    if (opts.tokenFile) {
      const text = await fs.readFile(opts.tokenFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return '';
        throw new RunboxError('invalid_argument', `cannot read token file ${opts.tokenFile}: ${e.message}`, { cause: e });
      });
      entries.push(...parseTokens(text, opts.tokenFile));
    }
    return new TokenAuth(entries);
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * The tenant owning `token`, or null. Compares SHA-256 digests (equal length whatever the token
   * length) with timingSafeEqual, and always against every entry, so timing says nothing about how
   * close a guess was or which entry matched.
   */
  authenticate(token: string): string | null {
    const d = digest(token);
    let found: string | null = null;
    for (const e of this.entries) if (timingSafeEqual(d, e.digest) && found === null) found = e.tenant;
    return found;
  }
}

/**
 * The token `runbox up` prints: the first entry of `file`, created on first start with a random
 * 32-byte token for tenant "default" (mode 0600: it is a credential).
 */
export async function ensureTokenFile(file: string): Promise<TokenEntry> {
  const existing = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (existing !== null) {
    const [first] = parseTokens(existing, file);
    if (first) return first;
  }
  const entry = { tenant: 'default', token: randomBytes(32).toString('base64url') };
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await fs.writeFile(tmp, `# runbox API tokens: tenant=token, one or more a line\n${entry.tenant}=${entry.token}\n`, { mode: 0o600 });
  await fs.chmod(tmp, 0o600);
  if (existing === null) {
    // link() fails if another process created the file meanwhile: then theirs wins.
    try {
      await fs.link(tmp, file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return ensureTokenFile(file);
      throw e;
    }
    await fs.rm(tmp, { force: true });
  } else {
    await fs.rename(tmp, file); // an existing file without entries: replace it
  }
  return entry;
}
