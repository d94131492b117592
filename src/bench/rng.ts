/**
 * Seeded pseudo-random numbers for the benchmark workloads.
 *
 * Rng is xoshiro128** (Blackman & Vigna): 128 bits of state in four uint32 words, period 2^128 - 1,
 * fast in JavaScript because every step is 32-bit integer arithmetic (Math.imul, shifts). The state
 * is filled from the seed by a 32-bit splitmix-style mixer, so nearby seeds give unrelated streams.
 * The same seed always gives the same sequence, on every platform.
 */

const TWO_POW_32 = 4294967296;
const TWO_POW_53 = 9007199254740992;

/** One splitmix-style step: advances `x` by the golden-ratio increment and returns a mixed word. */
function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /**
   * `seed`: any finite number (integers up to 2^53 use all their bits); `lane`: an optional second
   * key giving an independent stream for the same seed (e.g. one per generator component).
   */
  constructor(seed: number, lane = 0) {
    if (!Number.isFinite(seed)) throw new RangeError(`Rng seed must be finite, got ${seed}`);
    const whole = Math.floor(Math.abs(seed));
    const lo = whole >>> 0;
    const hi = Math.floor(whole / TWO_POW_32) >>> 0;
    let x = mix32(lo ^ mix32(hi ^ 0x5bd1e995) ^ mix32(lane + 0x27d4eb2f));
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      words.push(mix32(x));
    }
    // xoshiro must not start from the all-zero state.
    if ((words[0] | words[1] | words[2] | words[3]) === 0) words[0] = 1;
    [this.s0, this.s1, this.s2, this.s3] = words;
  }

  /** Next uniform uint32 in [0, 2^32). */
  u32(): number {
    const s1 = this.s1;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return result;
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  float(): number {
    const a = this.u32() >>> 5; // 27 bits
    const b = this.u32() >>> 6; // 26 bits
    return (a * 67108864 + b) / TWO_POW_53;
  }

  /** Uniform integer in [0, n) for 1 <= n <= 2^53. */
  int(n: number): number {
    if (n <= TWO_POW_32) {
      // Multiply-shift on 32 bits is unbiased enough here (bias < n / 2^32) and needs one draw.
      return n <= 0x200000 ? Math.floor((this.u32() * n) / TWO_POW_32) : Math.floor(this.float() * n);
    }
    return Math.floor(this.float() * n);
  }

  /** Uniform integer in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo);
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.u32() < p * TWO_POW_32;
  }

  /** Exponential variate with the given mean (gap of a Poisson process of rate 1 / mean). */
  exponential(mean: number): number {
    return -mean * Math.log(1 - this.float());
  }

  /** Index drawn from a cumulative weight table (`cumulative` ascending, last entry = total). */
  pick(cumulative: ArrayLike<number>): number {
    const u = this.float() * cumulative[cumulative.length - 1];
    const last = cumulative.length - 1;
    let i = 0;
    while (i < last && u >= cumulative[i]) i++;
    return i;
  }
}

/** Running sums of `weights` (the table Rng.pick expects). */
export function cumulativeWeights(weights: readonly number[]): Float64Array {
  const out = new Float64Array(weights.length);
  let sum = 0;
  weights.forEach((w, i) => {
    if (!(w >= 0)) throw new RangeError(`weight ${i} must be >= 0, got ${w}`);
    sum += w;
    out[i] = sum;
  });
  if (!(sum > 0)) throw new RangeError('weights must not all be zero');
  return out;
}

/** log(1 + x) / x, continuous at 0. */
function log1pOverX(x: number): number {
  return Math.abs(x) > 1e-8 ? Math.log1p(x) / x : 1 - x / 2 + (x * x) / 3;
}

/** (exp(x) - 1) / x, continuous at 0. */
function expm1OverX(x: number): number {
  return Math.abs(x) > 1e-8 ? Math.expm1(x) / x : 1 + x / 2 + (x * x) / 6;
}

/**
 * Zipf distribution over ranks 1..n with P(k) proportional to k^-theta (theta > 0, theta = 1
 * included), sampled in O(1) per draw with no O(n) table by rejection-inversion
 * (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates from monotone discrete
 * distributions", 1996). The continuous hat h(x) = x^-theta is integrated as H(x) = (x^(1-theta) - 1)
 * / (1 - theta) (log x for theta = 1); a draw inverts H at a uniform point between H(1.5) - 1 and
 * H(n + 0.5), rounds to the nearest rank k, and accepts k when the point lies under the bar of k.
 */
export class ZipfSampler {
  readonly n: number;
  readonly theta: number;
  private readonly hX1: number;
  private readonly hN: number;
  private readonly squeeze: number;

  constructor(n: number, theta: number) {
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`Zipf n must be an integer >= 1, got ${n}`);
    if (!(theta > 0) || !Number.isFinite(theta)) throw new RangeError(`Zipf theta must be > 0, got ${theta}`);
    this.n = n;
    this.theta = theta;
    this.hX1 = this.bigH(1.5) - 1;
    this.hN = this.bigH(n + 0.5);
    this.squeeze = 2 - this.bigHInv(this.bigH(2.5) - this.h(2));
  }

  /** A rank in [1, n]; rank 1 is the most frequent. */
  sample(rng: Rng): number {
    for (;;) {
      const u = this.hN + rng.float() * (this.hX1 - this.hN);
      const x = this.bigHInv(u);
      let k = Math.round(x);
      if (k < 1) k = 1;
      else if (k > this.n) k = this.n;
      if (k - x <= this.squeeze || u >= this.bigH(k + 0.5) - this.h(k)) return k;
    }
  }

  private h(x: number): number {
    return Math.exp(-this.theta * Math.log(x));
  }

  private bigH(x: number): number {
    const lx = Math.log(x);
    return expm1OverX((1 - this.theta) * lx) * lx;
  }

  private bigHInv(y: number): number {
    let t = y * (1 - this.theta);
    if (t < -1) t = -1; // rounding guard: H^-1 is defined for (1 - theta) * y >= -1
    return Math.exp(log1pOverX(t) * y);
  }
}
