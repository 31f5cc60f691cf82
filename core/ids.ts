import { randomBytes } from 'node:crypto';

/** Short random id, lowercase hex: safe in paths, netns, cgroup and runc names. */
export function newId(bytes = 6): string {
  return randomBytes(bytes).toString('hex');
}
