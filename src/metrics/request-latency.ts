/**
 * Request latency of one volume, recorded on the hot path at a fixed, small cost (a bucket
 * search over 19 bounds and one log-linear histogram bucket; no allocation, no label hashing,
 * no clock read).
 *
 * - Per request type: counts per Prometheus bucket (LATENCY_BUCKETS_S, 10 µs .. 10 s), sum and
 *   count, read at scrape time by the `vbc_request_latency_seconds` histogram (src/control/metrics).
 * - Per volume: p50/p90/p99/p99.9 since start and over the last full window of
 *   RECENT_WINDOW_MS (the previous window once the current one is older than that), for
 *   GET /stats and `stats --watch`.
 */
import { LatencyHistogram, type LatencySummary } from './latency-histogram';

/** The request types that reach the store, in the order of their index. */
export const REQUEST_TYPES = ['read', 'write', 'flush', 'discard', 'write-zeroes'] as const;
export type RequestType = (typeof REQUEST_TYPES)[number];

/** Upper bounds (seconds) of the Prometheus buckets: 10 µs .. 10 s, 1-2.5-5 steps. */
export const LATENCY_BUCKETS_S: readonly number[] = [
  10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10,
];

/** Length of the window the "recent" percentiles cover. */
export const RECENT_WINDOW_MS = 10_000;

/** One type's cumulative Prometheus histogram. */
export interface TypeLatency {
  type: RequestType;
  /** Cumulative count per bound of LATENCY_BUCKETS_S (le semantics). */
  buckets: number[];
  sumSeconds: number;
  count: number;
}

/** Percentiles in µs (0 when no request completed in the period). */
export interface LatencyPercentiles {
  count: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
}

export interface VolumeLatency {
  /** Since the volume was opened. */
  total: LatencyPercentiles;
  /** The last full RECENT_WINDOW_MS window (empty until one has passed). */
  recent: LatencyPercentiles & { windowSeconds: number };
}

function percentiles(s: LatencySummary): LatencyPercentiles {
  const us = (ns: number): number => Math.round(ns / 10) / 100;
  return { count: s.count, meanUs: us(s.mean), p50Us: us(s.p50), p90Us: us(s.p90), p99Us: us(s.p99), p999Us: us(s.p999) };
}

class TypeCounts {
  /** Non-cumulative; the last entry counts values above the largest bound (+Inf). */
  readonly counts = new Float64Array(LATENCY_BUCKETS_S.length + 1);
  sum = 0;
  count = 0;

  record(seconds: number): void {
    let i = 0;
    while (i < LATENCY_BUCKETS_S.length && seconds > (LATENCY_BUCKETS_S[i] as number)) i++;
    this.counts[i]++;
    this.sum += seconds;
    this.count++;
  }
}

export class RequestLatency {
  private readonly types = REQUEST_TYPES.map(() => new TypeCounts());
  /** Every closed window; the total is this plus `current`. */
  private readonly closed = new LatencyHistogram();
  private current = new LatencyHistogram();
  private previous = new LatencyHistogram();
  /** summary()'s total (closed + current), reused. */
  private readonly scratch = new LatencyHistogram();
  private windowStart: number;

  /** `now`: the clock of record()'s `at` (performance.now() in the daemon). */
  constructor(private readonly now: () => number = () => performance.now()) {
    this.windowStart = now();
  }

  /**
   * One completed request of type REQUEST_TYPES[type] that took `ms` milliseconds and completed
   * at `at` (the caller has just read the clock; reading it again here would double the cost).
   */
  record(type: number, ms: number, at: number): void {
    if (at - this.windowStart >= RECENT_WINDOW_MS) this.rotate(at);
    (this.types[type] as TypeCounts).record(ms / 1000);
    this.current.record(ms * 1e6);
  }

  /** Cumulative per-type histograms (types with no request included, as zeros). */
  byType(): TypeLatency[] {
    return this.types.map((t, i) => {
      let acc = 0;
      const buckets = LATENCY_BUCKETS_S.map((_, b) => (acc += t.counts[b] as number));
      return { type: REQUEST_TYPES[i] as RequestType, buckets, sumSeconds: t.sum, count: t.count };
    });
  }

  summary(): VolumeLatency {
    this.rotate(this.now());
    this.scratch.reset();
    this.scratch.merge(this.closed);
    this.scratch.merge(this.current);
    return {
      total: percentiles(this.scratch.summary()),
      recent: { ...percentiles(this.previous.summary()), windowSeconds: RECENT_WINDOW_MS / 1000 },
    };
  }

  /** Closes the current window once it is RECENT_WINDOW_MS old (two windows: nothing recent). */
  private rotate(t: number): void {
    if (t - this.windowStart < RECENT_WINDOW_MS) return;
    const elapsedWindows = Math.floor((t - this.windowStart) / RECENT_WINDOW_MS);
    this.closed.merge(this.current);
    const spare = this.previous;
    spare.reset();
    this.previous = this.current;
    this.current = spare;
    if (elapsedWindows > 1) this.previous.reset();
    this.windowStart += elapsedWindows * RECENT_WINDOW_MS;
  }
}
