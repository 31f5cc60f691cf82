/** The closed set of error kinds. The HTTP layer maps each to a status exactly once. */
export const ERROR_CODES = [
  'invalid_argument',
  'not_found',
  'conflict',
  'limit_exceeded',
  'unavailable',
  'internal',
  'template_missing',
  'host_lost',
  'checkpoint_incompatible',
  'host_unsupported',
  /** The job's processes cannot be checkpointed (or moved) by the hosts involved. */
  'checkpoint_unsupported',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class RunboxError extends Error {
  readonly meta?: object;
  constructor(
    readonly code: ErrorCode,
    message: string,
    opts?: ErrorOptions & { meta?: object },
  ) {
    super(message, opts);
    this.name = new.target.name;
    this.meta = opts?.meta;
  }
}

export function isRunboxError(e: unknown, code?: ErrorCode): e is RunboxError {
  return e instanceof RunboxError && (code === undefined || e.code === code);
}

/** Message of any thrown value, for logs and problem details. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
