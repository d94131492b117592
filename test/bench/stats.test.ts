import assert from 'node:assert/strict';
import { Rng } from '../../src/bench/rng';
import { LatencyHistogram } from '../../src/metrics/latency-histogram';
import { PeriodMeter } from '../../src/bench/stats';

/** Exact percentile of a sorted sample, same rank rule as the histogram: the ceil(p/100 n)-th value. */
function exact(sorted: Float64Array, p: number): number {
  return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1];
}

describe('bench/stats: LatencyHistogram', () => {
  it('matches exact percentiles of a million log-normal latencies within 1 %', () => {
    const r = new Rng(31);
    const n = 1_000_000;
    const values = new Float64Array(n);
    const h = new LatencyHistogram();
    let sum = 0;
    for (let i = 0; i < n; i++) {
      // log-normal around 200 us, sigma 1: spans ~10 us .. ~20 ms
      const z = Math.sqrt(-2 * Math.log(1 - r.float())) * Math.cos(2 * Math.PI * r.float());
      const v = Math.round(200_000 * Math.exp(z));
      values[i] = v;
      sum += v;
      h.record(v);
    }
    values.sort();
    assert.equal(h.count, n);
    assert.equal(h.min, values[0]);
    assert.equal(h.max, values[n - 1]);
    assert.ok(Math.abs(h.mean - sum / n) < 1e-6 * h.mean);
    for (const p of [1, 10, 50, 90, 99, 99.9, 99.99, 100]) {
      const want = exact(values, p);
      const got = h.percentile(p);
      assert.ok(Math.abs(got / want - 1) < 0.01, `p${p}: ${got} vs ${want}`);
    }
    const s = h.summary();
    assert.equal(s.p50, h.percentile(50));
    assert.equal(s.p999, h.percentile(99.9));
    assert.equal(s.count, n);
  });

  it('is exact below 256 and keeps huge values within 1 %', () => {
    const h = new LatencyHistogram();
    for (let v = 0; v < 256; v++) h.record(v);
    assert.equal(h.percentile(50), 127);
    assert.equal(h.percentile(100), 255);
    assert.equal(h.percentile(0.5), 1); // rank ceil(1.28) = 2: the value 1
    const big = new LatencyHistogram();
    for (const v of [3e9, 7.5e12, 2 ** 52 + 12345]) big.record(v);
    assert.ok(Math.abs(big.percentile(33) / 3e9 - 1) < 0.01); // rank ceil(0.99) = 1
    assert.ok(Math.abs(big.percentile(66) / 7.5e12 - 1) < 0.01); // rank ceil(1.98) = 2
    assert.equal(big.percentile(100), 2 ** 52 + 12345);
  });

  it('rounds, clamps negatives to 0, merges and resets', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    const all = new LatencyHistogram();
    const r = new Rng(8);
    for (let i = 0; i < 10_000; i++) {
      const v = r.int(5_000_000);
      (i % 2 ? a : b).record(v);
      all.record(v);
    }
    a.merge(b);
    assert.equal(a.count, all.count);
    assert.equal(a.mean, all.mean);
    for (const p of [50, 99, 99.9]) assert.equal(a.percentile(p), all.percentile(p));
    a.reset();
    assert.equal(a.count, 0);
    assert.equal(a.percentile(99), 0);
    a.record(-5);
    a.record(2.6);
    assert.equal(a.min, 0);
    assert.equal(a.max, 3);
    assert.throws(() => a.percentile(0), RangeError);
  });

  it('records ten million values quickly', () => {
    const h = new LatencyHistogram();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 10_000_000; i++) h.record(50_000 + (i % 100_000) * 37);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.equal(h.count, 10_000_000);
    assert.ok(ms < 8000, `${ms} ms`);
  });
});

describe('bench/stats: PeriodMeter', () => {
  it('reports IOPS, mean and p99 latency per period and folds periods into the total', () => {
    const m = new PeriodMeter(0);
    for (let i = 1; i <= 1000; i++) m.record(i * 1000, i % 4 !== 0); // 1 us .. 1 ms
    const s1 = m.sample(2, 0.75);
    assert.equal(s1.ops, 1000);
    assert.equal(s1.reads, 750);
    assert.equal(s1.writes, 250);
    assert.equal(s1.seconds, 2);
    assert.equal(s1.iops, 500);
    assert.ok(Math.abs(s1.meanLatencyMs - 0.5005) < 1e-9);
    assert.ok(Math.abs(s1.p99LatencyMs - 0.99) < 0.0099);
    assert.equal(s1.readHitRate, 0.75);
    const s2 = m.sample(3);
    assert.deepEqual(s2, { t: 3, seconds: 1, ops: 0, reads: 0, writes: 0, iops: 0, meanLatencyMs: 0, p99LatencyMs: 0, readHitRate: null });
    m.record(2_000_000, true);
    const s3 = m.sample(3.5);
    assert.equal(s3.iops, 2);
    assert.equal(s3.meanLatencyMs, 2);
    assert.equal(m.total.count, 1001);
    assert.equal(m.total.max, 2_000_000);
    // Reads and writes apart over the whole run: reads are the i % 4 != 0 of 1..1000 us plus 2 ms.
    assert.equal(m.readTotal.count, 751);
    assert.equal(m.readTotal.max, 2_000_000);
    assert.equal(m.writeTotal.count, 250);
    assert.equal(m.writeTotal.min, 4000);
    assert.ok(Math.abs(m.writeTotal.mean - 502_000) < 1e-6, `${m.writeTotal.mean}`);
  });
});
