import { pino, destination, type Logger } from 'pino';

export type { Logger };

/** Structured logger; components take child loggers carrying vpsId/jobId/hostId. */
export function createLogger(level: string, name = 'runbox'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, destination(2));
}
