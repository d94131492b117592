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
import { parseArgs } from 'node:util';
import { fmtInt, machineNote, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, medianOf } from '../src/bench/measure';
import type { ModeName } from '../src/bench/modes';
import { benchDir, makeImage, startQsd, startVbc, type Target } from '../src/bench/targets';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runtime: { type: 'string', default: '4' },
      reps: { type: 'string', default: '3' },
      size: { type: 'string', default: '256' },
      dir: { type: 'string' },
    },
  });
  const runtime = Number(values.runtime);
  const reps = Number(values.reps);
  const size = Number(values.size) << 20;
  const loadBefore = machineNote();
  const dir = benchDir(values.dir);
  const image = path.join(dir, 'disk.img');
  makeImage(image, size, 'random');
  fs.readFileSync(image); // into the page cache

  const targets: Target[] = [];
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
    process.stdout.write(`Machine at start: ${loadBefore}\nMachine at end:   ${machineNote()}\n\n`);
    process.stdout.write(`Image: ${image} (${size >> 20} MiB, random data, page-cached)\n\nCommands:\n\n`);
    for (const t of targets) process.stdout.write(`    ${t.command}\n`);
    process.stdout.write(`    node dist/bench/vhost-vs-qsd.js --runtime ${runtime} --reps ${reps} --size ${size >> 20}\n`);
  } finally {
    for (const t of targets) await t.stop();
    if (values.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
