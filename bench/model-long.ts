/**
 * Long randomized model run of the cache (test/support/model-run.ts): >= 1 M operations by
 * default over every cache mode, with crashes, restarts and device errors; prints hit rate and
 * operations per run. A failure prints the one-line command that reruns the failing
 * configuration.
 *
 * Run: nice node dist/bench/model-long.js [--ops N] [--mode M] [--seed S] [--fault-seed F] [--block-size B] [--no-faults]
 *   without --mode: each mode in turn, seeds 1.., until --total operations (default 1 000 000).
 */
import { Command } from 'commander';
import type { CacheMode } from '../src/cache/cached-store';
import { type ModelOptions, runModel } from '../test/support/model-run';

async function main(): Promise<void> {
  const cmd = new Command()
    .option('--mode <mode>', 'writethrough | writearound | readonly | none')
    .option('--seed <n>', 'workload seed', '1')
    .option('--fault-seed <n>', 'fault seed (default: seed + 1000)')
    .option('--ops <n>', 'operations per run', '50000')
    .option('--total <n>', 'operations in all (without --mode)', '1000000')
    .option('--block-size <n>', 'cache block size', '4096')
    .option('--no-faults', 'no crashes, restarts or device errors')
    .parse();
  const o = cmd.opts<{ mode?: CacheMode; seed: string; faultSeed?: string; ops: string; total: string; faults: boolean; blockSize: string }>();
  const ops = Number(o.ops);
  const one = async (mode: CacheMode, seed: number, faultSeed: number) => {
    const opts: ModelOptions = { mode, seed, faultSeed, ops, faults: o.faults, blockSize: Number(o.blockSize) };
    const t = performance.now();
    const r = await runModel(opts);
    const s = (performance.now() - t) / 1000;
    console.log(
      `${mode.padEnd(12)} seed ${seed} fault-seed ${faultSeed}: ${r.ops} ops (${r.checkedReads} reads checked), ` +
        `hit rate ${(100 * r.hitRate).toFixed(1)} % of ${r.blockReads} block reads, ${r.crashes} crashes, ` +
        `${r.restarts} restarts, ${r.deviceErrors} device errors, ${s.toFixed(1)} s (${Math.round(r.ops / s)} ops/s)`,
    );
    return r.ops;
  };
  if (o.mode) {
    const seed = Number(o.seed);
    await one(o.mode, seed, o.faultSeed === undefined ? seed + 1000 : Number(o.faultSeed));
    return;
  }
  const modes: CacheMode[] = ['writethrough', 'writearound', 'readonly', 'none'];
  let done = 0;
  for (let seed = Number(o.seed); done < Number(o.total); seed++) {
    const mode = modes[(seed - Number(o.seed)) % modes.length];
    done += await one(mode, seed, o.faultSeed === undefined ? seed + 1000 : Number(o.faultSeed));
  }
  console.log(`total: ${done} operations`);
}

main().catch((err: unknown) => {
  console.error((err as Error).message);
  process.exit(1);
});
