/**
 * Issue 3: 4 KiB random reads at depth 32 over a working set that fits the cache, warm: a
 * sequential pre-read pass over the working set (which fills our cache), then the measured random
 * pass. Ours serves the backing file through --cache; qemu-storage-daemon reads the same
 * (page-cached) backing file. Repetitions alternate ours / qsd. Target: ours >= 1.0x qsd.
 *
 * Run: node dist/bench/cache-warm.js [--runtime S] [--reps N] [--ws MiB] [--queues N]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, medianOf } from '../src/bench/measure';
import { fetchStats, makeImage, startQsd, startVbc, statsDelta } from '../src/bench/targets';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 5, reps: 3, ws: 128, queues: 1 });
  const { num } = args;
  const { runtime, reps, queues } = num;
  const ws = num.ws * 2 ** 20;
  const imageSize = 2 * ws;
  const cacheSize = ws + (ws >> 1);
  const run = openBench(args);
  const { dir, targets } = run;
  const image = path.join(dir, 'disk.img');
  makeImage(image, imageSize, 'random');
  fs.readFileSync(image);
  const control = path.join(dir, 'control.sock');
  const sock = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock') };
  try {
    targets.push(
      await startVbc({
        volumes: [{ name: 'vol0', socketPath: sock.ours, backing: image, numQueues: queues }],
        cache: { path: path.join(dir, 'cache.img'), size: cacheSize },
        control,
      }),
    );
    targets.push(await startQsd({ socketPath: sock.qsd, image, numQueues: queues }));
    // Pre-read pass: sequential 64 KiB reads over the working set.
    const preread = { mode: 'read' as const, bs: 65536, depth: 8, queues, runtime: 600, count: ws / 65536, size: ws, seed: 1 };
    const warm: Record<string, Measurement> = {};
    for (const who of ['ours', 'qsd'] as const) warm[who] = await measureMode({ ...preread, sockets: [sock[who]] });
    const s0 = await fetchStats(control);
    const res: Record<'ours' | 'qsd', Measurement[]> = { ours: [], qsd: [] };
    for (let r = 0; r < reps; r++) {
      for (const who of ['ours', 'qsd'] as const) {
        res[who].push(await measureMode({ sockets: [sock[who]], mode: 'randread', bs: 4096, depth: 32, queues, runtime, size: ws, seed: 2000 + r }));
      }
    }
    const s1 = await fetchStats(control);
    const d = s0.cache !== null && s1.cache !== null ? statsDelta(s0.cache, s1.cache) : null;
    const a = medianOf(res.ours);
    const b = medianOf(res.qsd);
    process.stdout.write(
      `\n## Warm cache: 4 KiB random reads, depth 32, ${queues} queue(s), working set ${ws >> 20} MiB, cache ${cacheSize >> 20} MiB, ${runtime} s x ${reps} reps (medians)\n\n`,
    );
    process.stdout.write(
      markdownTable(
        ['target', 'IOPS', 'p50 µs', 'p99 µs', 'p99.9 µs', 'IOPS per rep'],
        [
          ['vhost-blk-cache --cache (warm)', fmtInt(a.iops), fmtNum(a.lat.p50), fmtNum(a.lat.p99), fmtNum(a.lat.p999), res.ours.map((m) => fmtInt(m.iops)).join(', ')],
          ['qemu-storage-daemon (page cache)', fmtInt(b.iops), fmtNum(b.lat.p50), fmtNum(b.lat.p99), fmtNum(b.lat.p999), res.qsd.map((m) => fmtInt(m.iops)).join(', ')],
        ],
      ) + '\n\n',
    );
    process.stdout.write(`- ratio ours / qsd: ${fmtRatio(a.iops, b.iops)} (target >= 1.00x): ${a.iops >= b.iops ? 'met' : 'NOT met'}\n`);
    if (d !== null) {
      process.stdout.write(
        `- cache during the measured passes: reads ${fmtInt(d.reads)}, hit rate ${fmtNum((d.readHitRate ?? 0) * 100)} %, ` +
          `RAM hits ${fmtInt(d.ramHits)}, storage hits ${fmtInt(d.storageHits)}, insertions ${fmtInt(d.insertions)}\n`,
      );
    }
    process.stdout.write(`- pre-read pass: ours ${fmtInt(warm.ours.mibps)} MiB/s, qsd ${fmtInt(warm.qsd.mibps)} MiB/s\n\n`);
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
