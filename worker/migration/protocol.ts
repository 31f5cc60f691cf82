import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { z } from 'zod';
import { ERROR_CODES, RunboxError, type ErrorCode } from '../../core/errors.js';
import { HostnameSchema, NetworkModeSchema, TemplateNameSchema } from '../../core/vps-request.js';
import type { VpsSpec } from '../../runtime/vps.js';
import type { FileSpec } from './files.js';

/**
 * The messages of the migration channel (worker/migration/transport.ts carries them over mutual
 * TLS). Every request is one JSON line; a move's line is followed by its checkpoint files
 * (files.ts); the target answers with one JSON line.
 *
 *   prepare  the job keeps running while the target gets the template version (and the VPS's network)
 *   release  a move that will not come: the target destroys what it prepared for it
 *   move     the frozen job's header, then its checkpoint files
 *
 * Each request carries an envelope the target checks before it acts: the source and target host
 * ids (the source's must be the one its certificate authenticated), a fresh random nonce (used at
 * most once, remembered in Redis) and an expiry. A request recorded on the wire (or in a log) can
 * neither be replayed nor sent to another host.
 */
export const PROTOCOL_VERSION = 1;
/** How long a request is valid after the source made it. */
export const MESSAGE_TTL_MS = 60_000;
/** Hosts' clocks may differ this much (expiry checks allow for it; run NTP). */
export const MAX_CLOCK_SKEW_MS = 30_000;
/** Longest request or answer line. */
export const MAX_LINE_BYTES = 64 * 1024;
/** The source waits this long for a move's answer; the target gives up receiving its files after it too. */
export const ANSWER_TIMEOUT_MS = 180_000;
/** Post-copy: the longest either side waits for the pages to have moved (the source serving, the target fetching). */
export const PAGES_TIMEOUT_MS = 600_000;
/** Room beyond a job's memory limit for CRIU's own images (process tree, fds, mm, tmpfs archives, network config). */
export const IMAGES_MARGIN_BYTES = 32 * 1024 * 1024;
/** Room beyond a job's disk limit for its disk image (the image's apparent size is the limit). */
export const DISK_MARGIN_BYTES = 16 * 1024 * 1024;

const MiB = 1024 * 1024;
const HostIdSchema = z.string().regex(/^[A-Za-z0-9._-]{1,253}$/, 'a host id');
const IdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'an id');
const Ipv4Schema = z.ipv4();
const TemplateSchema = z.object({ name: TemplateNameSchema, hash: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'a template version') }).strict();

/** A VPS's spec as it travels (its template by name and content hash, the job's own limits). */
export type WireSpec = Omit<VpsSpec, 'template'> & { template: { name: string; hash: string } };
const SpecSchema: z.ZodType<WireSpec> = z
  .object({
    template: TemplateSchema,
    hostname: HostnameSchema,
    network: NetworkModeSchema,
    memoryMb: z.number().int().min(1).max(1 << 22),
    cpus: z.number().positive().max(4096),
    pids: z.number().int().min(1).max(1 << 22),
    diskMb: z.number().int().min(1).max(1 << 26),
  })
  .strict();

const MovingSchema = {
  vpsId: IdSchema,
  spec: SpecSchema,
  network: z.object({ mode: NetworkModeSchema, address: Ipv4Schema.optional() }).strict(),
};

const Envelope = {
  v: z.literal(PROTOCOL_VERSION),
  /** 128 random bits, used once. */
  nonce: z.string().regex(/^[0-9a-f]{32}$/, '32 hex digits'),
  /** Milliseconds since the epoch, on the source's clock. */
  expiresAt: z.number().int().nonnegative(),
  from: HostIdSchema,
  to: HostIdSchema,
  jobId: IdSchema,
  migrationId: IdSchema,
};

export const PrepareSchema = z
  .object({ ...Envelope, kind: z.literal('prepare'), template: TemplateSchema, vps: z.object(MovingSchema).strict().optional() })
  .strict();
export const ReleaseSchema = z.object({ ...Envelope, kind: z.literal('release'), vpsId: IdSchema }).strict();
export const MoveSchema = z
  .object({
    ...Envelope,
    kind: z.literal('move'),
    ...MovingSchema,
    frozenAt: z.number().int().nonnegative(),
    mode: z.enum(['stop-and-copy', 'post-copy']),
    /** Post-copy: where the source's CRIU page server serves the memory pages (the source's own address). */
    pageServer: z.object({ address: Ipv4Schema, port: z.number().int().min(1).max(65535) }).strict().optional(),
  })
  .strict();
export const MessageSchema = z.discriminatedUnion('kind', [PrepareSchema, ReleaseSchema, MoveSchema]);

