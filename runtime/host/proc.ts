import fs from 'node:fs';

/** A process identity that survives pid reuse: pid plus its start time (clock ticks since boot). */
export interface ProcessRef {
  pid: number;
  start: number;
}

export function processStart(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

export function selfRef(): ProcessRef {
  return { pid: process.pid, start: processStart(process.pid) ?? 0 };
}

export function isAlive(ref: ProcessRef): boolean {
  return processStart(ref.pid) === ref.start;
}

/** Whether the process has ended: gone, another process under its pid, or a zombie not yet reaped. */
export function hasExited(ref: ProcessRef): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${ref.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]) !== ref.start || fields[0] === 'Z' || fields[0] === 'X';
  } catch {
    return true;
  }
}
