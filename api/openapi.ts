import { z } from 'zod';
import { JobRequestSchema, JobSchema, LogEventSchema } from '../core/job.js';
import { PROBLEM_CODES, problemStatus, ProblemSchema } from './problem.js';
import { MAX_WAIT_SEC } from './request-input.js';
import { ArtifactListSchema, ListQuerySchema, HealthSchema, HostListSchema, JobListSchema, LogEndEventSchema, ReadySchema, TemplateListSchema } from './schemas.js';

/**
 * OpenAPI 3.1 for /openapi.json, generated from the zod schemas the routes validate with (3.1
 * uses JSON Schema 2020-12, which is what z.toJSONSchema emits). Paths are written here; every
 * body schema is a generated component.
 */
type Json = Record<string, unknown>;

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });

function componentSchemas(): Record<string, Json> {
  const clean = (s: Json): Json => {
    const { $schema: _s, $id: _i, ...rest } = s;
    return rest;
  };
  const out = z.registry<{ id: string }>();
  const outputs: Record<string, z.ZodType> = {
    Job: JobSchema,
    JobList: JobListSchema,
    LogEvent: LogEventSchema,
    LogEndEvent: LogEndEventSchema,
    ArtifactList: ArtifactListSchema,
    HostList: HostListSchema,
    TemplateList: TemplateListSchema,
    Problem: ProblemSchema,
    Health: HealthSchema,
    Ready: ReadySchema,
  };
  for (const [id, s] of Object.entries(outputs)) out.add(s, { id });
  const generated = z.toJSONSchema(out, { uri: (id) => `#/components/schemas/${id}`, unrepresentable: 'any' }).schemas as Record<string, Json>;
  const schemas: Record<string, Json> = {};
  for (const [id, s] of Object.entries(generated)) schemas[id] = clean(s);
  // Requests are documented as clients write them: fields with defaults are optional.
  schemas.JobRequest = {
    ...clean(z.toJSONSchema(JobRequestSchema, { io: 'input', unrepresentable: 'any' }) as Json),
    description: 'Exactly one of "command" and "script" is required.',
  };
  return schemas;
}

const json = (schema: Json, description: string): Json => ({ description, content: { 'application/json': { schema } } });

