/**
 * Which jobs a host can checkpoint (and so move). CRIU reads every dumped process's rlimits with
 * prlimit(2), which on another user's process needs CAP_SYS_RESOURCE: where root lacks it
 * (HOST-NOTES: these VMs), a dump of a process that runs as a non-root uid fails with
 * "Can't get rlimit 0: Operation not permitted". Such jobs are refused up front, and keep running.
 * In a VPS with a user namespace of its own (RUNBOX_USERNS) any job can: the namespace belongs to
 * host root, which holds every capability over its ids; such hosts publish checkpointNonRoot.
 */

/** `root`, `0`, `root:group`, `0:gid` (the forms the agent accepts, core/vps-request.ts). */
export function runsAsRoot(runAs: string | null | undefined): boolean {
  if (!runAs) return true; // not started yet, or no user: the agent's default is root
  const user = runAs.split(':')[0];
  return user === 'root' || user === '0';
}

export function canCheckpoint(runAs: string | null | undefined, host: { checkpointNonRoot?: boolean } | null | undefined): boolean {
  return runsAsRoot(runAs) || host?.checkpointNonRoot === true;
}

/** The problem text, one place for the API and the worker. */
export function nonRootMessage(jobId: string, runAs: string, hostIds: string[]): string {
  return (
    `job ${jobId} runs as user "${runAs}", and ${hostIds.length > 1 ? 'the hosts involved' : 'its host'} (${hostIds.join(', ')}) cannot checkpoint ` +
    'processes of non-root users (root there lacks CAP_SYS_RESOURCE, which CRIU needs to read their rlimits); ' +
    'the job keeps running. Run it as root to be able to checkpoint or move it.'
  );
}
