import assert from 'node:assert/strict';
import { cumulativeWeights, Rng, ZipfSampler } from '../../src/bench/rng';

describe('bench/rng', () => {
  it('is deterministic per (seed, lane) and differs across seeds and lanes', () => {
    const seq = (r: Rng): number[] => Array.from({ length: 1000 }, () => r.u32());
    assert.deepEqual(seq(new Rng(123)), seq(new Rng(123)));
    assert.notDeepEqual(seq(new Rng(123)), seq(new Rng(124)));
    assert.notDeepEqual(seq(new Rng(123, 0)), seq(new Rng(123, 1)));
    // seeds above 2^32 use their high bits
    assert.notDeepEqual(seq(new Rng(2 ** 40 + 5)), seq(new Rng(5)));
    assert.throws(() => new Rng(NaN), RangeError);
  });

  it('draws uniform integers and floats', () => {
    const r = new Rng(1);
    const n = 1_000_000;
    const bins = new Float64Array(10);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const v = r.int(10);
      assert.ok(Number.isInteger(v) && v >= 0 && v < 10);
      bins[v]++;
      const f = r.float();
      assert.ok(f >= 0 && f < 1);
      sum += f;
    }
    // chi-square with 9 degrees of freedom: 27.9 is its 0.999 quantile
    const chi = bins.reduce((s, b) => s + (b - n / 10) ** 2 / (n / 10), 0);
    assert.ok(chi < 27.9, `chi-square ${chi}`);
    assert.ok(Math.abs(sum / n - 0.5) < 0.002);
    // large ranges (float path) stay in range and reach the top half
    let top = 0;
    for (let i = 0; i < 100_000; i++) {
      const v = r.int(2 ** 40);
      assert.ok(v >= 0 && v < 2 ** 40 && Number.isInteger(v));
      if (v >= 2 ** 39) top++;
    }
    assert.ok(Math.abs(top / 100_000 - 0.5) < 0.01);
    for (let i = 0; i < 1000; i++) {
      const v = r.range(-5, 5);
      assert.ok(v >= -5 && v < 5);
    }
  });

  it('draws exponential gaps with the requested mean and chances with their probability', () => {
    const r = new Rng(2);
    const n = 500_000;
    let sum = 0;
    let yes = 0;
    for (let i = 0; i < n; i++) {
      sum += r.exponential(0.25);
      if (r.chance(0.3)) yes++;
    }
    assert.ok(Math.abs(sum / n / 0.25 - 1) < 0.01, `mean ${sum / n}`);
    assert.ok(Math.abs(yes / n - 0.3) < 0.003);
  });

  it('picks indices by cumulative weights', () => {
    const table = cumulativeWeights([1, 0, 3]);
    assert.deepEqual([...table], [1, 1, 4]);
    const r = new Rng(3);
    const got = [0, 0, 0];
    for (let i = 0; i < 400_000; i++) got[r.pick(table)]++;
    assert.equal(got[1], 0);
    assert.ok(Math.abs(got[0] / 400_000 - 0.25) < 0.003);
    assert.throws(() => cumulativeWeights([0, 0]), RangeError);
    assert.throws(() => cumulativeWeights([1, -1]), RangeError);
  });

  for (const theta of [0.8, 1, 1.2]) {
    it(`samples Zipf(theta=${theta}) with the exact rank probabilities`, () => {
      const n = 1000;
      let norm = 0;
      for (let k = 1; k <= n; k++) norm += k ** -theta;
      const z = new ZipfSampler(n, theta);
      const r = new Rng(4);
      const draws = 1_000_000;
      const counts = new Float64Array(n + 1);
      for (let i = 0; i < draws; i++) {
        const k = z.sample(r);
        assert.ok(Number.isInteger(k) && k >= 1 && k <= n);
        counts[k]++;
      }
      for (const k of [1, 2, 3, 10, 100]) {
        const p = k ** -theta / norm;
        const sd = Math.sqrt((p * (1 - p)) / draws);
        assert.ok(Math.abs(counts[k] / draws - p) < 5 * sd, `rank ${k}: ${counts[k] / draws} vs ${p}`);
      }
      // mass of the upper half of the ranks
      let upper = 0;
      let pUpper = 0;
      for (let k = n / 2 + 1; k <= n; k++) {
        upper += counts[k];
        pUpper += k ** -theta / norm;
      }
      assert.ok(Math.abs(upper / draws - pUpper) < 0.003, `upper half ${upper / draws} vs ${pUpper}`);
    });
  }

  it('handles a one-rank Zipf and rejects bad parameters', () => {
    const r = new Rng(5);
    const z = new ZipfSampler(1, 1.5);
    for (let i = 0; i < 100; i++) assert.equal(z.sample(r), 1);
    assert.throws(() => new ZipfSampler(0, 1), RangeError);
    assert.throws(() => new ZipfSampler(10, 0), RangeError);
  });
});
