import fs from 'node:fs';

/** A process identity that survives pid reuse: pid plus its start time (clock ticks since boot). */
export interface ProcessRef {
  pid: number;
  start: number;
}

/** State (field 3) and start time (field 22) of a process, from /proc/<pid>/stat; undefined when gone. */
function readStat(pid: number): { state: string; start: number } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '', start: Number(fields[19]) };
  } catch {
    return undefined;
  }
}

export function processStart(pid: number): number | undefined {
  return readStat(pid)?.start;
}

export function selfRef(): ProcessRef {
  return { pid: process.pid, start: processStart(process.pid) ?? 0 };
}

export function isAlive(ref: ProcessRef): boolean {
  return processStart(ref.pid) === ref.start;
}

/** Whether the process has ended: gone, another process under its pid, or a zombie not yet reaped. */
export function hasExited(ref: ProcessRef): boolean {
  const stat = readStat(ref.pid);
  return !stat || stat.start !== ref.start || stat.state === 'Z' || stat.state === 'X';
}
