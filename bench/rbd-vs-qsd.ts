/**
 * Issue 15: the RBD backing (librbd in our daemon) vs qemu-storage-daemon's rbd driver on the
 * same image of a single-node Ceph cluster started here (test/support/ceph-cluster.ts: one
 * monitor, one memstore OSD), through our front end:
 *  - pass-through (our daemon without a cache): 4 KiB random read and random write, depth 16;
 *    target >= 0.9x qsd;
 *  - warm hits: our daemon with a cache holding the whole image (a sequential pre-read fills
 *    it), 4 KiB random reads, depth 16, vs qsd on the cluster; target >= 20x qsd.
 * The image has only the layering feature (no exclusive lock), so both daemons keep it open
 * at once; repetitions alternate ours / qsd. The warm daemon starts after the write passes
 * (one writer at a time: its cache never sees another writer's changes).
 *
 * Run: node dist/bench/rbd-vs-qsd.js [--runtime S] [--reps N] [--size MiB] [--dir DIR]
 */
import * as path from 'node:path';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, medianOf, type Measurement } from '../src/bench/measure';
import type { ModeName } from '../src/bench/modes';
import { fetchStats, startQsd, startVbc, statsDelta } from '../src/bench/targets';
import { CephCluster } from '../test/support/ceph-cluster';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';

const DEPTH = 16;

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 4, reps: 3, size: 128 });
  const { num } = args;
  const { runtime, reps } = num;
  const size = num.size * 2 ** 20;
  const run = openBench(args, 'rbd-');
  const { dir, targets } = run;
  const ceph = await CephCluster.start();
  try {
    await ceph.rbd('create', '--image-feature', 'layering', '--size', `${size >> 20}M`, `${ceph.pool}/bench`);
    await ceph.rbd('bench', '--io-type', 'write', '--io-pattern', 'seq', '--io-size', '4M', '--io-total', `${size >> 20}M`, `${ceph.pool}/bench`);
    const backing = `rbd:${ceph.pool}/bench:conf=${ceph.conf}`;
    const sock = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock'), warm: path.join(dir, 'warm.sock') };
    targets.push(await startVbc({ volumes: [{ name: 'vol0', socketPath: sock.ours, backing }] }));
    targets.push(await startQsd({ socketPath: sock.qsd, rbd: { pool: ceph.pool, image: 'bench', conf: ceph.conf } }));

    const rows: (string | number)[][] = [];
    const verdicts: string[] = [];
    const qsdRead: Measurement[] = [];
    for (const mode of ['randread', 'randwrite'] as ModeName[]) {
      const res: Record<'ours' | 'qsd', Measurement[]> = { ours: [], qsd: [] };
      for (let r = 0; r < reps; r++) {
        for (const who of ['ours', 'qsd'] as const) {
          res[who].push(await measureMode({ sockets: [sock[who]], mode, bs: 4096, depth: DEPTH, queues: 1, runtime, seed: 1000 + r }));
        }
      }
      if (mode === 'randread') qsdRead.push(...res.qsd);
      const a = medianOf(res.ours);
      const b = medianOf(res.qsd);
      rows.push([
        `${mode} pass-through`, fmtInt(a.iops), fmtInt(b.iops), fmtRatio(a.iops, b.iops), fmtNum(a.lat.p50), fmtNum(b.lat.p50),
        res.ours.map((m) => fmtInt(m.iops)).join(', '), res.qsd.map((m) => fmtInt(m.iops)).join(', '),
      ]);
      verdicts.push(`${mode} pass-through: ${fmtRatio(a.iops, b.iops)} (target >= 0.90x): ${a.iops >= 0.9 * b.iops ? 'met' : 'NOT met'}`);
      process.stderr.write(`${rows[rows.length - 1].join(' | ')}\n`);
    }

    const control = path.join(dir, 'control.sock');
    targets.push(
      await startVbc({
        volumes: [{ name: 'vol0', socketPath: sock.warm, backing }],
        cache: { path: path.join(dir, 'cache.img'), size: size + (size >> 1) },
        control,
      }),
    );
    const pre = await measureMode({ sockets: [sock.warm], mode: 'read', bs: 65536, depth: 8, queues: 1, runtime: 600, count: size / 65536, size, seed: 1 });
    const s0 = await fetchStats(control);
    const warm: Measurement[] = [];
    const qsdAgain: Measurement[] = [];
    for (let r = 0; r < reps; r++) {
      warm.push(await measureMode({ sockets: [sock.warm], mode: 'randread', bs: 4096, depth: DEPTH, queues: 1, runtime, seed: 2000 + r }));
      qsdAgain.push(await measureMode({ sockets: [sock.qsd], mode: 'randread', bs: 4096, depth: DEPTH, queues: 1, runtime, seed: 2000 + r }));
    }
    const s1 = await fetchStats(control);
    const d = s0.cache !== null && s1.cache !== null ? statsDelta(s0.cache, s1.cache) : null;
    const w = medianOf(warm);
    const q = medianOf(qsdAgain);
    rows.push([
      'randread warm hits', fmtInt(w.iops), fmtInt(q.iops), fmtRatio(w.iops, q.iops), fmtNum(w.lat.p50), fmtNum(q.lat.p50),
      warm.map((m) => fmtInt(m.iops)).join(', '), qsdAgain.map((m) => fmtInt(m.iops)).join(', '),
    ]);
    verdicts.push(`warm hits: ${fmtRatio(w.iops, q.iops)} (target >= 20x): ${w.iops >= 20 * q.iops ? 'met' : 'NOT met'}`);

    process.stdout.write(`\n## RBD: vhost-blk-cache (librbd) vs qemu-storage-daemon (rbd driver), 4 KiB, depth ${DEPTH}, 1 queue, image ${size >> 20} MiB, ${runtime} s x ${reps} reps (medians)\n\n`);
    process.stdout.write(
      markdownTable(['workload', 'ours IOPS', 'qsd IOPS', 'ratio', 'ours p50 µs', 'qsd p50 µs', 'ours per rep', 'qsd per rep'], rows) + '\n\n',
    );
    for (const v of verdicts) process.stdout.write(`- ${v}\n`);
    if (d !== null) {
      process.stdout.write(`- warm passes: cache reads ${fmtInt(d.reads)}, hit rate ${fmtNum((d.readHitRate ?? 0) * 100)} %\n`);
    }
    process.stdout.write(`- pre-read pass (fills the cache): ${fmtInt(pre.mibps)} MiB/s\n\n`);
    run.report();
  } finally {
    await run.close();
    await ceph.stop();
  }
}

benchMain(main);
