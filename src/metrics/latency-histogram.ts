/**
 * Latency statistics for millions of samples at O(1) cost per sample and fixed memory.
 *
 * LatencyHistogram is log-linear (like HdrHistogram with 8 significant bits): values
 * are non-negative integers (nanoseconds by convention, fractions rounded). Values below 256 get one
 * bucket each; above, each power-of-two octave [2^e, 2^(e+1)) is cut into 128 equal buckets, so a
 * bucket is at most 1/128 (0.78 %) of its lower bound wide and a reported value (bucket midpoint,
 * clamped to the observed min/max) is within 0.4 % of any value in the bucket.
 * Bucket index of v: v < 256 -> v; else with e = floor(log2 v), k = e - 7: k x 128 + floor(v / 2^k).
 * 47 octaves cover every double up to 2^53: 6016 buckets (48 KiB of Float64 counts).
 */

const SUB_BITS = 7;
const SUB = 1 << SUB_BITS; // 128 buckets per octave
const MAX_EXPONENT = 52;
const BUCKETS = (MAX_EXPONENT - SUB_BITS + 1) * SUB + SUB; // 6016
const TWO_POW_32 = 4294967296;
const MAX_VALUE = 2 ** 53 - 1;
/** 2^k for every octave shift (a table: `2 ** k` with a variable k calls pow(), on every sample). */
const POW2 = Float64Array.from({ length: MAX_EXPONENT + 1 }, (_, k) => 2 ** k);

function bucketOf(v: number): number {
  if (v < 2 * SUB) return v;
  if (v < TWO_POW_32) {
    const k = 31 - Math.clz32(v) - SUB_BITS;
    return k * SUB + (v >>> k);
  }
  const k = 63 - Math.clz32(Math.floor(v / TWO_POW_32)) - SUB_BITS;
  return k * SUB + Math.floor(v / POW2[k]);
}

/** Smallest and largest value of bucket i. */
function bucketBounds(i: number): [number, number] {
  if (i < 2 * SUB) return [i, i];
  const k = Math.floor(i / SUB) - 1;
  const mant = i - k * SUB;
  const unit = POW2[k];
  return [mant * unit, (mant + 1) * unit - 1];
}

export interface LatencySummary {
  count: number;
  min: number;
  max: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private total = 0;
  private lo = Infinity;
  private hi = -Infinity;

  /** Number of recorded values. */
  get count(): number {
    return this.n;
  }

  get min(): number {
    return this.n === 0 ? 0 : this.lo;
  }

  get max(): number {
    return this.n === 0 ? 0 : this.hi;
  }

  /** Exact mean of the recorded values (0 when empty). */
  get mean(): number {
    return this.n === 0 ? 0 : this.total / this.n;
  }

  /** Records one value (rounded to an integer, clamped to [0, 2^53 - 1]). */
  record(value: number): void {
    let v = Math.round(value);
    if (!(v >= 0)) v = 0;
    else if (v > MAX_VALUE) v = MAX_VALUE;
    this.counts[bucketOf(v)]++;
    this.n++;
    this.total += v;
    if (v < this.lo) this.lo = v;
    if (v > this.hi) this.hi = v;
  }

  /**
   * The value at percentile p (0 < p <= 100): the bucket holding the ceil(p/100 x count)-th
   * smallest value, reported as its midpoint clamped to [min, max]. 0 when empty.
   */
  percentile(p: number): number {
    if (!(p > 0 && p <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${p}`);
    if (this.n === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.n));
    let seen = 0;
    const first = bucketOf(this.lo);
    const last = bucketOf(this.hi);
    for (let i = first; i <= last; i++) {
      seen += this.counts[i];
      if (seen >= rank) {
        const [a, b] = bucketBounds(i);
        const mid = (a + b) / 2;
        return Math.min(this.hi, Math.max(this.lo, mid));
      }
    }
    return this.hi;
  }

  /** Adds every value recorded in `other`. */
  merge(other: LatencyHistogram): void {
    if (other.n === 0) return;
    const last = bucketOf(other.hi);
    for (let i = bucketOf(other.lo); i <= last; i++) this.counts[i] += other.counts[i];
    this.n += other.n;
    this.total += other.total;
    if (other.lo < this.lo) this.lo = other.lo;
    if (other.hi > this.hi) this.hi = other.hi;
  }

  reset(): void {
    if (this.n === 0) return;
    this.counts.fill(0, bucketOf(this.lo), bucketOf(this.hi) + 1);
    this.n = 0;
    this.total = 0;
    this.lo = Infinity;
    this.hi = -Infinity;
  }

  summary(): LatencySummary {
    return {
      count: this.n,
      min: this.min,
      max: this.max,
      mean: this.mean,
      p50: this.percentile(50),
      p90: this.percentile(90),
      p99: this.percentile(99),
      p999: this.percentile(99.9),
    };
  }
}
