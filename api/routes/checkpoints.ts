import { Hono } from 'hono';
import { RunboxError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import type { ApiEnv, RouteDeps } from '../deps.js';
import { ownJob } from '../own-job.js';

/** How long the API waits for the host running the job to answer a checkpoint request. */
const CHECKPOINT_TIMEOUT_SEC = 120;

/**
 * POST /v1/jobs/:id/checkpoint: asks the host running the job to checkpoint it now; the job keeps
 * running. Answers 201 with the checkpoint (id, createdAt, sizeBytes, outputOffset).
 */
export function checkpointRoutes(deps: RouteDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();

  app.post('/:id/checkpoint', async (c) => {
    const id = c.req.param('id');
    c.set('jobId', id);
    const job = await ownJob(deps.jobs, c.get('tenant'), id);
    if (job.status !== 'running' && job.status !== 'checkpointing') {
      throw new RunboxError('conflict', `job ${id} is ${job.status}; only a running job can be checkpointed`, { meta: { jobStatus: job.status } });
    }
    const host = job.host ? await deps.hosts.get(job.host) : null;
    if (!host) throw new RunboxError('unavailable', `the host running job ${id} (${job.host}) is not reachable`);
    const reply = newId(8);
    // A dedicated connection: BLPOP blocks it.
    const waiter = deps.redis.duplicate();
    try {
      const receivers = await deps.redis.publish(deps.keys.hostCommands(host.id), JSON.stringify({ op: 'checkpoint', jobId: id, reply }));
      if (receivers === 0) throw new RunboxError('unavailable', `host ${host.id} is not listening for commands`);
      const res = await waiter.blpop(deps.keys.reply(reply), CHECKPOINT_TIMEOUT_SEC);
      if (!res) throw new RunboxError('unavailable', `host ${host.id} did not answer within ${CHECKPOINT_TIMEOUT_SEC} s`);
      const answer = JSON.parse(res[1]) as { ok: true; result: unknown } | { ok: false; code: string; message: string };
      if (!answer.ok) {
        const code = answer.code === 'conflict' || answer.code === 'host_unsupported' ? answer.code : 'unavailable';
        throw new RunboxError(code, `checkpoint of job ${id} failed: ${answer.message}`);
      }
      return c.json(answer.result as object, 201);
    } finally {
      waiter.disconnect();
    }
  });

  return app;
}
