/**
 * One-line progress display of a benchmark run.
 * On a TTY the line is redrawn in place ("\r" + text + erase-to-end-of-line), at most every
 * `refreshMs`, cut to the terminal width. Elsewhere (a pipe, a log file) a plain line ending in "\n"
 * is written at most every `plainIntervalMs`. done() always writes the final status and a newline.
 */

export interface ProgressStatus {
  /** Seconds since the start of the run. */
  elapsed: number;
  /** Planned duration in seconds (absent: open-ended). */
  total?: number;
  /** Requests completed so far. */
  ops: number;
  /** Recent IOPS (e.g. of the last period). */
  iops: number;
  meanLatencyMs: number;
  p99LatencyMs?: number;
  /** Read hit rate in [0, 1], or null/absent when unknown. */
  readHitRate?: number | null;
}

/** The sink: process.stderr or anything with write() and, for a terminal, isTTY / columns. */
export interface ProgressSink {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  stream?: ProgressSink;
  /** Minimum time between TTY redraws (default 200 ms). */
  refreshMs?: number;
  /** Minimum time between plain lines when not a TTY (default 10 s). */
  plainIntervalMs?: number;
  /** Clock in ms (default performance.now), injectable for tests. */
  now?: () => number;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : ' '.repeat(n - s.length) + s;
}

function fmtSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)}s`;
  const whole = Math.floor(s);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const sec = String(whole % 60).padStart(2, '0');
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m${sec}s` : `${m}m${sec}s`;
}

function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

/** The status as one line, e.g. "[ 12.0s / 1m00s  20%] 1,600 IOPS  lat 0.52 ms  p99 1.20 ms  hit 70.1%  ops 19,200". */
export function formatProgress(st: ProgressStatus): string {
  let head = fmtSeconds(st.elapsed);
  if (st.total !== undefined && st.total > 0) {
    const pct = Math.min(100, Math.floor((st.elapsed / st.total) * 100));
    head = `${pad(head, 6)} / ${fmtSeconds(st.total)} ${pad(String(pct), 3)}%`;
  }
  const parts = [`[${head}]`, `${Math.round(st.iops).toLocaleString('en-US')} IOPS`, `lat ${fmtMs(st.meanLatencyMs)} ms`];
  if (st.p99LatencyMs !== undefined) parts.push(`p99 ${fmtMs(st.p99LatencyMs)} ms`);
  if (st.readHitRate !== undefined && st.readHitRate !== null) parts.push(`hit ${(st.readHitRate * 100).toFixed(1)}%`);
  parts.push(`ops ${st.ops.toLocaleString('en-US')}`);
  return parts.join('  ');
}

export class Progress {
  private readonly stream: ProgressSink;
  private readonly tty: boolean;
  private readonly refreshMs: number;
  private readonly plainIntervalMs: number;
  private readonly now: () => number;
  private last = -Infinity;
  private drawn = false;

  constructor(opts: ProgressOptions = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    this.refreshMs = opts.refreshMs ?? 200;
    this.plainIntervalMs = opts.plainIntervalMs ?? 10_000;
    this.now = opts.now ?? (() => performance.now());
  }

  /** Shows `st` unless the previous output is more recent than the refresh interval. */
  update(st: ProgressStatus): void {
    const t = this.now();
    if (t - this.last < (this.tty ? this.refreshMs : this.plainIntervalMs)) return;
    this.last = t;
    this.write(st, false);
  }

  /** Writes the final status and ends the line. */
  done(st: ProgressStatus): void {
    this.write(st, true);
    this.drawn = false;
  }

  private write(st: ProgressStatus, final: boolean): void {
    const line = formatProgress(st);
    if (!this.tty) {
      this.stream.write(`${line}\n`);
      return;
    }
    const cols = this.stream.columns ?? 0;
    const text = cols > 1 && line.length >= cols ? line.slice(0, cols - 1) : line;
    this.stream.write(`\r${text}\x1b[K${final ? '\n' : ''}`);
    this.drawn = !final;
  }

  /** Whether a TTY line is on screen without a newline (a caller printing other text ends it first). */
  get lineOpen(): boolean {
    return this.drawn;
  }
}
