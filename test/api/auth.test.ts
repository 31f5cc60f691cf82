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
      { tenant: 'alice', token: 't1' },
      { tenant: 'bob', token: 't=2' },
    ]);
    expect(parseTokens('# comment\n\n a=x1 \nb=y1, c=z1\n', 'file')).toEqual([
      { tenant: 'a', token: 'x1' },
      { tenant: 'b', token: 'y1' },
      { tenant: 'c', token: 'z1' },
    ]);
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
    expect(auth.authenticate('secret-a')).toBe('a');
    expect(auth.authenticate('secret-b')).toBe('b');
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
    expect(auth.authenticate('from-file')).toBe('filetenant');
    expect(auth.authenticate('from-env')).toBe('envtenant');
    expect((await TokenAuth.load({ tokenFile: path.join(dir, 'missing') })).size).toBe(0);
  });
});

describe('ensureTokenFile', () => {
  it('creates a 0600 file with a random token for "default" once, then returns it', async () => {
    const file = path.join(dir, 'state', 'api-tokens');
    const first = await ensureTokenFile(file);
    expect(first.tenant).toBe('default');
    expect(Buffer.from(first.token, 'base64url')).toHaveLength(32);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    expect(await ensureTokenFile(file)).toEqual(first);
    expect((await TokenAuth.load({ tokenFile: file })).authenticate(first.token)).toBe('default');
    const other = await ensureTokenFile(path.join(dir, 'other'));
    expect(other.token).not.toBe(first.token);
  });

  it('keeps an existing file and returns its first entry', async () => {
    const file = path.join(dir, 'tokens');
    await fs.writeFile(file, '# mine\nops=hand-written-token\n', { mode: 0o600 });
    expect(await ensureTokenFile(file)).toEqual({ tenant: 'ops', token: 'hand-written-token' });
  });

  it('two concurrent first starts agree on one token', async () => {
    const file = path.join(dir, 'race');
    const [a, b] = await Promise.all([ensureTokenFile(file), ensureTokenFile(file)]);
    expect(a).toEqual(b);
  });
});
