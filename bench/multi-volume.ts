/**
 * Issue 4: aggregate 4 KiB random-read IOPS of 1, 2 and 4 volumes served by one daemon from one
 * warm cache. Four volumes (each its own backing file) share the cache; every volume's working set
 * is pre-read once (fills the cache), then 1, 2 or 4 volumes are driven at once, depth 32 each, by
 * one front end process (this one) with one connection per volume. Repetitions cycle through the
 * volume counts. Target: aggregate of 4 volumes >= aggregate of 1 volume.
 *
 * Run: node dist/bench/multi-volume.js [--runtime S] [--reps N] [--ws MiB-per-volume]
 */
import * as path from 'node:path';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, medianOf } from '../src/bench/measure';
import { fetchStats, makeImage, startVbc, statsDelta, type VbcVolume } from '../src/bench/targets';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';

const COUNTS = [1, 2, 4];

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 5, reps: 3, ws: 32, depth: 32 });
  const { num } = args;
  const { runtime, reps, depth } = num;
  const ws = num.ws * 2 ** 20;
  const run = openBench(args);
  const { dir, targets } = run;
  const volumes: VbcVolume[] = [0, 1, 2, 3].map((i) => {
    const backing = path.join(dir, `disk${i}.img`);
    makeImage(backing, 2 * ws, 'random');
    return { name: `vol${i}`, socketPath: path.join(dir, `vol${i}.sock`), backing, numQueues: 1 };
  });
  const control = path.join(dir, 'control.sock');
  const cacheSize = 4 * ws + 2 * ws;
  try {
    targets.push(
      await startVbc({ volumes, cache: { path: path.join(dir, 'cache.img'), size: cacheSize }, control, configPath: path.join(dir, 'config.json') }),
    );
    await measureMode({
      sockets: volumes.map((v) => v.socketPath),
      mode: 'read', bs: 65536, depth: 8, queues: 1, runtime: 600, count: ws / 65536, size: ws, seed: 1,
    });
    const s0 = await fetchStats(control);
    const res = new Map<number, Measurement[]>(COUNTS.map((n) => [n, []]));
    for (let r = 0; r < reps; r++) {
      for (const n of COUNTS) {
        const m = await measureMode({
          sockets: volumes.slice(0, n).map((v) => v.socketPath),
          mode: 'randread', bs: 4096, depth, queues: 1, runtime, size: ws, seed: 3000 + 10 * r,
        });
        res.get(n)?.push(m);
      }
    }
    const s1 = await fetchStats(control);
    const d = s0.cache !== null && s1.cache !== null ? statsDelta(s0.cache, s1.cache) : null;
    const med = new Map(COUNTS.map((n) => [n, medianOf(res.get(n) ?? [])]));
    const one = med.get(1)?.iops ?? 0;
    process.stdout.write(
      `\n## Multi-volume: aggregate 4 KiB random reads from one warm cache, depth ${depth} per volume, ` +
        `${ws >> 20} MiB working set per volume, cache ${cacheSize >> 20} MiB, ${runtime} s x ${reps} reps (medians)\n\n`,
    );
    process.stdout.write(
      markdownTable(
        ['volumes', 'aggregate IOPS', 'vs 1 volume', 'p50 µs', 'p99 µs', 'IOPS per rep'],
        COUNTS.map((n) => {
          const m = med.get(n) as Measurement;
          return [n, fmtInt(m.iops), fmtRatio(m.iops, one), fmtNum(m.lat.p50), fmtNum(m.lat.p99), (res.get(n) ?? []).map((x) => fmtInt(x.iops)).join(', ')];
        }),
      ) + '\n\n',
    );
    const four = med.get(4)?.iops ?? 0;
    process.stdout.write(`- 4 volumes / 1 volume: ${fmtRatio(four, one)} (target >= 1.00x): ${four >= one ? 'met' : 'NOT met'}\n`);
    if (d !== null) process.stdout.write(`- cache during the measured passes: reads ${fmtInt(d.reads)}, hit rate ${fmtNum((d.readHitRate ?? 0) * 100)} %\n`);
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
