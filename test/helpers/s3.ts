import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startEmbeddedS3, type EmbeddedS3 } from '../../cli/embedded-s3.js';
import { S3ObjectStore } from '../../core/objects/s3.js';

/** A real S3 server (the embedded one, over HTTP on loopback) in a directory of its own, and a client for it. */
export interface TestS3 {
  server: EmbeddedS3;
  objects: S3ObjectStore;
  dir: string;
  cleanup(): Promise<void>;
}

export async function testS3(name: string): Promise<TestS3> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `runbox-s3-${name}-`));
  const server = await startEmbeddedS3(dir);
  const objects = new S3ObjectStore(server.location);
  await objects.ensureBucket();
  return {
    server,
    objects,
    dir,
    cleanup: async () => {
      objects.close();
      await server.stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
