import assert from 'node:assert/strict';
import {
  asuSizesForTotal,
  deriveAsuSizes,
  HRRW_CLIMB_PROBABILITY,
  HRRW_START_LEVEL,
  scaleMultiplier,
  SMIX_LENGTHS,
  SMIX_WEIGHTS,
  Spc1Workload,
  SPC1_STREAMS,
} from '../../src/bench/spc1';
import type { BenchRequest } from '../../src/bench/workload';

const N = 2_000_000;
const B = 4;
const ASU = 1 << 20; // 4 GiB ASU1/ASU2: multiplier 1
const SEED = 20150312;

/** A long run kept in typed arrays (2 million objects would dominate the test's time and memory). */
interface Run {
  w: Spc1Workload;
  stream: Uint8Array;
  bsu: Uint16Array;
  read: Uint8Array;
  block: Float64Array;
  blocks: Uint8Array;
  at: Float64Array;
  asu: Uint8Array;
  bypass: Uint8Array;
}

function record(w: Spc1Workload, n: number): Run {
  const r: Run = {
    w,
    stream: new Uint8Array(n),
    bsu: new Uint16Array(n),
    read: new Uint8Array(n),
    block: new Float64Array(n),
    blocks: new Uint8Array(n),
    at: new Float64Array(n),
    asu: new Uint8Array(n),
    bypass: new Uint8Array(n),
  };
  for (let i = 0; i < n; i++) {
    const q = w.next();
    r.stream[i] = q.stream;
    r.bsu[i] = q.bsu;
    r.read[i] = q.read ? 1 : 0;
    r.block[i] = q.block;
    r.blocks[i] = q.blocks;
    r.at[i] = q.at ?? NaN;
    r.asu[i] = q.asu;
    r.bypass[i] = q.bypassCache ? 1 : 0;
  }
  return r;
}

/** Indices of the requests of each stream instance (bsu, stream), in order. */
function byInstance(r: Run, stream: number): number[][] {
  const out: number[][] = Array.from({ length: B }, () => []);
  for (let i = 0; i < r.stream.length; i++) if (r.stream[i] === stream) out[r.bsu[i]].push(i);
  return out;
}

/**
 * Checks streams 3, 7 and 8 of a run: each request continues its run unless it would pass the run's
 * end, finished runs end less than one transfer before it, run starts lie in the stream's start
 * range and spread over it; at least `minComplete` finished runs per stream.
 */
function checkSequential(r: Run, minComplete: number): void {
  const specs = { 3: [0.2, 0.6, 0.1, r.w.sizes.asu1], 7: [0.2, 0.6, 0.1, r.w.sizes.asu2], 8: [0, 0.7, 0.3, r.w.sizes.asu3] } as const;
  for (const [s, [loF, hiF, lenF, size]] of Object.entries(specs)) {
    const startLo = Math.floor(size * loF);
    const startHi = Math.floor(size * hiF);
    const runLen = Math.floor(size * lenF);
    let complete = 0;
    const starts: number[] = [];
    for (const idx of byInstance(r, Number(s))) {
      let pos = -1;
      let end = -1;
      let runStart = -1;
      for (const i of idx) {
        if (pos >= 0 && pos + r.blocks[i] <= end) {
          assert.equal(r.block[i], pos, `stream ${s} request ${i} does not continue its run`);
        } else {
          if (runStart >= 0) {
            // a finished run covers [runStart, pos): it stopped less than one transfer before its end
            assert.ok(pos - runStart <= runLen && pos - runStart > runLen - 16, `stream ${s} run of ${pos - runStart}`);
            complete++;
          }
          assert.ok(r.block[i] >= startLo && r.block[i] < startHi, `stream ${s} run start ${r.block[i]}`);
          runStart = r.block[i];
          starts.push(runStart);
          end = runStart + runLen;
        }
        pos = r.block[i] + r.blocks[i];
      }
    }
    assert.ok(complete >= minComplete, `stream ${s}: ${complete} complete runs`);
    if (minComplete > 0) {
      // uniform starts: the extremes come close to both ends of the start range, the median to its middle
      const span = startHi - startLo;
      const sorted = [...starts].sort((a, b) => a - b);
      assert.ok(sorted[0] < startLo + 0.1 * span && sorted[sorted.length - 1] >= startHi - 0.1 * span, `stream ${s} starts`);
      const median = sorted[sorted.length >> 1];
      assert.ok(Math.abs((median - startLo) / span - 0.5) < 0.2, `stream ${s}: median start ${median}`);
    }
  }
}

