/**
 * The daemon's pino logger. Format: human-readable lines (`12:00:01.234 INFO  [vm1] volume ready
 * sizeBytes=1073741824`) when the log goes to a terminal, JSON lines otherwise (a file, a pipe,
 * journald); `--log-format json|pretty` forces either. A log file (--log-file) is reopened by
 * reopen() (SIGHUP, for logrotate). Child loggers carry the volume name.
 */
import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface DaemonLogger {
  logger: Logger;
  /** Reopens the log file (after rotation); a no-op for stderr. */
  reopen(): void;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLOURS: Record<number, string> = { 10: '90', 20: '36', 30: '32', 40: '33', 50: '31', 60: '35' };
/** Fields every line carries that the pretty format shows elsewhere or not at all. */
const HIDDEN = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'volume']);

function fieldValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/**
 * Formats one pino JSON line: local time, level, [volume], message, then the other fields as
 * key=value. A line that is not JSON is passed through unchanged.
 */
export function formatPretty(line: string, colour: boolean): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const level = typeof rec.level === 'number' ? rec.level : 30;
  const t = new Date(typeof rec.time === 'number' ? rec.time : Date.now());
  const time = `${String(t.getHours()).padStart(2, '0')}:${String(t.getMinutes()).padStart(2, '0')}:${String(t.getSeconds()).padStart(2, '0')}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const name = (LEVEL_NAMES[level] ?? String(level)).padEnd(5);
  const lvl = colour ? `\x1b[${LEVEL_COLOURS[level] ?? '0'}m${name}\x1b[0m` : name;
  const vol = rec.volume !== undefined ? `[${String(rec.volume)}] ` : '';
  const fields = Object.entries(rec)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${k}=${fieldValue(v)}`);
  return `${time} ${lvl} ${vol}${String(rec.msg ?? '')}${fields.length > 0 ? ` ${fields.join(' ')}` : ''}\n`;
}

/** Whether `format` means pretty lines for a log going to stderr (file: always JSON unless forced). */
export function wantsPretty(format: LogFormat, file: string | undefined): boolean {
  if (format === 'auto') return file === undefined && process.stderr.isTTY === true;
  return format === 'pretty';
}

export function createDaemonLogger(level: string, file?: string, format: LogFormat = 'auto'): DaemonLogger {
  const colour = file === undefined && process.stderr.isTTY === true;
  // sonic-boom in sync mode (retries EAGAIN on a non-blocking fd, reopens files) under both formats.
  const boom = file === undefined ? pino.destination({ fd: 2, sync: true }) : pino.destination({ dest: file, append: true, mkdir: true, sync: true });
  const dest: DestinationStream = wantsPretty(format, file) ? { write: (line: string) => boom.write(formatPretty(line, colour)) } : boom;
  return { logger: pino({ level, base: { pid: process.pid } }, dest), reopen: () => (file === undefined ? undefined : boom.reopen()) };
}

/** A logger that drops everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
