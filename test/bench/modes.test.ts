import assert from 'node:assert/strict';
import { ModeWorkload, type ModeOptions } from '../../src/bench/modes';

const MiB = 1 << 20;

describe('bench/modes', () => {
  const base = { bs: 4096, size: 64 * MiB, offset: MiB, seed: 9 };

  function run(opts: ModeOptions, n: number) {
    const w = new ModeWorkload(opts);
    return { w, reqs: Array.from({ length: n }, () => w.next()) };
  }

  it('randread / randwrite: aligned bs requests spread uniformly over the range', () => {
    for (const mode of ['randread', 'randwrite'] as const) {
      const { w, reqs } = run({ ...base, mode }, 200_000);
      assert.equal(w.blockSize, 512);
      assert.equal(w.units, 16384);
      assert.equal(w.paced, false);
      const halves = [0, 0];
      for (const q of reqs) {
        assert.equal(q.read, mode === 'randread');
        assert.equal(q.blocks, 8);
        assert.equal(q.at, undefined);
        assert.equal(q.bypassCache, false);
        assert.equal((q.block - 2048) % 8, 0);
        assert.ok(q.block >= 2048 && q.block + 8 <= 2048 + (64 * MiB) / 512);
        halves[q.block < 2048 + 65536 ? 0 : 1]++;
      }
      assert.ok(Math.abs(halves[0] / reqs.length - 0.5) < 0.005);
    }
  });

  it('randrw reads rwmixread percent of the time', () => {
    const { reqs } = run({ ...base, mode: 'randrw', rwmixread: 70 }, 200_000);
    const reads = reqs.filter((q) => q.read).length / reqs.length;
    assert.ok(Math.abs(reads - 0.7) < 0.005, `${reads}`);
    const { reqs: even } = run({ ...base, mode: 'randrw' }, 100_000);
    assert.ok(Math.abs(even.filter((q) => q.read).length / 1e5 - 0.5) < 0.006);
  });

  it('read / write go sequentially through the range and wrap', () => {
    const { reqs } = run({ mode: 'write', bs: 65536, size: 1 * MiB + 1000, seed: 1 }, 40);
    assert.deepEqual(
      reqs.map((q) => q.block),
      Array.from({ length: 40 }, (_, i) => (i % 16) * 128),
    );
    assert.ok(reqs.every((q) => !q.read && q.blocks === 128));
    const { reqs: rd } = run({ mode: 'read', bs: 512, size: 2048, offset: 512, seed: 1 }, 5);
    assert.deepEqual(rd.map((q) => [q.read, q.block, q.blocks]), [[true, 1, 1], [true, 2, 1], [true, 3, 1], [true, 4, 1], [true, 1, 1]]);
  });

  it('zipf: hot units follow Zipf(theta), scattered by a bijection', () => {
    const { w, reqs } = run({ ...base, mode: 'zipf', theta: 1.2 }, 500_000);
    assert.ok(reqs.every((q) => q.read));
    let norm = 0;
    for (let k = 1; k <= w.units; k++) norm += k ** -1.2;
    const byUnit = new Map<number, number>();
    for (const q of reqs) {
      const unit = (q.block - 2048) / 8;
      byUnit.set(unit, (byUnit.get(unit) ?? 0) + 1);
    }
    for (const rank of [1, 2, 5]) {
      const got = (byUnit.get(w.unitOfRank(rank)) ?? 0) / reqs.length;
      const p = rank ** -1.2 / norm;
      assert.ok(Math.abs(got / p - 1) < 0.03, `rank ${rank}: ${got} vs ${p}`);
    }
    // scrambled: the hottest units are far apart; and the scatter is a bijection
    assert.ok(Math.abs(w.unitOfRank(2) - w.unitOfRank(1)) > 1);
    const small = new ModeWorkload({ mode: 'zipf', bs: 512, size: 512 * 1000, seed: 2 });
    const image = new Set(Array.from({ length: 1000 }, (_, i) => small.unitOfRank(i + 1)));
    assert.equal(image.size, 1000);
    const plain = new ModeWorkload({ mode: 'zipf', bs: 512, size: 512 * 1000, seed: 2, scramble: false });
    assert.equal(plain.unitOfRank(1), 0);
    assert.equal(plain.unitOfRank(7), 6);
  });

  it('paces at iops with evenly spaced times', () => {
    const { w, reqs } = run({ ...base, mode: 'randread', iops: 250 }, 1001);
    assert.equal(w.paced, true);
    reqs.forEach((q, i) => assert.ok(Math.abs((q.at ?? -1) - i / 250) < 1e-12));
    assert.equal(reqs[1000].at, 4);
  });

  it('is deterministic per seed', () => {
    const a = run({ ...base, mode: 'randrw', seed: 77 }, 1000).reqs;
    const b = run({ ...base, mode: 'randrw', seed: 77 }, 1000).reqs;
    const c = run({ ...base, mode: 'randrw', seed: 78 }, 1000).reqs;
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
  });

  it('validates its options', () => {
    assert.throws(() => new ModeWorkload({ ...base, mode: 'randread', bs: 1000 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'randread', offset: 100 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'randread', size: 2048 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'randrw', rwmixread: 101 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'randread', iops: 0 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'zipf', theta: 0 }), RangeError);
    assert.throws(() => new ModeWorkload({ ...base, mode: 'bogus' as 'read' }), RangeError);
  });
});
