import assert from 'node:assert/strict';
import { formatProgress, Progress, type ProgressStatus } from '../../src/bench/progress';

class Sink {
  chunks: string[] = [];
  constructor(readonly isTTY: boolean, readonly columns?: number) {}
  write(s: string): boolean {
    this.chunks.push(s);
    return true;
  }
}

const status = (elapsed: number): ProgressStatus => ({
  elapsed,
  total: 60,
  ops: Math.round(elapsed * 1600),
  iops: 1600,
  meanLatencyMs: 0.523,
  p99LatencyMs: 1.2,
  readHitRate: 0.7012,
});

describe('bench/progress', () => {
  it('formats elapsed/total, IOPS, latency and hit rate', () => {
    assert.equal(formatProgress(status(12)), '[ 12.0s / 1m00s  20%]  1,600 IOPS  lat 0.52 ms  p99 1.20 ms  hit 70.1%  ops 19,200');
    assert.equal(
      formatProgress({ elapsed: 3725, ops: 5, iops: 0.4, meanLatencyMs: 123.4, readHitRate: null }),
      '[1h02m05s]  0 IOPS  lat 123 ms  ops 5',
    );
  });

  it('redraws one line in place on a TTY, throttled, cut to the width', () => {
    const sink = new Sink(true, 40);
    let now = 0;
    const p = new Progress({ stream: sink, refreshMs: 200, now: () => now });
    p.update(status(0));
    now = 100;
    p.update(status(0.1)); // too soon
    now = 250;
    p.update(status(0.25));
    assert.equal(sink.chunks.length, 2);
    for (const c of sink.chunks) {
      assert.ok(c.startsWith('\r') && c.endsWith('\x1b[K') && !c.includes('\n'));
      assert.equal(c.length, 1 + 39 + 3);
    }
    assert.equal(p.lineOpen, true);
    p.done(status(60));
    assert.ok(sink.chunks[2].startsWith('\r[ 1m00s / 1m00s 100%]') && sink.chunks[2].endsWith('\x1b[K\n'));
    assert.equal(p.lineOpen, false);
  });

  it('prints periodic plain lines when not a TTY', () => {
    const sink = new Sink(false);
    let now = 0;
    const p = new Progress({ stream: sink, plainIntervalMs: 10_000, now: () => now });
    for (now = 0; now <= 30_000; now += 500) p.update(status(now / 1000));
    assert.equal(sink.chunks.length, 4); // at 0, 10, 20, 30 s
    assert.ok(sink.chunks.every((c) => c.endsWith('\n') && !c.includes('\r') && !c.includes('\x1b')));
    assert.ok(sink.chunks[1].startsWith('[ 10.0s / 1m00s  16%]'));
    p.done(status(31));
    assert.equal(sink.chunks.length, 5);
  });
});
