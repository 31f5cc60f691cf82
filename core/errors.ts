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

/** `invalid_argument` naming every bad field (`meta.errors`: path + message), at most 5 in the text. */
export function invalidArgument(what: string, errors: Array<{ path: string; message: string }>): RunboxError {
  const summary = errors
    .slice(0, 5)
    .map((e) => `${e.path}: ${e.message}`)
    .join('; ');
  const more = errors.length > 5 ? ` (and ${errors.length - 5} more)` : '';
  return new RunboxError('invalid_argument', `invalid ${what}: ${summary}${more}`, { meta: { errors } });
}

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