describe('bench/spc1: sizing', () => {
  it('makes ASU1 = ASU2 = the smaller capacity and ASU3 = 2/9 of it', () => {
    assert.deepEqual(deriveAsuSizes(1_000_000, 900_000, 1_000_000_000), { asu1: 900_000, asu2: 900_000, asu3: 200_000 });
    assert.deepEqual(deriveAsuSizes(500_000, 700_000, 500_000), { asu1: 500_000, asu2: 500_000, asu3: 111_111 });
  });

  it('shrinks ASU1/ASU2 when the ASU3 capacity is below 2/9 of them', () => {
    assert.deepEqual(deriveAsuSizes(1_000_000, 1_000_000, 100_000), { asu1: 450_000, asu2: 450_000, asu3: 100_000 });
  });

  it('splits one device 45/45/10', () => {
    assert.deepEqual(asuSizesForTotal(1_000_000), { asu1: 450_000, asu2: 450_000, asu3: 100_000 });
  });

  it('rejects ASUs too small for a 16-block ASU3 transfer', () => {
    assert.throws(() => deriveAsuSizes(71, 71, 1000), RangeError);
    assert.throws(() => new Spc1Workload({ asu1Blocks: 1 << 20, asu2Blocks: 1 << 20, asu3Blocks: 1 << 20, bsu: 0, seed: 1 }), RangeError);
  });

  it('scales ASUs below 128 x 8 x 20 blocks by the smallest integer multiplier', () => {
    assert.equal(scaleMultiplier(20_480), 1);
    assert.equal(scaleMultiplier(20_479), 2);
    assert.equal(scaleMultiplier(4096), 5);
    assert.equal(scaleMultiplier(1000), 21);
  });

  it('has stream shares adding up to 1', () => {
    const sum = SPC1_STREAMS.reduce((s, x) => s + x.share, 0);
    assert.ok(Math.abs(sum - 1) < 1e-12, `sum ${sum}`);
  });
});

