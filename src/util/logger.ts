/**
 * pino logger writing JSON lines to stderr, or to a file (--log-file) that SIGHUP reopens
 * (for logrotate). Child loggers carry the volume name.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export interface DaemonLogger {
  logger: Logger;
  /** Reopens the log file (after rotation); a no-op for stderr. */
  reopen(): void;
}

export function createLogger(level: string = process.env.VBC_LOG_LEVEL ?? 'info', file?: string): Logger {
  return createDaemonLogger(level, file).logger;
}

export function createDaemonLogger(level: string, file?: string): DaemonLogger {
  const dest = file === undefined ? pino.destination({ fd: 2, sync: true }) : pino.destination({ dest: file, append: true, mkdir: true, sync: true });
  const logger = pino({ level, base: { pid: process.pid } }, dest);
  return { logger, reopen: () => (file === undefined ? undefined : dest.reopen()) };
}

/** A logger that drops everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
