import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureTokenFile, parseTokens, TokenAuth } from '../../api/auth.js';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runbox-auth-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('parseTokens', () => {
  it('reads tenant=token lists and token files', () => {
    expect(parseTokens('alice=t1,bob=t=2', 'env')).toEqual([
      { tenant: 'alice', token: 't1', role: 'user' },
      { tenant: 'bob', token: 't=2', role: 'user' },
    ]);
    expect(parseTokens('# comment\n\n a=x1 \nb=y1, c=z1\n', 'file')).toEqual([
      { tenant: 'a', token: 'x1', role: 'user' },
      { tenant: 'b', token: 'y1', role: 'user' },
      { tenant: 'c', token: 'z1', role: 'user' },
    ]);
  });

  it('reads a role after the tenant name; a ":" in the token stays part of the token', () => {
    expect(parseTokens('ops:admin=s3cret,ci:user=t:admin,x=y:admin', 'env')).toEqual([
      { tenant: 'ops', token: 's3cret', role: 'admin' },
      { tenant: 'ci', token: 't:admin', role: 'user' },
      { tenant: 'x', token: 'y:admin', role: 'user' },
    ]);
    expect(() => parseTokens('ops:root=s3cret', 'env')).toThrow(/unknown role "root" for tenant "ops"/);
    expect(() => parseTokens(':admin=s3cret', 'env')).toThrow(/tenant name/);
  });

  it('names the bad entry without echoing its token', () => {
    expect(() => parseTokens('good=abc,bad tenant=secret123', 'RUNBOX_API_TOKENS')).toThrow(/RUNBOX_API_TOKENS entry 2/);
    expect(() => parseTokens('x=', 'f')).toThrow(/token of tenant "x"/);
    try {
      parseTokens('a=ok\nb=has space', 'tokens.txt');
    } catch (e) {
      expect((e as Error).message).toMatch(/tokens.txt line 2/);
      expect((e as Error).message).not.toContain('has space');
    }
  });
});

describe('TokenAuth', () => {
  it('maps tokens to tenants and refuses everything else', () => {
    const auth = new TokenAuth([
      { tenant: 'a', token: 'secret-a' },
      { tenant: 'b', token: 'secret-b' },
    ]);
    expect(auth.authenticate('secret-a')).toEqual({ tenant: 'a', admin: false });
    expect(auth.authenticate('secret-b')).toEqual({ tenant: 'b', admin: false });
    expect(auth.authenticate('secret-')).toBeNull();
    expect(auth.authenticate('secret-a ')).toBeNull();
    expect(auth.authenticate('')).toBeNull();
    expect(new TokenAuth([]).authenticate('anything')).toBeNull();
  });

  it('loads from the env value and a token file, a missing file being empty', async () => {
    const file = path.join(dir, 'tokens');
    await fs.writeFile(file, 'filetenant=from-file\n');
    const auth = await TokenAuth.load({ apiTokens: 'envtenant=from-env', tokenFile: file });
    expect(auth.size).toBe(2);
    expect(auth.authenticate('from-file')).toEqual({ tenant: 'filetenant', admin: false });
    expect(auth.authenticate('from-env')).toEqual({ tenant: 'envtenant', admin: false });
    expect((await TokenAuth.load({ tokenFile: path.join(dir, 'missing') })).size).toBe(0);
  });
});

describe('ensureTokenFile', () => {
  it('creates a 0600 file with a random admin token for "default" once, then returns it', async () => {
    const file = path.join(dir, 'state', 'api-tokens');
    const first = await ensureTokenFile(file);
    expect(first.tenant).toBe('default');
    expect(first.role).toBe('admin');
    expect(await fs.readFile(file, 'utf8')).toContain(`\ndefault:admin=${first.token}\n`);
    expect(Buffer.from(first.token, 'base64url')).toHaveLength(32);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    expect(await ensureTokenFile(file)).toEqual(first);
    expect((await TokenAuth.load({ tokenFile: file })).authenticate(first.token)).toEqual({ tenant: 'default', admin: true });
    const other = await ensureTokenFile(path.join(dir, 'other'));
    expect(other.token).not.toBe(first.token);
  });

  it('keeps an existing file and returns its first entry', async () => {
    const file = path.join(dir, 'tokens');
    await fs.writeFile(file, '# mine\nops=hand-written-token\n', { mode: 0o600 });
    expect(await ensureTokenFile(file)).toEqual({ tenant: 'ops', token: 'hand-written-token', role: 'user' });
  });

  it('gives the token of a file an older runbox generated the admin role it had by name, once', async () => {
    const file = path.join(dir, 'legacy');
    await fs.writeFile(file, '# runbox API tokens: tenant=token, one or more a line\ndefault=old-generated-token\n', { mode: 0o600 });
    expect(await ensureTokenFile(file)).toEqual({ tenant: 'default', token: 'old-generated-token', role: 'admin' });
    expect((await TokenAuth.load({ tokenFile: file })).authenticate('old-generated-token')).toEqual({ tenant: 'default', admin: true });
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    // A file someone edited is theirs: "default" stays a plain tenant there.
    const edited = path.join(dir, 'edited');
    await fs.writeFile(edited, '# runbox API tokens: tenant=token, one or more a line\ndefault=t1\nci=t2\n', { mode: 0o600 });
    expect(await ensureTokenFile(edited)).toEqual({ tenant: 'default', token: 't1', role: 'user' });
  });

  it('two concurrent first starts agree on one token', async () => {
    const file = path.join(dir, 'race');
    const [a, b] = await Promise.all([ensureTokenFile(file), ensureTokenFile(file)]);
    expect(a).toEqual(b);
  });
});