describe('bench/spc1: a 2-million-request run at 4 BSUs', function () {
  this.timeout(60_000);
  let r: Run;
  const counts = new Float64Array(9);

  before(() => {
    r = record(new Spc1Workload({ asu1Blocks: ASU, asu2Blocks: ASU + 12345, asu3Blocks: ASU, bsu: B, seed: SEED }), N);
    for (let i = 0; i < N; i++) counts[r.stream[i]]++;
  });

  it('uses the derived sizes with no scaling', () => {
    assert.deepEqual(r.w.sizes, { asu1: ASU, asu2: ASU, asu3: Math.floor((ASU * 2) / 9) });
    assert.equal(r.w.multiplier, 1);
    assert.equal(r.w.iops, 200);
  });

  it('mixes the eight streams by their shares (within 2 %) and the BSUs evenly', () => {
    for (const s of SPC1_STREAMS) {
      const got = counts[s.stream] / N;
      assert.ok(Math.abs(got / s.share - 1) < 0.02, `stream ${s.stream}: ${got} vs ${s.share}`);
    }
    const perBsu = new Float64Array(B);
    for (let i = 0; i < N; i++) perBsu[r.bsu[i]]++;
    for (let b = 0; b < B; b++) assert.ok(Math.abs(perBsu[b] / N - 1 / B) < 0.005, `BSU ${b}: ${perBsu[b] / N}`);
  });

  it('reads with each stream read fraction (within 0.01) and targets the stream ASU', () => {
    const reads = new Float64Array(9);
    for (let i = 0; i < N; i++) {
      reads[r.stream[i]] += r.read[i];
      assert.equal(r.asu[i], SPC1_STREAMS[r.stream[i] - 1].asu);
      assert.equal(r.bypass[i], r.stream[i] === 8 ? 1 : 0);
    }
    for (const s of SPC1_STREAMS) {
      const got = reads[s.stream] / counts[s.stream];
      assert.ok(Math.abs(got - s.readFraction) < 0.01, `stream ${s.stream}: read fraction ${got} vs ${s.readFraction}`);
    }
    assert.equal(reads[3], counts[3]);
    assert.equal(reads[7], counts[7]);
    assert.equal(reads[8], 0);
  });

  it('keeps every request inside its ASU and each stream inside its region', () => {
    const size = [0, r.w.sizes.asu1, r.w.sizes.asu2, r.w.sizes.asu3];
    const lo = new Float64Array(9).fill(Infinity);
    const hi = new Float64Array(9).fill(-Infinity);
    let odd5 = 0;
    for (let i = 0; i < N; i++) {
      const s = r.stream[i];
      const b = r.block[i];
      const end = b + r.blocks[i];
      assert.ok(Number.isInteger(b) && b >= 0 && end <= size[r.asu[i]], `request ${i} [${b}, ${end}) outside ASU${r.asu[i]}`);
      lo[s] = Math.min(lo[s], b);
      hi[s] = Math.max(hi[s], end);
      if (s === 5 && b % 2 !== 0) odd5++;
    }
    assert.equal(odd5, 0, 'stream 5 issues even blocks only');
    // uniform streams cover their whole ASU
    assert.ok(lo[1] < ASU * 0.001 && hi[1] > ASU * 0.999);
    assert.ok(lo[5] < ASU * 0.001 && hi[5] > ASU * 0.999);
    // sequential reads: starts in [20 %, 60 %), runs of 10 %: inside [20 %, 70 %) (start placement: next test)
    for (const s of [3, 7]) {
      assert.ok(lo[s] >= Math.floor(ASU * 0.2), `stream ${s} low ${lo[s]}`);
      assert.ok(hi[s] <= Math.floor(ASU * 0.6) + Math.floor(ASU * 0.1), `stream ${s} high ${hi[s]}`);
    }
    // hot spots: inside their region and the stream's tree
    for (const [s, start] of [[2, 0.15], [4, 0.7], [6, 0.47]] as const) {
      const regionStart = Math.floor(ASU * start);
      const regionEnd = regionStart + Math.floor(ASU * 0.05);
      assert.ok(lo[s] >= regionStart && hi[s] <= regionEnd, `stream ${s} [${lo[s]}, ${hi[s]}) outside [${regionStart}, ${regionEnd})`);
      for (let bsu = 0; bsu < B; bsu++) {
        const l = r.w.hotSpotLayout(bsu, s);
        assert.equal(l.regionStart, regionStart);
        assert.equal(l.levels, 12); // 52428 blocks = 6553 leaves -> 4096-leaf tree
        assert.ok(l.treeStart >= regionStart && l.treeStart + 8 * 2 ** l.levels <= regionEnd);
        assert.equal((l.treeStart - regionStart) % 8, 0);
      }
      for (const [bsu, idx] of byInstance(r, s).entries()) {
        const l = r.w.hotSpotLayout(bsu, s);
        for (const i of idx) assert.ok(r.block[i] >= l.treeStart && r.block[i] < l.treeStart + 8 * 2 ** l.levels);
      }
    }
  });

  it('draws the sequential transfer lengths from smix and uses 1 block elsewhere', () => {
    const hist = new Map<number, number>();
    let seq = 0;
    for (let i = 0; i < N; i++) {
      const s = r.stream[i];
      if (s === 3 || s === 7 || s === 8) {
        seq++;
        hist.set(r.blocks[i], (hist.get(r.blocks[i]) ?? 0) + 1);
      } else {
        assert.equal(r.blocks[i], 1);
      }
    }
    assert.deepEqual([...hist.keys()].sort((a, b) => a - b), [...SMIX_LENGTHS]);
    SMIX_LENGTHS.forEach((len, k) => {
      const got = (hist.get(len) ?? 0) / seq;
      assert.ok(Math.abs(got - SMIX_WEIGHTS[k] / 25) < 0.005, `length ${len}: ${got} vs ${SMIX_WEIGHTS[k] / 25}`);
    });
  });

  it('runs sequential streams contiguously and restarts a run only when a request would pass its end', () => {
    checkSequential(r, 0); // runs of ~29000 requests: few finish here
    // the smallest unscaled layout gives many complete runs: ASU1 = 20480 blocks, runs of 2048 blocks
    checkSequential(record(new Spc1Workload({ asu1Blocks: 20_480, asu2Blocks: 20_480, asu3Blocks: 20_480, bsu: B, seed: 5 }), 1_000_000), 40);
  });

  it('walks the hot spots hierarchically: next leaf in the current 64-leaf group with the HRRW probability', () => {
    const levels = 12;
    // P(final level h) then P(new leaf in the current 64-leaf group | h) = 64 / 2^h
    let expected = 0;
    for (let h = HRRW_START_LEVEL; h <= levels; h++) {
      const climbs = h - HRRW_START_LEVEL;
      const p = HRRW_CLIMB_PROBABILITY ** climbs * (h < levels ? 1 - HRRW_CLIMB_PROBABILITY : 1);
      expected += p * 2 ** (HRRW_START_LEVEL - h);
    }
    for (const s of [2, 4, 6]) {
      let pairs = 0;
      let same = 0;
      for (const [bsu, idx] of byInstance(r, s).entries()) {
        const base = r.w.hotSpotLayout(bsu, s).treeStart;
        for (let k = 1; k < idx.length; k++) {
          if (!r.read[idx[k]]) continue; // reads always walk; writes may be repeats
          pairs++;
          if (Math.floor((r.block[idx[k]] - base) / 512) === Math.floor((r.block[idx[k - 1]] - base) / 512)) same++;
        }
      }
      assert.ok(pairs > 30_000, `${pairs} read pairs`);
      assert.ok(Math.abs(same / pairs - expected) < 0.01, `stream ${s}: ${same / pairs} vs ${expected}`);
    }
  });

  it('reads each hot-spot leaf block by block in turn, whichever stream reads it, and writes leaves aligned to 8 leaves', () => {
    for (const s of [2, 4, 6]) {
      // spc1.c: one leaf-state array per hot spot, shared by the streams of every BSU.
      const regionStart = r.w.hotSpotLayout(0, s).regionStart;
      const nextOffset = new Map<number, number>();
      const lastRead = new Map<number, number>();
      let writesToReadLeaves = 0;
      let writesOfLastRead = 0;
      for (let i = 0; i < N; i++) {
        if (r.stream[i] !== s) continue;
        const leaf = Math.floor((r.block[i] - regionStart) / 8);
        if (r.read[i]) {
          const expected = nextOffset.get(leaf) ?? 0;
          assert.equal((r.block[i] - regionStart) % 8, expected, `stream ${s} read of leaf ${leaf} out of turn`);
          nextOffset.set(leaf, (expected + 1) % 8);
          lastRead.set(leaf, r.block[i]);
        } else if (lastRead.has(leaf)) {
          writesToReadLeaves++;
          if (lastRead.get(leaf) === r.block[i]) writesOfLastRead++;
        }
      }
      // Half the fresh writes take the block last read from the leaf (by any stream), 1/8 of the
      // random others too; repeats mostly re-write such a block.
      const f = writesOfLastRead / writesToReadLeaves;
      assert.ok(writesToReadLeaves > 10_000 && f > 0.5 && f < 0.65, `stream ${s}: ${f} of ${writesToReadLeaves} writes take the leaf's last read block`);
      let writes = 0;
      let sameAsLastWrite = 0;
      for (const [bsu, idx] of byInstance(r, s).entries()) {
        const base = r.w.hotSpotLayout(bsu, s).treeStart;
        let lastWrite = -1;
        for (const i of idx) {
          if (r.read[i]) continue;
          const leaf = Math.floor((r.block[i] - base) / 8);
          assert.equal(leaf % 8, 0, `stream ${s} write to unaligned leaf ${leaf}`);
          writes++;
          if (r.block[i] === lastWrite) sameAsLastWrite++;
          lastWrite = r.block[i];
        }
      }
      // 15 % of fresh writes are repeated: 0.15 / 1.15 of all writes, plus chance coincidences
      const f2 = sameAsLastWrite / writes;
      assert.ok(f2 > 0.125 && f2 < 0.18, `stream ${s}: ${f2} of writes repeat the previous one`);
    }
  });

  it('schedules a Poisson arrival process of B x 50 IOPS', () => {
    const mean = 1 / (50 * B);
    let prev = 0;
    let sum = 0;
    let sumSq = 0;
    let belowMedian = 0;
    for (let i = 0; i < N; i++) {
      const gap = r.at[i] - prev;
      assert.ok(gap >= 0, `time goes backwards at ${i}`);
      sum += gap;
      sumSq += gap * gap;
      if (gap < mean * Math.LN2) belowMedian++;
      prev = r.at[i];
    }
    const m = sum / N;
    const cv = Math.sqrt(sumSq / N - m * m) / m;
    assert.ok(Math.abs(r.at[N - 1] / (N / (50 * B)) - 1) < 0.005, `last at ${r.at[N - 1]}`);
    assert.ok(Math.abs(m / mean - 1) < 0.005, `mean gap ${m}`);
    assert.ok(Math.abs(cv - 1) < 0.01, `coefficient of variation ${cv}`);
    assert.ok(Math.abs(belowMedian / N - 0.5) < 0.002, `${belowMedian / N} of gaps below the median`);
    // every stream kind runs at 50 x share IOPS per BSU
    const secs = r.at[N - 1];
    for (const s of SPC1_STREAMS) {
      const rate = counts[s.stream] / secs / B;
      assert.ok(Math.abs(rate / (50 * s.share) - 1) < 0.025, `stream ${s.stream}: ${rate} IOPS per BSU`);
    }
  });
});

