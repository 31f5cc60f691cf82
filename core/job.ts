import { z } from 'zod';
import { LimitsSchema } from './limits.js';
import { EnvNameSchema, HostnameSchema, NetworkModeSchema, TemplateNameSchema, UserSchema, WorkdirSchema } from './vps-request.js';

/**
 * The job contract: request body, stored record and queue payload, shared by api/ and worker/
 * (and the source of /openapi.json). A breaking change to the queue payload gets a new job name.
 */
export const QUEUE_JOB_NAME = 'run.v1';

const FilePathSchema = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.split('/').includes('..') && !p.includes('\0'), 'an absolute path without ".." or NUL');

export const FileSchema = z
  .object({
    content: z.string().describe('file content, utf8 or base64 (see encoding)'),
    encoding: z.enum(['utf8', 'base64']).default('utf8'),
    mode: z.number().int().min(0).max(0o7777).optional().describe('permission bits, e.g. 493 (0755)'),
  })
  .strict();

export const JobRequestSchema = z
  .object({
    template: TemplateNameSchema.default('base'),
    command: z.array(z.string().max(65536)).min(1).max(4096).optional().describe('argv; exactly one of command and script'),
    script: z.string().min(1).max(1024 * 1024).optional().describe('a shell script run with /bin/sh'),
    env: z.record(EnvNameSchema, z.string().max(65536)).default({}),
    stdin: z.string().max(16 * 1024 * 1024).optional(),
    files: z.record(FilePathSchema, FileSchema).default({}).describe('files written into the VPS before the job starts'),
    workdir: WorkdirSchema.optional(),
    user: UserSchema.optional(),
    hostname: HostnameSchema.optional(),
    limits: LimitsSchema.optional(),
    network: NetworkModeSchema.default('none'),
    artifacts: z.array(z.string().min(1).max(4096)).max(64).default([]).describe('paths or globs collected when the job ends'),
    checkpoint: z.object({ everySec: z.number().int().min(5).optional() }).strict().optional(),
    priority: z.number().int().min(0).max(100).default(50).describe('higher runs first'),
    labels: z.record(z.string().min(1).max(63).regex(/^[A-Za-z0-9_.\/-]+$/), z.string().max(256)).default({}),
  })
  .strict()
  .refine((j) => (j.command === undefined) !== (j.script === undefined), {
    message: 'exactly one of "command" and "script" is required',
    path: ['command'],
  });
export type JobRequest = z.infer<typeof JobRequestSchema>;
export type JobRequestInput = z.input<typeof JobRequestSchema>;

export const JOB_STATUSES = ['queued', 'starting', 'running', 'checkpointing', 'migrating', 'succeeded', 'failed', 'canceled', 'timed_out'] as const;
export const JobStatusSchema = z.enum(JOB_STATUSES);
export type JobStatus = (typeof JOB_STATUSES)[number];
export const TERMINAL: readonly JobStatus[] = ['succeeded', 'failed', 'canceled', 'timed_out'];
export const isTerminal = (s: JobStatus): boolean => TERMINAL.includes(s);

export const JobErrorSchema = z.object({ code: z.string(), message: z.string() });

export const UsageSchema = z.object({ cpuMs: z.number(), memoryPeakBytes: z.number(), wallMs: z.number() });

export const ArtifactSchema = z.object({ path: z.string(), size: z.number(), mode: z.number() });

/** The job as stored and as returned by GET /v1/jobs/:id. */
export const JobSchema = z.object({
  id: z.string(),
  status: JobStatusSchema,
  template: z.string(),
  network: NetworkModeSchema,
  priority: z.number(),
  labels: z.record(z.string(), z.string()),
  limits: LimitsSchema.required(),
  host: z.string().nullable(),
  attempt: z.number().int().describe('how many times a worker started this job'),
  exitCode: z.number().int().nullable(),
  signal: z.number().int().nullable(),
  oomKilled: z.boolean(),
  error: JobErrorSchema.nullable(),
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  finishedAt: z.string().nullable(),
  usage: UsageSchema.nullable(),
  outputBytes: z.number().int(),
  outputTruncated: z.boolean(),
  artifacts: z.array(ArtifactSchema),
  artifactsTruncated: z.boolean(),
  cancelRequested: z.boolean(),
  /**
   * The user the job's process runs as (its `user`, else its template's default), set when it
   * starts; null before. Hosts whose root lacks CAP_SYS_RESOURCE cannot checkpoint non-root jobs.
   */
  runAs: z.string().nullable().default(null),
  /** What the job waits for before it runs, while it does (e.g. its template being built, with the build's progress); null otherwise. */
  progress: z.string().nullable().default(null),
  checkpoints: z.array(z.object({ id: z.string(), createdAt: z.string(), sizeBytes: z.number(), outputOffset: z.number() })),
  migrations: z.array(z.object({ from: z.string(), to: z.string(), startedAt: z.string(), totalMs: z.number(), frozenMs: z.number(), mode: z.string() })),
  history: z.array(z.object({ status: JobStatusSchema, at: z.string(), host: z.string().nullable().optional(), note: z.string().optional() })),
});
export type Job = z.infer<typeof JobSchema>;

/** What the queue carries: ids only; the request lives in Redis next to the record. */
export const QueuePayloadSchema = z
  .object({
    jobId: z.string().regex(/^[a-z0-9]{8,40}$/),
    tenant: z.string().min(1),
    /**
     * Recovery entries (worker/job/reaper.ts): the lease holder the reaper found gone (or alive but
     * not running the job); the recovering worker takes the lease only from exactly this holder.
     */
    orphanOf: z.string().max(200).optional(),
  })
  .strict();
export type QueuePayload = z.infer<typeof QueuePayloadSchema>;

/** Output chunk as stored and as sent over SSE. `offset` is the byte offset of `data` in the combined output. */
export const LogEventSchema = z.object({ stream: z.enum(['stdout', 'stderr']), data: z.string(), offset: z.number().int() });
export type LogEvent = z.infer<typeof LogEventSchema>;
