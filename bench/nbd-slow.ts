/**
 * Issue 5: a slow network backing store: nbdkit's memory plugin behind the delay filter
 * (rdelay=1ms wdelay=1ms), 4 KiB random reads at depth 16 over a working set that fits the cache.
 *   qsd   qemu-storage-daemon serving the NBD export over vhost-user-blk
 *   cold  our daemon with a fresh (empty) cache. Two figures: the first ws / 32 KiB random reads
 *         (8,192 at the default 256 MiB: fewer measure the JIT's warm-up, not a miss's cost;
 *         nearly all misses; compared with qsd running the same reads: the target; the daemon
 *         is first warmed up by as many reads of a range outside the working set), and a full
 *         timed pass, during which the cache warms up (shown with its hit rate)
 *   warm  our daemon after a sequential pre-read pass over the working set
 * The export is first filled with non-zero data (sequential 64 KiB writes through qsd). Each
 * repetition starts our daemon on new cache files for the cold passes, then pre-reads and runs
 * the warm pass.
 * Targets: warm >= 20x qsd, cold >= 0.9x qsd.
 * Besides IOPS it reports CPU time per request of the serving daemon (ours or qsd), of nbdkit and
 * of the front end (this process): on a shared machine these say where the time goes when
 * wall-clock figures do not.
 *
 * Run: node dist/bench/nbd-slow.js [--runtime S] [--reps N] [--ws MiB]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, median, medianOf, processCpuUs } from '../src/bench/measure';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';
import { fetchStats, startSlowNbd, startVbc, statsDelta } from '../src/bench/targets';

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 5, reps: 3, ws: 256, depth: 16 });
  const { num } = args;
  const { runtime, reps, depth } = num;
  const ws = num.ws * 2 ** 20;
  const exportSize = 4 * ws;
  const run = openBench(args);
  const { dir, targets } = run;
  const control = path.join(dir, 'control.sock');
  const sock = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock') };
  try {
    const slow = await startSlowNbd({ dir, size: exportSize, delayMs: 1, qsdSocket: sock.qsd });
    targets.push(...slow.targets);
    const { nbd, qsd, uri } = slow;
    await measureMode({ sockets: [sock.qsd], mode: 'write', bs: 65536, depth: 16, queues: 1, runtime: 600, count: ws / 65536, size: ws, seed: 1 });

    type Pass = 'qsd' | 'qsdFirst' | 'first' | 'cold' | 'warm';
    const res: Record<Pass, Measurement[]> = { qsd: [], qsdFirst: [], first: [], cold: [], warm: [] };
    /** CPU µs per request of [daemon, nbdkit, front end] in each rep. */
    const cpu: Record<Pass, number[][]> = { qsd: [], qsdFirst: [], first: [], cold: [], warm: [] };
    let daemonPid = qsd.pid;
    const timed = async (k: Pass, f: () => Promise<Measurement>): Promise<Measurement> => {
      const pids = [daemonPid, nbd.pid];
      const c0 = pids.map(processCpuUs);
      const s0 = process.cpuUsage();
      const m = await f();
      const self = process.cpuUsage(s0);
      cpu[k].push([...pids.map((p, i) => (processCpuUs(p) - (c0[i] as number)) / m.ops), (self.user + self.system) / m.ops]);
      return m;
    };
    const hit: Record<'first' | 'cold' | 'warm', (number | null)[]> = { first: [], cold: [], warm: [] };
    const randread = { mode: 'randread' as const, bs: 4096, depth, queues: 1, runtime, size: ws };
    // The first `firstCount` random reads of a fresh cache are nearly all misses (few repeats).
    const firstCount = Math.floor(ws / 4096 / 8);
    const withOurs = async (r: number, tag: string, body: () => Promise<void>): Promise<void> => {
      const cacheFile = path.join(dir, `cache${r}-${tag}.img`);
      const ours = await startVbc({
        volumes: [{ name: 'vol0', socketPath: sock.ours, backing: uri, numQueues: 1 }],
        cache: { path: cacheFile, size: 2 * ws },
        control,
      });
      if (run.commands.length === 0) run.commands.push(ours.command);
      daemonPid = ours.pid;
      try {
        await body();
      } finally {
        await ours.stop();
        fs.rmSync(cacheFile, { force: true });
        daemonPid = qsd.pid;
      }
    };
    const delta = async (k: Pass, f: () => Promise<Measurement>): Promise<[Measurement, number | null]> => {
      const a = await fetchStats(control);
      const m = await timed(k, f);
      const b = await fetchStats(control);
      return [m, a.cache !== null && b.cache !== null ? statsDelta(a.cache, b.cache).readHitRate : null];
    };
    const push = (k: 'first' | 'cold' | 'warm', [m, h]: [Measurement, number | null]): void => {
      res[k].push(m);
      hit[k].push(h);
    };
    for (let r = 0; r < reps; r++) {
      const seed = 4000 + r;
      res.qsd.push(await timed('qsd', () => measureMode({ ...randread, sockets: [sock.qsd], seed })));
      res.qsdFirst.push(await timed('qsdFirst', () => measureMode({ ...randread, sockets: [sock.qsd], seed: seed + 50, count: firstCount })));
      await withOurs(r, 'first', async () => {
        // Warm up the daemon (JIT, NBD connection, cache log) on a range outside the working set.
        await measureMode({ ...randread, sockets: [sock.ours], seed: seed + 70, count: firstCount, offset: 2 * ws });
        push('first', await delta('first', () => measureMode({ ...randread, sockets: [sock.ours], seed: seed + 50, count: firstCount })));
      });
      await withOurs(r, 'run', async () => {
        push('cold', await delta('cold', () => measureMode({ ...randread, sockets: [sock.ours], seed })));
        await measureMode({ sockets: [sock.ours], mode: 'read', bs: 65536, depth: 16, queues: 1, runtime: 600, count: ws / 65536, size: ws, seed: 1 });
        push('warm', await delta('warm', () => measureMode({ ...randread, sockets: [sock.ours], seed: seed + 100 })));
      });
      process.stderr.write(
        `rep ${r}: qsd ${fmtInt(res.qsd[r].iops)} qsd-first ${fmtInt(res.qsdFirst[r].iops)} first ${fmtInt(res.first[r].iops)} ` +
          `cold ${fmtInt(res.cold[r].iops)} warm ${fmtInt(res.warm[r].iops)}\n`,
      );
    }
    const med = {
      qsd: medianOf(res.qsd), qsdFirst: medianOf(res.qsdFirst), first: medianOf(res.first), cold: medianOf(res.cold), warm: medianOf(res.warm),
    };
    const hitStr = (xs: (number | null)[]): string => xs.map((x) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`)).join(', ');
    process.stdout.write(
      `\n## Slow NBD backing (nbdkit memory, delay filter rdelay=1ms wdelay=1ms): 4 KiB random reads, depth ${depth}, ` +
        `working set ${ws >> 20} MiB, cache ${(2 * ws) >> 20} MiB, ${runtime} s x ${reps} reps (medians)\n\n`,
    );
    const cpuCells = (k: Pass): string[] => [0, 1, 2].map((i) => fmtNum(median(cpu[k].map((c) => c[i] as number)), 1));
    const row = (k: Pass, name: string, m: Measurement, base: Measurement, hits: string, per: Measurement[]): (string | number)[] => [
      name, fmtInt(m.iops), fmtRatio(m.iops, base.iops), fmtNum(m.lat.p50), fmtNum(m.lat.p99), hits, ...cpuCells(k), per.map((x) => fmtInt(x.iops)).join(', '),
    ];
    process.stdout.write(
      markdownTable(
        ['target', 'IOPS', 'vs qsd (same pass)', 'p50 µs', 'p99 µs', 'hit rate', 'daemon CPU µs/req', 'nbdkit CPU µs/req', 'front end CPU µs/req', 'IOPS per rep'],
        [
          row('qsd', `qemu-storage-daemon (NBD), ${runtime} s`, med.qsd, med.qsd, '-', res.qsd),
          row('qsdFirst', `qemu-storage-daemon (NBD), first ${firstCount} reads`, med.qsdFirst, med.qsdFirst, '-', res.qsdFirst),
          row('first', `vhost-blk-cache cold, first ${firstCount} reads of a fresh cache`, med.first, med.qsdFirst, hitStr(hit.first), res.first),
          row('cold', `vhost-blk-cache cold, ${runtime} s from a fresh cache (warms up)`, med.cold, med.qsd, hitStr(hit.cold), res.cold),
          row('warm', `vhost-blk-cache warm, ${runtime} s`, med.warm, med.qsd, hitStr(hit.warm), res.warm),
        ],
      ) + '\n\n',
    );
    const rw = med.warm.iops / med.qsd.iops;
    const rc = med.first.iops / med.qsdFirst.iops;
    process.stdout.write(`- warm / qsd: ${rw.toFixed(2)}x (target >= 20x): ${rw >= 20 ? 'met' : 'NOT met'}\n`);
    process.stdout.write(`- cold (first ${firstCount} reads, nearly all misses) / qsd on the same reads: ${rc.toFixed(2)}x (target >= 0.9x): ${rc >= 0.9 ? 'met' : 'NOT met'}\n\n`);
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
