/**
 * Randomized model test of the cache (test/support/model-run.ts): overlapping operations in
 * flight, held backing store and cache device completing in random order, crashes in the middle
 * of segment writes and of the close, restarts and device errors, on a cache small enough that
 * most block reads hit. This is the CI slice; bench/model-long.ts runs >= 1 M operations. A
 * failure prints the command that reruns it.
 */
import { strict as assert } from 'node:assert';
import type { CacheMode } from '../../src/cache/cached-store';
import { runModel } from '../support/model-run';

const OPS = Number(process.env.VBC_MODEL_OPS ?? 6000);

describe('cached store randomized model (seeded)', function () {
  this.timeout(300000);
  const runs: [CacheMode, number, number][] = [
    // Fault seed 102: with write-back's commits and deferred insertions, 101 drew no clean restart.
    ['writethrough', 1, 102],
    ['writethrough', 7, 107],
    // Fault seed 113: fault seed 103 stopped drawing a clean restart once holes-only refills read nothing.
    ['writearound', 3, 113],
    ['readonly', 5, 105],
    ['none', 9, 109],
    // Process crashes while a kill's header rewrite is in flight after its segment was marked
    // (kill-marks.ts): a recovery that ignored the marks serves stale data at op 56 / op 2,129.
    ['writethrough', 24, 124],
    ['writearound', 4, 104],
  ];
  for (const [mode, seed, faultSeed] of runs) {
    it(`${mode}, seed ${seed}, fault seed ${faultSeed}: ${OPS} operations`, async () => {
      const r = await runModel({ mode, seed, faultSeed, ops: OPS });
      if (process.env.VBC_MODEL_STATS) console.log(mode, seed, faultSeed, JSON.stringify(r));
      assert.ok(r.checkedReads > OPS / 3, `only ${r.checkedReads} reads checked`);
      // The 6000-operation slice crashes and restarts in every run; a shorter one (the mutation
      // runs, VBC_MODEL_OPS=1000) does at least one of the two.
      if (OPS >= 6000) assert.ok(r.crashes > 0 && r.restarts > 0, `crashes ${r.crashes}, restarts ${r.restarts}`);
      else assert.ok(r.crashes + r.restarts > 0, `crashes ${r.crashes}, restarts ${r.restarts}`);
      if (mode === 'none') assert.equal(r.blockHits, 0);
      else assert.ok(r.hitRate >= 0.4, `hit rate ${r.hitRate.toFixed(3)} < 0.4`);
    });
  }

  // Cache block sizes other than 4 KiB (segments of 4 blocks, 512 B sectors inside a block).
  for (const blockSize of [8192, 65536]) {
    it(`writethrough with ${blockSize / 1024} KiB cache blocks: 2000 operations`, async () => {
      const r = await runModel({ mode: 'writethrough', seed: 21, faultSeed: 121, ops: 2000, blockSize });
      assert.ok(r.checkedReads > 600 && r.blockHits > 0, JSON.stringify(r));
      assert.ok(r.hitRate >= 0.4, `hit rate ${r.hitRate.toFixed(3)} < 0.4`);
    });
  }

  it('the same seeds give the same run; another fault seed another one', async () => {
    const a = await runModel({ mode: 'writethrough', seed: 11, faultSeed: 1, ops: 1500 });
    const b = await runModel({ mode: 'writethrough', seed: 11, faultSeed: 1, ops: 1500 });
    const c = await runModel({ mode: 'writethrough', seed: 11, faultSeed: 2, ops: 1500 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    // The workload does not depend on the fault stream.
    assert.equal(a.reads, c.reads);
  });
});
