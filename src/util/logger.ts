/** pino logger writing JSON lines to stderr; child loggers carry the volume name. */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string = process.env.VBC_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
