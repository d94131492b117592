/**
 * Issue 2: our daemon (no cache) vs qemu-storage-daemon serving the same page-cached file, through
 * our front end (a separate process from both daemons): 4 KiB random read and random write at queue
 * depth 1 and 32 (per queue), with one and two queues. Both daemons run at once (idle one costs
 * nothing) and the repetitions alternate ours / qsd so drift hits both alike.
 * Targets: IOPS at depth 32 >= 1.0x qsd; added median latency at depth 1 <= 10 µs.
 *
 * Run: node dist/bench/vhost-vs-qsd.js [--runtime S] [--reps N] [--size MiB] [--dir DIR]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, medianOf } from '../src/bench/measure';
import type { ModeName } from '../src/bench/modes';
import { makeImage, startQsd, startVbc } from '../src/bench/targets';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 4, reps: 3, size: 256 });
  const { num } = args;
  const { runtime, reps } = num;
  const size = num.size * 2 ** 20;
  const run = openBench(args);
  const { dir, targets } = run;
  const image = path.join(dir, 'disk.img');
  makeImage(image, size, 'random');
  fs.readFileSync(image); // into the page cache

  try {
    const ours = await startVbc({ volumes: [{ name: 'vol0', socketPath: path.join(dir, 'vbc.sock'), backing: image, numQueues: 2 }] });
    targets.push(ours);
    const qsd = await startQsd({ socketPath: path.join(dir, 'qsd.sock'), image, numQueues: 2 });
    targets.push(qsd);
    const sockets = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock') };

    const rows: (string | number)[][] = [];
    const verdicts: string[] = [];
    for (const mode of ['randread', 'randwrite'] as ModeName[]) {
      for (const queues of [1, 2]) {
        for (const depth of [1, 32]) {
          const res: Record<'ours' | 'qsd', Measurement[]> = { ours: [], qsd: [] };
          for (let r = 0; r < reps; r++) {
            for (const who of ['ours', 'qsd'] as const) {
              res[who].push(
                await measureMode({ sockets: [sockets[who]], mode, bs: 4096, depth, queues, runtime, seed: 1000 + r }),
              );
            }
          }
          const a = medianOf(res.ours);
          const b = medianOf(res.qsd);
          const added = a.lat.p50 - b.lat.p50;
          rows.push([
            mode, queues, depth,
            fmtInt(a.iops), fmtInt(b.iops), fmtRatio(a.iops, b.iops),
            fmtNum(a.lat.p50), fmtNum(b.lat.p50), fmtNum(added),
            fmtNum(a.lat.p99), fmtNum(b.lat.p99),
          ]);
          if (depth === 32) {
            verdicts.push(`${mode} q${queues} d32: IOPS ratio ${fmtRatio(a.iops, b.iops)} (target >= 1.00x): ${a.iops >= b.iops ? 'met' : 'NOT met'}`);
          } else {
            verdicts.push(`${mode} q${queues} d1: added median latency ${fmtNum(added)} µs (target <= 10 µs): ${added <= 10 ? 'met' : 'NOT met'}`);
          }
          process.stderr.write(`${rows[rows.length - 1].join(' | ')}\n`);
        }
      }
    }
    process.stdout.write(`\n## vhost-blk-cache (no cache) vs qemu-storage-daemon, 4 KiB, ${runtime} s x ${reps} reps (medians)\n\n`);
    process.stdout.write(
      markdownTable(
        ['mode', 'queues', 'depth/queue', 'ours IOPS', 'qsd IOPS', 'ratio', 'ours p50 µs', 'qsd p50 µs', 'added p50 µs', 'ours p99 µs', 'qsd p99 µs'],
        rows,
      ) + '\n\n',
    );
    process.stdout.write(verdicts.map((v) => `- ${v}`).join('\n') + '\n\n');
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
