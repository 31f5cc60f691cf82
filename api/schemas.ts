import { z } from 'zod';
import { ArtifactSchema, JobSchema, JobStatusSchema } from '../core/job.js';
import { HostSchema } from '../core/store/hosts.js';

/**
 * API shapes that are not core contracts themselves (the job request and the job come from
 * core/job.ts). All of them feed /openapi.json.
 */

/** GET /v1/jobs query (`label` may repeat). */
export const ListQuerySchema = z.object({
  status: JobStatusSchema.optional(),
  label: z.array(z.string().regex(/^[^=]+=/, 'a label filter key=value')).default([]),
  limit: z.coerce.number().int().min(1).max(200).default(50),
  cursor: z.string().regex(/^\d{1,18}:[a-z0-9]{1,40}$/, 'a nextCursor from a previous page').optional(),
});

export const JobListSchema = z.object({
  jobs: z.array(JobSchema),
  nextCursor: z.string().nullable().describe('pass as ?cursor= for the next page; null on the last page'),
});

export const ArtifactListSchema = z.object({
  artifacts: z.array(ArtifactSchema),
  truncated: z.boolean().describe('true when some files were not collected (size cap)'),
});

export const HostListSchema = z.object({ hosts: z.array(HostSchema) });

export const TemplateVersionSchema = z.object({
  hash: z.string().describe('content hash (version) of the build'),
  hosts: z.array(z.string()).describe('ids of live hosts whose current version this is'),
  sizeBytes: z.number().int().nullable().describe('size of the root filesystem'),
  builtAt: z.string().nullable().describe('when it was built (ISO 8601)'),
});
export const TemplateInfoSchema = z.object({
  name: z.string(),
  hosts: z.array(z.string()).describe('ids of live hosts that have it built'),
  hash: z.string().nullable().describe('content hash of the build; null until a host builds it (the first job that asks builds it)'),
  sizeBytes: z.number().int().nullable().describe('size of that version\'s root filesystem'),
  builtAt: z.string().nullable().describe('when that version was built (ISO 8601)'),
  versions: z.array(TemplateVersionSchema).describe('every version live hosts have, most widely built first'),
});
export const TemplateListSchema = z.object({ templates: z.array(TemplateInfoSchema) });

export const HealthSchema = z.object({ ok: z.literal(true) });
export const ReadySchema = z.object({ ok: z.literal(true), redis: z.literal(true), hosts: z.number().int() });

/** SSE `event: end` payload. */
export const LogEndEventSchema = z.object({
  status: JobStatusSchema.nullable().describe('null when the job no longer exists'),
  exitCode: z.number().int().nullable().optional(),
  signal: z.number().int().nullable().optional(),
  oomKilled: z.boolean().optional(),
  error: z.object({ code: z.string(), message: z.string() }).nullable().optional(),
  outputBytes: z.number().int().optional(),
  outputTruncated: z.boolean().optional(),
  finishedAt: z.string().nullable().optional(),
});
