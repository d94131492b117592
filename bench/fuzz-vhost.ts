/**
 * Long runs of the seeded vhost-user fuzzer (src/frontend/fuzzer.ts: what it covers) against
 * the daemon (src/bench/fuzz-target.ts). Prints the seed, progress and the iteration count;
 * exits 1 with the reproduction line when the daemon dies or stops serving its other export.
 *
 *   node dist/bench/fuzz-vhost.js [--seed N] [--from I] [--iterations N] [--minutes M]
 */
import { startFuzzTarget } from '../src/bench/fuzz-target';
import { Fuzzer } from '../src/frontend/fuzzer';

function arg(name: string): number | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : undefined;
}

async function main(): Promise<void> {
  const seed = arg('seed') ?? Math.floor(Math.random() * 2 ** 32);
  const iterations = arg('iterations');
  const minutes = arg('minutes') ?? (iterations === undefined ? 10 : undefined);
  const from = arg('from') ?? 0;
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

void main();
