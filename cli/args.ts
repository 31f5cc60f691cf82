import { parseArgs } from 'node:util';
import { RunboxError } from '../core/errors.js';

/** Small helpers shared by the CLI's subcommands. */
type Options = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>['options']>;

/** parseArgs in strict mode; a bad flag is an invalid_argument naming the usage. */
export function strict(args: string[], options: Options, usage: string) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new RunboxError('invalid_argument', `${(e as Error).message}\nusage: ${usage}`);
  }
}

/** Exactly one positional argument. */
export function one(positionals: string[], usage: string): string {
  if (positionals.length !== 1) throw new RunboxError('invalid_argument', `usage: ${usage}`);
  return positionals[0]!;
}

/** A plain text table, columns padded, the last one free. */
export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [head, ...rows].map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}
