import { randomBytes } from 'node:crypto';
import { RunboxError } from './errors.js';

/** Short random id, lowercase hex: safe in paths, netns, cgroup and runc names. */
export function newId(bytes = 6): string {
  return randomBytes(bytes).toString('hex');
}

/** What a job id looks like (newId(10) makes them): never a path, key or name in disguise. */
export const JOB_ID = /^[a-z0-9]{8,40}$/;

/** `jobId` when it is a job id, else `invalid_argument`. */
export function checkJobId(jobId: string): string {
  if (!JOB_ID.test(jobId)) throw new RunboxError('invalid_argument', `invalid job id "${jobId}"`);
  return jobId;
}
