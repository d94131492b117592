/**
 * Per-period statistics of a benchmark run (PeriodMeter), on top of the log-linear
 * LatencyHistogram of src/metrics.
 */
import { LatencyHistogram } from '../metrics/latency-histogram';

/** One data period of a run (the unit of the JSON lines, the chart and the progress line). */
export interface PeriodSample {
  /** End of the period, seconds since the start of the run. */
  t: number;
  /** Length of the period in seconds. */
  seconds: number;
  ops: number;
  reads: number;
  writes: number;
  iops: number;
  /** Mean and 99th percentile completion latency of the period in ms (0 when no request completed). */
  meanLatencyMs: number;
  p99LatencyMs: number;
  /** Read hit rate of the cache over the period in [0, 1], or null when unknown (no cache, no reads). */
  readHitRate: number | null;
}

const NS_PER_MS = 1e6;

/**
 * Completions of the current period plus the whole run. record() counts one completed request;
 * sample() closes the period (folding it into `total`) and starts the next one.
 */
export class PeriodMeter {
  /** Latencies (ns) of every request of the closed periods. */
  readonly total = new LatencyHistogram();
  /** Latencies (ns) of every read, and of every other request, since the start (open period included). */
  readonly readTotal = new LatencyHistogram();
  readonly writeTotal = new LatencyHistogram();
  private readonly period = new LatencyHistogram();
  private reads = 0;
  private writes = 0;
  private lastT: number;

  /** `startT`: start of the first period, seconds. */
  constructor(startT = 0) {
    this.lastT = startT;
  }

  /** One completed request with its latency in nanoseconds. */
  record(latencyNs: number, read: boolean): void {
    this.period.record(latencyNs);
    if (read) {
      this.reads++;
      this.readTotal.record(latencyNs);
    } else {
      this.writes++;
      this.writeTotal.record(latencyNs);
    }
  }

  /** Closes the period ending at `t` seconds; `readHitRate` comes from the cache statistics. */
  sample(t: number, readHitRate: number | null = null): PeriodSample {
    const seconds = t - this.lastT;
    const ops = this.period.count;
    const s: PeriodSample = {
      t,
      seconds,
      ops,
      reads: this.reads,
      writes: this.writes,
      iops: seconds > 0 ? ops / seconds : 0,
      meanLatencyMs: this.period.mean / NS_PER_MS,
      p99LatencyMs: this.period.percentile(99) / NS_PER_MS,
      readHitRate,
    };
    this.total.merge(this.period);
    this.period.reset();
    this.reads = 0;
    this.writes = 0;
    this.lastT = t;
    return s;
  }
}