function problems(...codes: string[]): Record<string, Json> {
  const byStatus = new Map<number, string[]>();
  for (const code of codes) {
    const status = problemStatus(code as (typeof PROBLEM_CODES)[number]);
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const out: Record<string, Json> = {};
  for (const [status, cs] of byStatus) {
    out[String(status)] = { description: `problem: ${cs.join(', ')}`, content: { 'application/problem+json': { schema: ref('Problem') } } };
  }
  return out;
}

const AUTHED = ['unauthorized', 'rate_limited'];
const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string' }, description: 'job id' };

function queryParams(schema: z.ZodObject): Json[] {
  return Object.entries(schema.shape).map(([name, s]) => {
    const js = z.toJSONSchema(s as z.ZodType, { io: 'input', unrepresentable: 'any' }) as Json;
    const { $schema: _s, ...rest } = js;
    return { name, in: 'query', required: false, schema: rest, ...(rest.type === 'array' ? { style: 'form', explode: true } : {}) };
  });
}

/** Groups operations in the reference: jobs, cluster, operations. */
function tagged(paths: Record<string, Record<string, Json>>): Record<string, Record<string, Json>> {
  const tag = (p: string) => (p.startsWith('/v1/jobs') ? 'jobs' : p.startsWith('/v1/') ? 'cluster' : 'operations');
  return Object.fromEntries(Object.entries(paths).map(([p, ops]) => [p, Object.fromEntries(Object.entries(ops).map(([m, op]) => [m, { tags: [tag(p)], ...op }]))]));
}

export function buildOpenApi(version = '0.1.0'): Json {
  const jobResponse = json(ref('Job'), 'the job');
  return {
    openapi: '3.1.0',
    info: {
      title: 'runbox API',
      version,
      description: 'Run jobs in fresh, isolated VPSs. Errors are RFC 9457 problem+json with a stable `code`.',
    },
    servers: [{ url: '/' }],
    security: [{ bearerAuth: [] }],
    components: {
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: 'a tenant token (RUNBOX_API_TOKENS or the token file)' } },
      schemas: componentSchemas(),
    },
    tags: [
      { name: 'jobs', description: 'submit, watch and control jobs' },
      { name: 'cluster', description: 'hosts and templates' },
      { name: 'operations', description: 'probes (no auth), metrics (metrics or admin token), this description (no auth)' },
    ],
    paths: tagged({
      '/v1/jobs': {
        post: {
          operationId: 'createJob',
          summary: 'Create a job',
          parameters: [
            { name: 'wait', in: 'query', required: false, schema: { type: 'number', minimum: 0, maximum: MAX_WAIT_SEC }, description: 'hold the response until the job ends or this many seconds pass' },
            { name: 'Prefer', in: 'header', required: false, schema: { type: 'string' }, description: `RFC 7240 "wait=N" (same as ?wait; max ${MAX_WAIT_SEC})` },
            { name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', minLength: 1, maxLength: 200 }, description: 'retries with the same key and body return the first job (200) instead of creating another' },
          ],
          requestBody: { required: true, content: { 'application/json': { schema: ref('JobRequest') } } },
          responses: {
            '201': jobResponse,
            '200': json(ref('Job'), 'the job created earlier with the same Idempotency-Key'),
            ...problems('invalid_argument', 'conflict', 'payload_too_large', 'limit_exceeded', 'quota_exceeded', 'template_missing', 'unavailable', ...AUTHED),
          },
        },
        get: {
          operationId: 'listJobs',
          summary: "List the tenant's jobs, newest first",
          parameters: queryParams(ListQuerySchema),
          responses: { '200': json(ref('JobList'), 'a page of jobs'), ...problems('invalid_argument', ...AUTHED) },
        },
      },
      '/v1/jobs/{id}': {
        get: { operationId: 'getJob', summary: 'Get a job', parameters: [idParam], responses: { '200': jobResponse, ...problems('not_found', ...AUTHED) } },
      },
      '/v1/jobs/{id}/cancel': {
        post: {
          operationId: 'cancelJob',
          summary: 'Cancel a job',
          parameters: [idParam],
          responses: {
            '200': json(ref('Job'), 'a queued job, now canceled'),
            '202': json(ref('Job'), 'a running job, being stopped (cancelRequested: true)'),
            ...problems('not_found', 'conflict', ...AUTHED),
          },
        },
      },
      '/v1/jobs/{id}/checkpoint': {
        post: {
          operationId: 'checkpointJob',
          summary: 'Checkpoint a running job now (CRIU, leave-running); the job keeps running',
          parameters: [idParam],
          responses: {
            '201': {
              description: 'the checkpoint',
              content: {
                'application/json': {
                  schema: {
                    type: 'object',
                    properties: { id: { type: 'string' }, createdAt: { type: 'string' }, sizeBytes: { type: 'number' }, outputOffset: { type: 'number' } },
                    required: ['id', 'createdAt', 'sizeBytes', 'outputOffset'],
                  },
                },
              },
            },
            ...problems('not_found', 'conflict', 'checkpoint_unsupported', 'unavailable', ...AUTHED),
          },
          description: 'At most one request per job per RUNBOX_CHECKPOINT_MIN_INTERVAL_SEC (429 rate_limited with Retry-After).',
        },
      },
      '/v1/jobs/{id}/migrate': {
        post: {
          operationId: 'migrateJob',
          summary: 'Move a running job, live, to another host',
          description: 'Only admin tokens may name the target `host`; without it runbox picks the host with the most free capacity. `mode` auto: post-copy where both hosts can.',
          parameters: [idParam],
          requestBody: {
            required: false,
            content: {
              'application/json': {
                schema: { type: 'object', additionalProperties: false, properties: { host: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,63}$' }, mode: { type: 'string', enum: ['auto', 'post-copy', 'stop-and-copy'] } } },
              },
            },
          },
          responses: { '200': json(ref('Job'), 'the job, moved (see its migrations)'), ...problems('invalid_argument', 'not_found', 'conflict', 'forbidden', 'checkpoint_unsupported', 'checkpoint_incompatible', 'unavailable', ...AUTHED) },
        },
      },
      '/v1/jobs/{id}/logs': {
        get: {
          operationId: 'getJobLogs',
          summary: 'Combined output, as text or a live SSE stream',
          description:
            'With `Accept: text/event-stream`: `event: output` messages whose data is a LogEvent and whose `id` is the byte offset just past the chunk; ' +
            'resume with `Last-Event-ID` (or `?offset=`) to get the chunks at or after that offset. A final `event: end` carries a LogEndEvent. ' +
            'Comment lines (`: keepalive`) every 15 s.',
          parameters: [
            idParam,
            { name: 'offset', in: 'query', required: false, schema: { type: 'integer', minimum: 0 }, description: 'start at the first chunk at or after this byte offset' },
            { name: 'follow', in: 'query', required: false, schema: { type: 'string', enum: ['0', '1', 'true', 'false'] }, description: 'keep streaming until the job ends' },
            { name: 'Last-Event-ID', in: 'header', required: false, schema: { type: 'string' }, description: 'SSE resume point (the last id received)' },
          ],
          responses: {
            '200': {
              description: 'output',
              content: { 'text/plain': { schema: { type: 'string' } }, 'text/event-stream': { schema: { type: 'string' }, 'x-events': { output: ref('LogEvent'), end: ref('LogEndEvent') } } },
            },
            ...problems('invalid_argument', 'not_found', ...AUTHED),
          },
        },
      },
      '/v1/jobs/{id}/artifacts': {
        get: { operationId: 'listArtifacts', summary: 'Files collected when the job ended', parameters: [idParam], responses: { '200': json(ref('ArtifactList'), 'artifacts'), ...problems('not_found', ...AUTHED) } },
      },
      '/v1/jobs/{id}/artifacts/{path}': {
        get: {
          operationId: 'getArtifact',
          summary: "One artifact's bytes",
          parameters: [idParam, { name: 'path', in: 'path', required: true, schema: { type: 'string' }, description: 'the artifact path as listed, without its leading slash (may contain /)' }],
          responses: { '200': { description: 'the file', content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } } }, ...problems('not_found', ...AUTHED) },
        },
      },
      '/v1/hosts': {
        get: {
          operationId: 'listHosts',
          summary: 'Live worker hosts and their pools',
          description: 'Admin tokens see whole host records; other tokens do not see addresses, ports, instances or job ids.',
          responses: { '200': json(ref('HostList'), 'hosts'), ...problems(...AUTHED) },
        },
      },
      '/v1/hosts/{id}/drain': {
        post: {
          operationId: 'drainHost',
          summary: 'Admin: stop taking jobs on a host and move its running jobs away',
          parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' }, description: 'host id' }],
          responses: { '200': { description: 'the host and what moved / stayed', content: { 'application/json': { schema: { type: 'object' } } } }, ...problems('not_found', 'forbidden', 'unavailable', ...AUTHED) },
        },
      },
      '/v1/hosts/{id}/resume': {
        post: {
          operationId: 'resumeHost',
          summary: 'Admin: let a drained host take jobs again',
          parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' }, description: 'host id' }],
          responses: { '200': { description: 'the host', content: { 'application/json': { schema: { type: 'object' } } } }, ...problems('not_found', 'forbidden', 'unavailable', ...AUTHED) },
        },
      },
      '/v1/templates': { get: { operationId: 'listTemplates', summary: 'Templates and the hosts that have them built', responses: { '200': json(ref('TemplateList'), 'templates'), ...problems(...AUTHED) } } },
      '/healthz': { get: { operationId: 'healthz', summary: 'Liveness', security: [], responses: { '200': json(ref('Health'), 'alive') } } },
      '/readyz': {
        get: { operationId: 'readyz', summary: 'Readiness: Redis answers and a worker host heartbeats', security: [], responses: { '200': json(ref('Ready'), 'ready'), ...problems('unavailable') } },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          summary: 'Prometheus metrics (text format 0.0.4)',
          description: 'Bearer token: RUNBOX_METRICS_TOKEN (for a scraper) or a token with the admin role.',
          responses: { '200': { description: 'metrics', content: { 'text/plain': { schema: { type: 'string' } } } }, ...problems('unauthorized', 'forbidden') },
        },
      },
      '/openapi.json': { get: { operationId: 'openapi', summary: 'This document', security: [], responses: { '200': { description: 'OpenAPI 3.1', content: { 'application/json': { schema: { type: 'object' } } } } } } },
    }),
  };
}
