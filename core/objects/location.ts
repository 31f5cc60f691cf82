import { z } from 'zod';
import { envFlag } from '../env-flag.js';

/**
 * Where a runbox installation keeps objects (checkpoints, artifacts): an S3 bucket and a key
 * prefix, at an endpoint (unset: the SDK's default, AWS). Pure: parsed from configuration, never
 * from anything a job or the store wrote.
 */
export interface ObjectStoreLocation {
  bucket: string;
  /** '' or ending with '/': every key runbox writes starts with it. */
  prefix: string;
  endpoint?: string;
  region: string;
  /** Path-style addressing (http://host/bucket/key): what self-hosted S3 servers expect. */
  forcePathStyle: boolean;
  /** Unset: the SDK's default chain (AWS_* variables, instance metadata). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** S3 bucket naming rules (3–63 lower-case letters, digits, dots, hyphens; no IP address form). */
const BUCKET = /^(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const PREFIX_SEGMENT = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * `s3://BUCKET[/PREFIX]` → bucket and prefix. The prefix is at most 4 plain segments: runbox adds
 * its own structure under it (checkpoints/, artifacts/).
 */
export function parseObjectStoreUrl(raw: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(raw.trim());
  if (!m) throw new Error(`invalid RUNBOX_OBJECT_STORE "${raw}": expected s3://BUCKET[/PREFIX], "embedded" or "dir"`);
  const bucket = m[1]!;
  if (!BUCKET.test(bucket) || bucket.includes('..')) throw new Error(`invalid RUNBOX_OBJECT_STORE "${raw}": "${bucket}" is not a valid bucket name (3–63 of a-z, 0-9, ".", "-")`);
  const segments = (m[2] ?? '').split('/').filter(Boolean);
  if (segments.length > 4 || !segments.every((s) => PREFIX_SEGMENT.test(s) && s !== '.' && s !== '..')) {
    throw new Error(`invalid RUNBOX_OBJECT_STORE "${raw}": the prefix must be at most 4 segments of A-Z, a-z, 0-9, ".", "_", "-"`);
  }
  return { bucket, prefix: segments.length ? `${segments.join('/')}/` : '' };
}

/** RUNBOX_OBJECT_STORE and its companions, as validated by core/config.ts. */
export const ObjectStoreEnvSchema = z.object({
  /**
   * dir (default): checkpoints in RUNBOX_CHECKPOINT_DIR, artifacts in Redis, one machine (or a
   * shared mount). s3://BUCKET[/PREFIX]: any S3-compatible store. embedded: `runbox up` /
   * `runbox cluster up` start a local S3 server (cli/embedded-s3.ts) and use it.
   */
  RUNBOX_OBJECT_STORE: z.string().min(1).default('dir'),
  RUNBOX_S3_ENDPOINT: z.url({ protocol: /^https?$/, error: 'an http(s) URL, e.g. http://127.0.0.1:9000' }).optional(),
  RUNBOX_S3_REGION: z.string().regex(/^[a-z0-9-]{1,32}$/).default('us-east-1'),
  RUNBOX_S3_ACCESS_KEY_ID: z.string().min(1).max(128).optional(),
  RUNBOX_S3_SECRET_ACCESS_KEY: z.string().min(1).max(256).optional(),
  RUNBOX_S3_FORCE_PATH_STYLE: envFlag,
});
export type ObjectStoreEnv = z.infer<typeof ObjectStoreEnvSchema>;

export type ObjectStoreChoice = { kind: 'dir' } | { kind: 'embedded' } | { kind: 's3'; location: ObjectStoreLocation };

/** Which store the environment asks for (pure). Credentials come as a pair or not at all. */
export function objectStoreChoice(e: ObjectStoreEnv): ObjectStoreChoice {
  const v = e.RUNBOX_OBJECT_STORE.trim();
  if (v === 'dir') return { kind: 'dir' };
  if (v === 'embedded') return { kind: 'embedded' };
  const { bucket, prefix } = parseObjectStoreUrl(v);
  const { RUNBOX_S3_ACCESS_KEY_ID: id, RUNBOX_S3_SECRET_ACCESS_KEY: secret } = e;
  if (!id !== !secret) throw new Error('invalid configuration:\n  RUNBOX_S3_ACCESS_KEY_ID, RUNBOX_S3_SECRET_ACCESS_KEY: set both, or neither (the SDK\'s default chain)');
  return {
    kind: 's3',
    location: {
      bucket,
      prefix,
      endpoint: e.RUNBOX_S3_ENDPOINT,
      region: e.RUNBOX_S3_REGION,
      forcePathStyle: e.RUNBOX_S3_FORCE_PATH_STYLE ?? !!e.RUNBOX_S3_ENDPOINT,
      credentials: id && secret ? { accessKeyId: id, secretAccessKey: secret } : undefined,
    },
  };
}

/** The location as text for logs and doctor: never the secret. */
export function describeLocation(l: ObjectStoreLocation): string {
  return `s3://${l.bucket}/${l.prefix}${l.endpoint ? ` at ${l.endpoint}` : ''}`;
}

/** Environment a child (cluster host, worker) needs to reach the same store. */
export function locationEnv(l: ObjectStoreLocation): Record<string, string> {
  const env: Record<string, string> = {
    RUNBOX_OBJECT_STORE: `s3://${l.bucket}/${l.prefix}`.replace(/\/$/, ''),
    RUNBOX_S3_REGION: l.region,
    RUNBOX_S3_FORCE_PATH_STYLE: l.forcePathStyle ? '1' : '0',
  };
  if (l.endpoint) env.RUNBOX_S3_ENDPOINT = l.endpoint;
  if (l.credentials) {
    env.RUNBOX_S3_ACCESS_KEY_ID = l.credentials.accessKeyId;
    env.RUNBOX_S3_SECRET_ACCESS_KEY = l.credentials.secretAccessKey;
  }
  return env;
}