describe('bench/spc1: determinism, pacing modes and scaling', () => {
  const opts = { asu1Blocks: 300_000, asu2Blocks: 300_000, asu3Blocks: 300_000, bsu: 3 };

  function take(w: Spc1Workload, n: number): BenchRequest[] {
    return Array.from({ length: n }, () => w.next());
  }

  it('repeats the same requests for the same seed and differs for another seed', () => {
    const a = take(new Spc1Workload({ ...opts, seed: 7 }), 50_000);
    const b = take(new Spc1Workload({ ...opts, seed: 7 }), 50_000);
    const c = take(new Spc1Workload({ ...opts, seed: 8 }), 50_000);
    assert.deepEqual(a, b);
    const differ = a.filter((q, i) => q.block !== c[i].block || q.stream !== c[i].stream).length;
    assert.ok(differ > 40_000, `${differ} requests differ`);
  });

  it('produces the same requests unpaced, without scheduled times', () => {
    const paced = take(new Spc1Workload({ ...opts, seed: 11 }), 20_000);
    const w = new Spc1Workload({ ...opts, seed: 11, paced: false });
    assert.equal(w.paced, false);
    const unpaced = take(w, 20_000);
    assert.ok(unpaced.every((q) => q.at === undefined));
    assert.deepEqual(
      unpaced,
      paced.map(({ at, ...rest }) => {
        assert.equal(typeof at, 'number');
        return rest;
      }),
    );
  });

  it('scales small ASUs up and divides addresses back into them', () => {
    const w = new Spc1Workload({ asu1Blocks: 4096, asu2Blocks: 5000, asu3Blocks: 1000, bsu: 2, seed: 3 });
    assert.deepEqual(w.sizes, { asu1: 4096, asu2: 4096, asu3: 910 });
    assert.equal(w.multiplier, 5);
    assert.equal(w.virtualBlocks(1), 20_480);
    const size = [0, 4096, 4096, 910];
    const hot = { 2: [0.15, 0.05], 4: [0.7, 0.05], 6: [0.47, 0.05] } as Record<number, [number, number]>;
    const seen = new Set<number>();
    for (let i = 0; i < 200_000; i++) {
      const q = w.next();
      assert.ok(q.block >= 0 && q.block + q.blocks <= size[q.asu], `request ${i} outside ASU${q.asu}`);
      const h = hot[q.stream];
      if (h !== undefined) {
        const vStart = Math.floor(20_480 * h[0]);
        const vEnd = vStart + Math.floor(20_480 * h[1]);
        assert.ok(q.block >= Math.floor(vStart / 5) && q.block < Math.ceil(vEnd / 5), `stream ${q.stream} block ${q.block}`);
      }
      if (q.stream === 5) assert.equal(q.block % 2, 0);
      if (q.stream === 2) seen.add(q.block);
    }
    // the 1024-block virtual hot spot A [3072, 4096) lands on device blocks [614, 820)
    assert.ok(seen.size > 190 && seen.size <= 206, `hot spot A touched ${seen.size} blocks`);
    assert.equal(w.hotSpotLayout(0, 2).levels, 7);
    assert.throws(() => w.hotSpotLayout(0, 3), RangeError);
  });
});
