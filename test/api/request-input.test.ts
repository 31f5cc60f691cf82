import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../core/canonical-json.js';
import { parseWait } from '../../api/request-input.js';
import { checkFiles } from '../../core/submit.js';
import { formatPath } from '../../api/validate.js';
import { isRunboxError } from '../../core/errors.js';
import { MiB } from '../../core/units.js';

const limits = { memoryMb: 64, cpus: 1, pids: 64, diskMb: 16, timeoutSec: 10, outputBytes: 1024 };

describe('checkFiles', () => {
  it('counts decoded bytes against the job disk', () => {
    const half = Buffer.alloc(8 * MiB, 7).toString('base64');
    expect(() => checkFiles({ '/a': { content: half, encoding: 'base64' } }, limits)).not.toThrow();
    try {
      checkFiles({ '/a': { content: half, encoding: 'base64' }, '/b': { content: 'x'.repeat(8 * MiB + 1), encoding: 'utf8' } }, limits);
      expect.unreachable();
    } catch (e) {
      expect(isRunboxError(e, 'limit_exceeded')).toBe(true);
      expect((e as { meta: object }).meta).toMatchObject({ field: 'files' });
    }
  });

  it('accepts padded, unpadded and wrapped base64 and refuses garbage', () => {
    for (const content of ['aGk=', 'aGk', 'aGVsbG8gd29y\nbGQ=', '']) {
      expect(() => checkFiles({ '/a': { content, encoding: 'base64' } }, limits)).not.toThrow();
    }
    for (const content of ['a', 'aGk=x', '****', 'aG=k']) {
      expect(() => checkFiles({ '/a': { content, encoding: 'base64' } }, limits), content).toThrow(/base64/);
    }
  });
});

describe('parseWait', () => {
  it('prefers the query and reads RFC 7240 preferences', () => {
    expect(parseWait(undefined, undefined)).toEqual({ sec: 0, fromPrefer: false });
    expect(parseWait('2.5', 'wait=9')).toEqual({ sec: 2.5, fromPrefer: false });
    expect(parseWait(undefined, 'respond-async, wait=12')).toEqual({ sec: 12, fromPrefer: true });
    expect(parseWait(undefined, 'return=minimal')).toEqual({ sec: 0, fromPrefer: false });
    expect(() => parseWait(undefined, 'wait=forever')).toThrow(/Prefer/);
    expect(() => parseWait('300.5', undefined)).toThrow(/wait/);
  });
});

describe('canonicalJson', () => {
  it('sorts keys at every level and drops undefined members', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: undefined } })).toBe('{"a":{"d":[1,{"y":2,"z":1}]},"b":1}');
  });
});

describe('formatPath', () => {
  it('writes identifiers dotted, indexes and other keys in brackets', () => {
    expect(formatPath(['limits', 'memoryMb'])).toBe('limits.memoryMb');
    expect(formatPath(['command', 0])).toBe('command[0]');
    expect(formatPath(['files', '/etc/x', 'content'])).toBe('files["/etc/x"].content');
    expect(formatPath([])).toBe('');
  });
});
