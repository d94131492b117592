import { strict as assert } from 'node:assert';
import { LATENCY_BUCKETS_S, RECENT_WINDOW_MS, REQUEST_TYPES, RequestLatency } from '../../src/metrics/request-latency';

describe('metrics: request latency per volume', () => {
  it('counts each request in the first bucket whose bound holds it (le), per type', () => {
    const r = new RequestLatency(() => 0);
    r.record(0, 0.005, 0); // 5 µs read -> le 10e-6
    r.record(0, 0.01, 0); // 10 µs read: on the bound -> le 10e-6
    r.record(0, 3, 0); // 3 ms read -> le 5e-3
    r.record(1, 20_000, 0); // 20 s write -> only +Inf
    const [read, write, flush] = r.byType();
    assert.deepEqual(r.byType().map((t) => t.type), [...REQUEST_TYPES]);
    const le = (t: typeof read, bound: number): number => (t as { buckets: number[] }).buckets[LATENCY_BUCKETS_S.indexOf(bound)] as number;
    assert.equal(le(read, 10e-6), 2);
    assert.equal(le(read, 2.5e-3), 2);
    assert.equal(le(read, 5e-3), 3);
    assert.equal(le(read, 10), 3);
    assert.equal(read?.count, 3);
    assert.ok(Math.abs((read?.sumSeconds ?? 0) - 0.003015) < 1e-12);
    assert.equal(le(write, 10), 0);
    assert.equal(write?.count, 1);
    assert.deepEqual(flush, { type: 'flush', buckets: LATENCY_BUCKETS_S.map(() => 0), sumSeconds: 0, count: 0 });
  });

  it('reports percentiles since start and over the last full window', () => {
    let now = 0;
    const r = new RequestLatency(() => now);
    for (let i = 1; i <= 1000; i++) r.record(0, i / 1000, now); // 1 .. 1000 µs
    let s = r.summary();
    assert.equal(s.total.count, 1000);
    assert.ok(Math.abs(s.total.p50Us - 500) <= 500 * 0.005, `p50 ${s.total.p50Us}`);
    assert.ok(Math.abs(s.total.p99Us - 990) <= 990 * 0.005, `p99 ${s.total.p99Us}`);
    assert.ok(s.total.p50Us <= s.total.p90Us && s.total.p90Us <= s.total.p99Us && s.total.p99Us <= s.total.p999Us);
    assert.equal(s.recent.count, 0, 'no full window yet');

    now = RECENT_WINDOW_MS; // the first window closes
    r.record(1, 50, now); // 50 ms, in the second window
    s = r.summary();
    assert.equal(s.recent.count, 1000);
    assert.equal(s.recent.windowSeconds, RECENT_WINDOW_MS / 1000);
    assert.equal(s.total.count, 1001);

    now = 2 * RECENT_WINDOW_MS + 1;
    assert.equal(r.summary().recent.count, 1);
    assert.equal(r.summary().recent.p50Us, 50_000);

    now = 10 * RECENT_WINDOW_MS; // idle for several windows: nothing recent
    assert.equal(r.summary().recent.count, 0);
    assert.equal(r.summary().total.count, 1001);
  });
});
