/**
 * StreamDetector (streams.ts): run lengths of interleaved sequential streams among random
 * requests, and read-ahead marks, against what the file comment promises.
 */
import { strict as assert } from 'node:assert';
import { READ_AHEAD_MIN_RUN, StreamDetector } from '../../src/cache/streams';

describe('stream detector', () => {
  it('follows interleaved streams through random requests, each with its own run length', () => {
    const d = new StreamDetector();
    const starts = [0, 100_000, 2 ** 33 + 7];
    const next = [...starts];
    let seed = 5;
    const random = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      return 10_000_000 + seed;
    };
    for (let round = 1; round <= 40; round++) {
      for (const [s, at] of next.entries()) {
        const count = 1 + (round % 3);
        assert.equal(d.observe(at, count), at + count - (starts[s] as number), `stream ${s}, round ${round}`);
        assert.equal(d.lastRun, at + count - (starts[s] as number));
        next[s] = at + count;
        assert.equal(d.observe(random(), 1), 1, 'a random request starts its own run');
      }
    }
  });

  it('asks for read-ahead once a run is long enough, then again when the run is within half a window of the mark', () => {
    const d = new StreamDetector();
    const window = 64;
    const limit = 1 << 20;
    const asked: [number, number, number][] = [];
    for (let b = 5000; b < 5000 + 200; b++) {
      const from = d.readAhead(b, 1, window, limit);
      if (from >= 0) asked.push([b, from, d.lastEnd]);
    }
    const first = 5000 + READ_AHEAD_MIN_RUN - 1;
    // First at the run's 16th block: from the next block to a window past it; then each time
    // the stream comes within window / 2 of the mark, from the mark on.
    assert.deepEqual(asked[0], [first, first + 1, first + 1 + window]);
    for (let i = 1; i < asked.length; i++) {
      const [b, from, end] = asked[i] as [number, number, number];
      const prevEnd = (asked[i - 1] as [number, number, number])[2];
      assert.equal(from, prevEnd, 'continues from the previous mark');
      assert.equal(prevEnd - (b + 1), window / 2 - 1, 'asked as soon as the stream is within half a window of the mark');
      assert.equal(end, b + 1 + window);
    }
    assert.ok(asked.length >= 5);
    // The limit clips the window; at the limit nothing is asked.
    const e = new StreamDetector();
    for (let b = limit - 20; b < limit - 1; b++) {
      const from = e.readAhead(b, 1, window, limit);
      if (from >= 0) assert.equal(e.lastEnd, limit);
    }
    assert.equal(e.readAhead(limit - 1, 1, window, limit), -1);
  });
});
