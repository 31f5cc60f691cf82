import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { writePrivateFile } from '../runtime/host/private-dirs.js';

/** Tenant names end up in Redis keys and logs: keep them plain. */
export const TENANT_RE = /^[A-Za-z0-9._-]{1,63}$/;
const TOKEN_RE = /^[\x21-\x7e]{1,512}$/;

/**
 * What a token may do besides its tenant's jobs. `admin`: drain/resume hosts, choose a migration
 * target, see hosts' addresses and ports, read /metrics. A role is never implied by a tenant name.
 */
export const ROLES = ['user', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface TokenEntry {
  tenant: string;
  token: string;
  /** Default `user`. */
  role?: Role;
}

/** Who a valid bearer token is. */
export interface Principal {
  tenant: string;
  admin: boolean;
}

/**
 * Parses `tenant[:role]=token` entries separated by commas (RUNBOX_API_TOKENS); a token file has
 * the same format, one or more entries a line, lines starting with `#` are comments. The role
 * goes with the tenant, left of the first `=`, where a `:` cannot be part of the name: tokens keep
 * every character they could have before (`=` and `:` included), and old `tenant=token` entries
 * mean what they meant (role user). Errors name the entry's position, never the token.
 */
export function parseTokens(text: string, source: string): Array<Required<TokenEntry>> {
  const out: Array<Required<TokenEntry>> = [];
  text.split('\n').forEach((rawLine, lineNo) => {
    const line = rawLine.trim();
    if (!line || line.startsWith('#')) return;
    line.split(',').forEach((part, n) => {
      const entry = part.trim();
      if (!entry) return;
      const eq = entry.indexOf('=');
      const where = `${source}${text.includes('\n') ? ` line ${lineNo + 1}` : ''} entry ${n + 1}`;
      const left = eq > 0 ? entry.slice(0, eq) : '';
      const token = eq > 0 ? entry.slice(eq + 1) : '';
      const colon = left.indexOf(':');
      const tenant = colon >= 0 ? left.slice(0, colon) : left;
      const role = colon >= 0 ? left.slice(colon + 1) : 'user';
      if (!TENANT_RE.test(tenant)) {
        throw new RunboxError('invalid_argument', `${where}: expected tenant=token or tenant:admin=token with a tenant name of [A-Za-z0-9._-]{1,63}`);
      }
      if (!(ROLES as readonly string[]).includes(role)) {
        throw new RunboxError('invalid_argument', `${where}: unknown role "${role.slice(0, 20)}" for tenant "${tenant}" (roles: ${ROLES.join(', ')}; write tenant:admin=token)`);
      }
      if (!TOKEN_RE.test(token)) throw new RunboxError('invalid_argument', `${where}: the token of tenant "${tenant}" must be 1 to 512 printable characters without spaces or commas`);
      out.push({ tenant, token, role: role as Role });
    });
  });
  return out;
}

/** `tenant:admin=token` (or `tenant=token` for role user): the line a token file holds. */
export const formatToken = (e: TokenEntry): string => `${e.tenant}${e.role === 'admin' ? ':admin' : ''}=${e.token}`;

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Bearer token → principal (tenant + admin role), and the metrics-only token of a Prometheus
 * scraper (RUNBOX_METRICS_TOKEN), which belongs to no tenant and opens nothing but /metrics.
 */
export class TokenAuth {
  private readonly entries: Array<{ principal: Principal; digest: Buffer }>;
  private readonly metrics?: Buffer;

  constructor(entries: TokenEntry[], opts: { metricsToken?: string } = {}) {
    this.entries = entries.map((e) => ({ principal: { tenant: e.tenant, admin: e.role === 'admin' }, digest: digest(e.token) }));
    if (opts.metricsToken !== undefined) {
      if (!TOKEN_RE.test(opts.metricsToken)) throw new RunboxError('invalid_argument', 'RUNBOX_METRICS_TOKEN must be 1 to 512 printable characters without spaces');
      if (entries.some((e) => e.token === opts.metricsToken)) {
        throw new RunboxError('invalid_argument', "RUNBOX_METRICS_TOKEN is also a tenant's token: give the scraper a token of its own");
      }
      this.metrics = digest(opts.metricsToken);
    }
  }

  /** Tokens from the `RUNBOX_API_TOKENS` value and/or a token file (a missing file is no error). */
  static async load(opts: { apiTokens?: string; tokenFile?: string; metricsToken?: string }): Promise<TokenAuth> {
    const entries: TokenEntry[] = opts.apiTokens ? parseTokens(opts.apiTokens, 'RUNBOX_API_TOKENS') : [];
    if (opts.tokenFile) {
      const text = await fs.readFile(opts.tokenFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return '';
        throw new RunboxError('invalid_argument', `cannot read token file ${opts.tokenFile}: ${e.message}`, { cause: e });
      });
      entries.push(...parseTokens(text, opts.tokenFile));
    }
    return new TokenAuth(entries, { metricsToken: opts.metricsToken });
  }

  get size(): number {
    return this.entries.length;
  }

  /** Tokens with the admin role. */
  get admins(): number {
    return this.entries.filter((e) => e.principal.admin).length;
  }

  /**
   * The tenant owning `token` and its role, or null. Compares SHA-256 digests (equal length
   * whatever the token length) with timingSafeEqual, and always against every entry, so timing
   * says nothing about how close a guess was or which entry matched.
   */
  authenticate(token: string): Principal | null {
    const d = digest(token);
    let found: Principal | null = null;
    for (const e of this.entries) if (timingSafeEqual(d, e.digest) && found === null) found = e.principal;
    return found;
  }

  /** Whether `token` is the metrics-only token (RUNBOX_METRICS_TOKEN). */
  isMetricsToken(token: string): boolean {
    return this.metrics !== undefined && timingSafeEqual(digest(token), this.metrics);
  }
}

const FILE_HEADER = '# runbox API tokens: tenant=token (role user) or tenant:admin=token, one or more a line';
/** What ensureTokenFile wrote before roles existed: its token was the operator's, admin by tenant name. */
const LEGACY_FILE = /^# runbox API tokens: tenant=token, one or more a line\ndefault=([\x21-\x2b\x2d-\x7e]{1,512})\n$/;

/**
 * The token `runbox up` and `cluster up` print: the first entry of `file`, created on first start
 * with a random 32-byte admin token for tenant "default" (the operator's; mode 0600: it is a
 * credential). A file exactly as an older runbox generated it (`default=token`, admin then by the
 * tenant's name) is rewritten once with the admin role, so its operator keeps the rights it had.
 */
export async function ensureTokenFile(file: string, opts: { log?: Logger } = {}): Promise<Required<TokenEntry>> {
  const existing = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  const legacy = existing === null ? null : LEGACY_FILE.exec(existing);
  if (existing !== null && !legacy) {
    const [first] = parseTokens(existing, file);
    if (first) return first;
  }
  const entry = { tenant: 'default', token: legacy?.[1] ?? randomBytes(32).toString('base64url'), role: 'admin' as const };
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const text = `${FILE_HEADER}\n${formatToken(entry)}\n`;
  // A new file: another process that created it meanwhile wins. An existing file without entries,
  // or the legacy one: replaced.
  if (!(await writePrivateFile(file, text, { replace: existing !== null }))) return ensureTokenFile(file, opts);
  if (legacy) opts.log?.warn({ file }, 'token file from an older runbox: its "default" token now has the admin role explicitly (default:admin=...)');
  return entry;
}
