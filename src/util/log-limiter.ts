/**
 * Rate limit for log lines a guest can trigger per request (rejections, I/O errors): at most
 * `perInterval` lines per `intervalMs` per limiter; the lines dropped meanwhile are counted and
 * reported as `suppressed` on the next line that passes. A guest flooding bad requests then
 * costs a counter increment per request, not a log write.
 */
import type { Logger } from './logger';

export class LogLimiter {
  private windowStart = 0;
  private inWindow = 0;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly perInterval = 10,
    private readonly intervalMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  warn(fields: Record<string, unknown>, msg: string): void {
    this.emit('warn', fields, msg);
  }

  error(fields: Record<string, unknown>, msg: string): void {
    this.emit('error', fields, msg);
  }

  private emit(level: 'warn' | 'error', fields: Record<string, unknown>, msg: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.intervalMs) {
      this.windowStart = t;
      this.inWindow = 0;
    }
    if (this.inWindow >= this.perInterval) {
      this.suppressed++;
      return;
    }
    this.inWindow++;
    if (this.suppressed > 0) {
      this.log[level]({ ...fields, suppressed: this.suppressed }, msg);
      this.suppressed = 0;
    } else {
      this.log[level](fields, msg);
    }
  }
}
