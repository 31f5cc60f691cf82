/**
 * Live migration between hosts (docs/CHECKPOINT.md): source.ts moves a job away, target.ts takes
 * jobs in, over the authenticated, encrypted channel of transport.ts (credentials.ts: each host's
 * key and certificate; protocol.ts: the messages; files.ts: the checkpoint's files on the wire);
 * claim.ts keeps a job from having two live copies; faults.ts injects failures in tests.
 */
export { loadCredentials, type MigrationCredentials } from './credentials.js';
export type { MigrationDeps, MigrationPreference, MigrationResult } from './deps.js';
export { labelFaults, NoFaults, type MigrationFaults } from './faults.js';
export { FileSender } from './sender.js';
export { migrateOut } from './source.js';
export { MigrationServer } from './target.js';
