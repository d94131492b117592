/**
 * The seeded vhost-user fuzzer (src/frontend/fuzzer.ts, coverage listed there) against the real
 * daemon for a fixed budget of 20 s: the daemon must survive every iteration and keep serving
 * its other export. The seed is VBC_FUZZ_SEED or random, printed; a failure names the one-line
 * reproduction. Long runs: bench/fuzz-vhost.ts.
 */
import { startFuzzTarget, type FuzzTarget } from '../../src/bench/fuzz-target';
import { Fuzzer } from '../../src/frontend/fuzzer';
import * as assert from 'node:assert/strict';

describe('vhost: seeded fuzzer (messages and descriptor chains) against the daemon', function () {
  this.timeout(90_000);
  let t: FuzzTarget | undefined;

  afterEach(async () => {
    await t?.stop();
    t = undefined;
  });

  it('survives 20 s of mutated message sequences and chains; the other export keeps serving', async () => {
    const seed = process.env.VBC_FUZZ_SEED !== undefined ? Number(process.env.VBC_FUZZ_SEED) : Math.floor(Math.random() * 2 ** 32);
    console.log(`      fuzz seed ${seed} (VBC_FUZZ_SEED=${seed} to repeat)`);
    t = await startFuzzTarget();
    const target = t;
    await target.probe();
    const report = await new Fuzzer({ seed, socketPath: target.socketPath, probe: () => target.probe(), durationMs: 20_000 }).run();
    console.log(`      ${report.iterations} iterations, ${report.messages} messages, ${report.chains} chains, ${report.dropped} connections dropped, ${report.timedOut} timed out`);
    assert.ok(report.iterations > 0);
    assert.ok(report.dropped > 0, 'mutations made the daemon drop some connections');
  });
});
