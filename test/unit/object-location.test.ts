import { describe, expect, it } from 'vitest';
import { parseEnv } from '../../core/config.js';
import { describeLocation, locationEnv, objectStoreChoice, parseObjectStoreUrl } from '../../core/objects/location.js';
import { checkKey, checkPrefix, hashingStream } from '../../core/objects/store.js';

const choice = (env: Record<string, string>) => objectStoreChoice(parseEnv(env));

describe('RUNBOX_OBJECT_STORE', () => {
  it('defaults to the directory store; "embedded" and s3:// URLs are recognised', () => {
    expect(choice({})).toEqual({ kind: 'dir' });
    expect(choice({ RUNBOX_OBJECT_STORE: 'embedded' })).toEqual({ kind: 'embedded' });
    expect(parseObjectStoreUrl('s3://ci-bucket')).toEqual({ bucket: 'ci-bucket', prefix: '' });
    expect(parseObjectStoreUrl('s3://ci-bucket/team/a/')).toEqual({ bucket: 'ci-bucket', prefix: 'team/a/' });
  });

  it.each([
    ['s3://Bad_Bucket', 'not a valid bucket name'],
    ['s3://ab', 'not a valid bucket name'],
    ['s3://10.0.0.1', 'not a valid bucket name'],
    ['s3://a..b', 'not a valid bucket name'],
    ['s3://bucket/../etc', 'prefix'],
    ['s3://bucket/a/b/c/d/e', 'prefix'],
    ['s3://bucket/a b', 'prefix'],
    ['http://bucket', 'expected s3://'],
    ['/var/lib/x', 'expected s3://'],
  ])('refuses %s', (url, message) => {
    expect(() => parseObjectStoreUrl(url)).toThrow(message);
  });

  it('path style follows an endpoint unless set; credentials come as a pair; the description has no secret; the env handed to a child names the same store', () => {
    const s3 = choice({ RUNBOX_OBJECT_STORE: 's3://bkt/p', RUNBOX_S3_ENDPOINT: 'http://127.0.0.1:9000', RUNBOX_S3_ACCESS_KEY_ID: 'AK', RUNBOX_S3_SECRET_ACCESS_KEY: 'SECRET' });
    expect(s3).toMatchObject({ kind: 's3', location: { bucket: 'bkt', prefix: 'p/', forcePathStyle: true, region: 'us-east-1' } });
    expect(choice({ RUNBOX_OBJECT_STORE: 's3://bkt' })).toMatchObject({ location: { forcePathStyle: false, credentials: undefined } });
    expect(choice({ RUNBOX_OBJECT_STORE: 's3://bkt', RUNBOX_S3_ENDPOINT: 'http://h:1', RUNBOX_S3_FORCE_PATH_STYLE: 'false' })).toMatchObject({ location: { forcePathStyle: false } });
    expect(() => choice({ RUNBOX_OBJECT_STORE: 's3://bkt', RUNBOX_S3_ACCESS_KEY_ID: 'AK' })).toThrow('set both');
    expect(() => parseEnv({ RUNBOX_S3_ENDPOINT: 'ftp://h' })).toThrow('RUNBOX_S3_ENDPOINT');
    if (s3.kind !== 's3') throw new Error('s3 expected');
    expect(describeLocation(s3.location)).toBe('s3://bkt/p/ at http://127.0.0.1:9000');
    // A child (cluster host) given this env reaches the same store.
    expect(choice(locationEnv(s3.location))).toEqual(s3);
  });
});

describe('object keys and the hashing stream', () => {
  it('takes plain segments only', () => {
    expect(checkKey('checkpoints/job12345678/000001-ab/data.tar')).toBe('checkpoints/job12345678/000001-ab/data.tar');
    for (const bad of ['', '/abs', 'a//b', 'a/../b', '../x', 'a/.hidden', 'a b', 'a/']) expect(() => checkKey(bad), bad).toThrow('invalid object key');
    expect(checkPrefix('checkpoints/job12345678/')).toBe('checkpoints/job12345678/');
    expect(() => checkPrefix('checkpoints')).toThrow('invalid object key prefix');
  });

  it('counts and hashes what passes, and fails past its cap', async () => {
    const h = hashingStream({ maxBytes: 5 });
    const done = new Promise((resolve, reject) => h.stream.on('finish', resolve).on('error', reject));
    h.stream.resume();
    h.stream.end(Buffer.from('abc'));
    await done;
    expect(h.result()).toEqual({ bytes: 3, sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' });
    const over = hashingStream({ maxBytes: 2, what: 'the thing' });
    const failed = new Promise<Error>((resolve) => over.stream.on('error', resolve));
    over.stream.resume();
    over.stream.write(Buffer.from('abc'));
    expect(await failed).toMatchObject({ code: 'limit_exceeded', message: 'the thing exceeds 2 bytes' });
  });
});
