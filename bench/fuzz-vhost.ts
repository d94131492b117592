/**
 * Long runs of the seeded vhost-user fuzzer (src/frontend/fuzzer.ts: what it covers) against
 * the daemon (src/bench/fuzz-target.ts). Prints the seed, progress and the iteration count;
 * exits 1 with the reproduction line when the daemon dies or stops serving its other export.
 *
 *   node dist/bench/fuzz-vhost.js [--seed N] [--from I] [--iterations N] [--minutes M]
 *
 * Options are checked first (an unknown one is an error; --help prints the usage).
 */
import { parseArgs } from 'node:util';
import { exitOnHelp } from '../src/bench/cli';
import { startFuzzTarget } from '../src/bench/fuzz-target';
import { Fuzzer } from '../src/frontend/fuzzer';

const USAGE = 'usage: node dist/bench/fuzz-vhost.js [--seed N] [--from I] [--iterations N] [--minutes M]';

/** The option's value as a number (integer unless `fraction`), at least `min`; undefined when absent. */
function num(values: Record<string, unknown>, name: string, min: number, fraction = false): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || (!fraction && !Number.isInteger(n))) throw new Error(`--${name}: want ${fraction ? 'a number' : 'an integer'} >= ${min}, not '${String(v)}'\n${USAGE}`);
  return n;
}

async function main(): Promise<void> {
  exitOnHelp(USAGE);
  // Unknown options are refused (strict): a mistyped option must not start a ten-minute run.
  const { values } = parseArgs({
    options: { seed: { type: 'string' }, from: { type: 'string' }, iterations: { type: 'string' }, minutes: { type: 'string' } },
  });
  const seed = num(values, 'seed', 0) ?? Math.floor(Math.random() * 2 ** 32);
  const iterations = num(values, 'iterations', 1);
  const minutes = num(values, 'minutes', 0, true) ?? (iterations === undefined ? 10 : undefined);
  const from = num(values, 'from', 0) ?? 0;
  console.log(`fuzz-vhost: seed ${seed}, from ${from}, ${iterations ?? 'unlimited'} iterations, ${minutes ?? 'unlimited'} minutes`);
  const t = await startFuzzTarget();
  const start = Date.now();
  let last = start;
  try {
    const report = await new Fuzzer({
      seed,
      from,
      socketPath: t.socketPath,
      probe: () => t.probe(),
      ...(iterations !== undefined ? { iterations } : {}),
      ...(minutes !== undefined ? { durationMs: minutes * 60_000 } : {}),
      onIteration: (it) => {
        if (Date.now() - last >= 10_000) {
          last = Date.now();
          console.log(`  iteration ${it} after ${((last - start) / 1000).toFixed(0)} s`);
        }
      },
    }).run();
    console.log(
      `done: ${report.iterations} iterations in ${((Date.now() - start) / 1000).toFixed(0)} s, ${report.messages} messages, ` +
        `${report.chains} chains, ${report.dropped} connections dropped, ${report.timedOut} iterations timed out`,
    );
  } catch (err) {
    console.error((err as Error).message);
    process.exitCode = 1;
  } finally {
    await t.stop();
  }
}

main().catch((err: Error) => {
  console.error(`fuzz-vhost: ${err.message}`);
  process.exitCode = 1;
});
