import type { Job, JobRequest } from './job.js';
import type { Limits } from './limits.js';

/** The record of a freshly accepted job. */
export function newJobRecord(id: string, req: JobRequest, limits: Limits, now = new Date()): Job {
  const at = now.toISOString();
  return {
    id,
    status: 'queued',
    template: req.template,
    network: req.network,
    priority: req.priority,
    labels: req.labels,
    limits,
    host: null,
    attempt: 0,
    exitCode: null,
    signal: null,
    oomKilled: false,
    error: null,
    createdAt: at,
    startedAt: null,
    finishedAt: null,
    usage: null,
    outputBytes: 0,
    outputTruncated: false,
    artifacts: [],
    artifactsTruncated: false,
    cancelRequested: false,
    runAs: null,
    progress: null,
    checkpoints: [],
    migrations: [],
    history: [{ status: 'queued', at }],
  };
}
