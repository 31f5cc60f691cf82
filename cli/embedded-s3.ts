import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { ObjectStoreLocation } from '../core/objects/location.js';
import { ensurePrivateDir, writePrivateFile } from '../runtime/host/private-dirs.js';

/**
 * The S3 server `runbox cluster up` (and `runbox up` with RUNBOX_OBJECT_STORE=embedded) starts
 * when no endpoint is configured: s3rver, an S3 API server in Node that keeps objects as files
 * under <state>/objects/data (docs/object-store-evaluation.md says why not MinIO or Ceph RGW on
 * these hosts). It runs in this process, listens on one address (loopback, or the cluster
 * bridge's), and accepts only this installation's own key pair, made once and kept 0600 in
 * <state>/objects/credentials.json (s3rver's built-in public key pair is revoked).
 */
export interface EmbeddedS3 {
  location: ObjectStoreLocation;
  stop(): Promise<void>;
}

export const EMBEDDED_BUCKET = 'runbox';

interface S3rverInstance {
  middleware: Array<(ctx: GateContext, next: () => Promise<void>) => Promise<void>>;
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: { closeAllConnections(): void };
}
interface S3rverAccount {
  createKeyPair(id: string, secret: string): void;
  revokeAccessKey(id: string): void;
}

interface GateContext {
  get(header: string): string;
  status: number;
  body: unknown;
  type: string;
}

const require = createRequire(import.meta.url);

/**
 * s3rver serves anyone, signed or not, and checks SigV4 requests only for a known access key id
 * (it does not compute their signatures). This gate, first in its chain, answers 403 to every
 * request that is not signed with this installation's access key id: that id is kept 0600 like
 * the API tokens, and the server listens only where VPSs cannot connect (loopback, the cluster bridge).
 */
export function accessKeyGate(accessKeyId: string) {
  const credential = `Credential=${accessKeyId}/`;
  return async (ctx: GateContext, next: () => Promise<void>): Promise<void> => {
    const auth = ctx.get('authorization');
    if (!auth.startsWith('AWS4-HMAC-SHA256 ') || !auth.includes(credential)) {
      ctx.status = 403;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>';
      return;
    }
    await next();
  };
}

async function credentials(dir: string): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  const file = path.join(dir, 'credentials.json');
  try {
    const c = JSON.parse(await fs.readFile(file, 'utf8')) as { accessKeyId?: unknown; secretAccessKey?: unknown };
    if (typeof c.accessKeyId === 'string' && /^[A-Z0-9]{20}$/.test(c.accessKeyId) && typeof c.secretAccessKey === 'string' && c.secretAccessKey.length >= 40) {
      return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey };
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && !(e instanceof SyntaxError)) throw e;
  }
  const made = {
    accessKeyId: `RB${randomBytes(9).toString('hex').toUpperCase()}`,
    secretAccessKey: randomBytes(30).toString('base64url'),
  };
  // An unreadable or malformed file is replaced; a new one is created only once (the first maker wins).
  const exists = await fs.stat(file).then(() => true, () => false);
  if (!(await writePrivateFile(file, JSON.stringify(made), { replace: exists }))) return credentials(dir);
  return made;
}

export async function startEmbeddedS3(stateDir: string, o: { address?: string; port?: number; log?: Logger } = {}): Promise<EmbeddedS3> {
  const dir = path.join(stateDir, 'objects');
  await ensurePrivateDir(dir, { log: o.log }); // every checkpoint (a job's memory and files) is in there
  await fs.mkdir(path.join(dir, 'data'), { recursive: true, mode: 0o700 });
  const creds = await credentials(dir);
  const S3rver = require('s3rver') as new (opts: object) => S3rverInstance;
  const account = (require('s3rver/lib/models/account.js') as { DUMMY_ACCOUNT: S3rverAccount }).DUMMY_ACCOUNT;
  account.revokeAccessKey('S3RVER');
  account.createKeyPair(creds.accessKeyId, creds.secretAccessKey);
  const address = o.address ?? '127.0.0.1';
  const server = new S3rver({ address, port: o.port ?? 0, directory: path.join(dir, 'data'), silent: true, resetOnClose: false });
  server.middleware.unshift(accessKeyGate(creds.accessKeyId));
  let info: AddressInfo;
  try {
    info = await server.run();
  } catch (e) {
    throw new RunboxError('unavailable', `could not start the embedded S3 server on ${address}: ${(e as Error).message}`, { cause: e });
  }
  const location: ObjectStoreLocation = {
    bucket: EMBEDDED_BUCKET,
    prefix: '',
    endpoint: `http://${address}:${info.port}`,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: creds,
  };
  o.log?.info({ endpoint: location.endpoint, dir }, 'embedded S3 server started');
  return {
    location,
    stop: async () => {
      const closing = server.close().catch(() => undefined);
      server.httpServer?.closeAllConnections(); // the SDK keeps connections alive: close() alone waits for them
      await closing;
      account.revokeAccessKey(creds.accessKeyId);
    },
  };
}