export type Prepare = z.infer<typeof PrepareSchema>;
export type Release = z.infer<typeof ReleaseSchema>;
export type Move = z.infer<typeof MoveSchema>;
export type Message = z.infer<typeof MessageSchema>;
/** What the source moves: the VPS's id there, its spec and network. */
export type Moving = Pick<Move, 'vpsId' | 'spec' | 'network'>;
export type MigrationMode = Move['mode'];

export const AnswerSchema = z
  .object({
    ok: z.boolean(),
    resumedAt: z.number().int().optional(),
    code: z.enum(ERROR_CODES).optional(),
    message: z.string().max(16_384).optional(),
    postCopy: z.boolean().optional(),
    /** The target's OCI runtime: CRIU images of runc and crun VPSs do not restore under the other. */
    runtime: z.enum(['runc', 'crun']).optional(),
    /** Whether the target's VPSs have user namespaces: a VPS moves only between hosts that agree. */
    userns: z.boolean().optional(),
  })
  .strict();
export type Answer = z.infer<typeof AnswerSchema>;

type Envelope = 'v' | 'nonce' | 'expiresAt' | 'from' | 'to';
/** Distributes Omit over the union, so each kind keeps its own fields. */
type Body<M> = M extends Message ? Omit<M, Envelope> : never;

/** A request from `from` to `to`, with a fresh nonce, valid for MESSAGE_TTL_MS from `now`. */
export function seal<B extends Body<Message>>(body: B, route: { from: string; to: string }, now = Date.now()): B & Pick<Message, Envelope> {
  return { v: PROTOCOL_VERSION, nonce: randomBytes(16).toString('hex'), expiresAt: now + MESSAGE_TTL_MS, ...route, ...body };
}

/** A request line, validated; any other shape is refused without echoing it. */
export function parseMessage(line: string): Message {
  return parseLine(line, MessageSchema, 'invalid_argument', {
    notJson: 'migration refused: the request is not JSON',
    malformed: (why) => `migration refused: malformed request (${why})`,
  });
}

export function parseAnswer(line: string): Answer {
  return parseLine(line, AnswerSchema, 'unavailable', {
    notJson: 'the target answered something that is not JSON',
    malformed: (why) => `the target's answer is malformed (${why})`,
  });
}

/** One JSON line checked against `schema`, or a RunboxError with `code` that never echoes the line. */
function parseLine<T>(line: string, schema: z.ZodType<T>, code: ErrorCode, say: { notJson: string; malformed: (issues: string) => string }): T {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    throw new RunboxError(code, say.notJson);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new RunboxError(code, say.malformed(issues(parsed.error)));
  return parsed.data;
}

function issues(e: z.ZodError): string {
  return e.issues
    .slice(0, 3)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

/**
 * Whether a request may be acted on here: sent by the host its certificate authenticated
 * (`peer`), to this host (`self`), not expired and not issued too far ahead. Its nonce is checked
 * afterwards (claim.ts), once. Pure; `now` is this host's clock.
 */
export function checkEnvelope(m: Pick<Message, Envelope>, o: { peer: string; self: string; now: number }): void {
  const refuse = (why: string) => {
    throw new RunboxError('invalid_argument', `migration refused: ${why}`);
  };
  if (m.from !== o.peer) refuse(`the request says it comes from ${m.from}, but the peer's certificate is ${o.peer}'s`);
  if (m.to !== o.self) refuse(`the request is for host ${m.to}, not ${o.self}`);
  if (m.expiresAt + MAX_CLOCK_SKEW_MS < o.now) refuse(`the request expired ${o.now - m.expiresAt} ms ago (a replay, or clocks that differ)`);
  if (m.expiresAt > o.now + MESSAGE_TTL_MS + MAX_CLOCK_SKEW_MS) refuse('the request expires too far in the future (clocks that differ?)');
}

/** How long a nonce must be remembered: until its request can no longer pass checkEnvelope. */
export function nonceTtlMs(m: Pick<Message, 'expiresAt'>, now: number): number {
  return Math.max(1000, m.expiresAt + MAX_CLOCK_SKEW_MS - now + 1000);
}

/**
 * The files a move carries, on either side (`dir`: the move's transfer dir), with the most each
 * may hold: CRIU's images up to the job's memory limit (plus CRIU's own metadata), its disk image
 * up to its disk limit. Both sides use this list; what a move sends is changed here.
 */
export function checkpointFiles(dir: string, spec: Pick<WireSpec, 'memoryMb' | 'diskMb'>): FileSpec[] {
  return [
    { name: 'images', path: path.join(dir, 'images'), dir: true, maxBytes: spec.memoryMb * MiB + IMAGES_MARGIN_BYTES },
    { name: 'disk.img', path: path.join(dir, 'disk.img'), maxBytes: spec.diskMb * MiB + DISK_MARGIN_BYTES },
  ];
}
