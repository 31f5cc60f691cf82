import type { z } from 'zod';
import { invalidArgument, type RunboxError } from '../core/errors.js';
import type { FieldError } from './problem.js';

/** `limits.memoryMb`, `command[0]`, `files["/etc/x"]`: readable and unambiguous for any key. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && /^[A-Za-z_$][\w$]*$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

/** One entry per problem, naming the field; unknown keys and bad record keys get their own path. */
export function fieldErrors(issues: ReadonlyArray<z.core.$ZodIssue>, prefix: PropertyKey[] = []): FieldError[] {
  const out: FieldError[] = [];
  for (const i of issues) {
    const path = [...prefix, ...i.path];
    if (i.code === 'unrecognized_keys') {
      for (const k of i.keys) out.push({ path: formatPath([...path, k]), message: 'unknown field' });
    } else if (i.code === 'invalid_key') {
      out.push({ path: formatPath(path), message: `invalid key: ${i.issues.map((x) => x.message).join('; ')}` });
    } else {
      out.push({ path: formatPath(path) || '(body)', message: i.message });
    }
  }
  return out;
}

export function invalid(what: string, errors: FieldError[]): RunboxError {
  return invalidArgument(what, errors);
}

/** Parses or throws `invalid_argument` listing every issue with its path. */
export function parseOr400<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw invalid(what, fieldErrors(r.error.issues));
  return r.data;
}
