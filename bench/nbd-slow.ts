/**
 * Issue 5: a slow network backing store: nbdkit's memory plugin behind the delay filter
 * (rdelay=1ms wdelay=1ms), 4 KiB random reads at depth 16 over a working set that fits the cache.
 *   qsd   qemu-storage-daemon serving the NBD export over vhost-user-blk
 *   cold  our daemon with a fresh (empty) cache: the measured pass starts with every read a miss
 *   warm  our daemon after a sequential pre-read pass over the working set
 * The export is first filled with non-zero data (sequential 64 KiB writes through qsd). Each
 * repetition restarts our daemon on a new cache file for the cold pass, then pre-reads and runs
 * the warm pass. Targets: warm >= 20x qsd, cold >= 0.9x qsd.
 *
 * Run: node dist/bench/nbd-slow.js [--runtime S] [--reps N] [--ws MiB]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, medianOf } from '../src/bench/measure';
import { type CacheDelta, fetchStats, startNbdkit, startQsd, startVbc, statsDelta, type Target } from '../src/bench/targets';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runtime: { type: 'string', default: '5' },
      reps: { type: 'string', default: '3' },
      ws: { type: 'string', default: '64' },
      depth: { type: 'string', default: '16' },
      dir: { type: 'string' },
    },
  });
  const runtime = Number(values.runtime);
  const reps = Number(values.reps);
  const ws = Number(values.ws) << 20;
  const depth = Number(values.depth);
  const exportSize = 4 * ws;
  const dir = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-bench-'));
  fs.mkdirSync(dir, { recursive: true });
  const nbdSock = path.join(dir, 'nbd.sock');
  const uri = `nbd+unix:///?socket=${nbdSock}`;
  const control = path.join(dir, 'control.sock');
  const sock = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock') };
  const commands: string[] = [];
  const stopAll: Target[] = [];
  try {
    const nbd = await startNbdkit({ socket: nbdSock, size: exportSize, readDelayMs: 1, writeDelayMs: 1 });
    stopAll.push(nbd);
    commands.push(nbd.command);
    const qsd = await startQsd({ socketPath: sock.qsd, nbd: { socket: nbdSock }, numQueues: 1 });
    stopAll.push(qsd);
    commands.push(qsd.command);
    await measureMode({ sockets: [sock.qsd], mode: 'write', bs: 65536, depth: 16, queues: 1, runtime: 600, count: ws / 65536, size: ws, seed: 1 });

    const res: Record<'qsd' | 'cold' | 'warm', Measurement[]> = { qsd: [], cold: [], warm: [] };
    const hit: Record<'cold' | 'warm', (number | null)[]> = { cold: [], warm: [] };
    const randread = { mode: 'randread' as const, bs: 4096, depth, queues: 1, runtime, size: ws };
    for (let r = 0; r < reps; r++) {
      const seed = 4000 + r;
      res.qsd.push(await measureMode({ ...randread, sockets: [sock.qsd], seed }));
      const cacheFile = path.join(dir, `cache${r}.img`);
      const ours = await startVbc({
        volumes: [{ name: 'vol0', socketPath: sock.ours, backing: uri, numQueues: 1 }],
        cache: { path: cacheFile, size: 2 * ws },
        control,
      });
      if (r === 0) commands.push(ours.command);
      try {
        const delta = async (f: () => Promise<Measurement>): Promise<[Measurement, CacheDelta | null]> => {
          const a = await fetchStats(control);
          const m = await f();
          const b = await fetchStats(control);
          return [m, a.cache !== null && b.cache !== null ? statsDelta(a.cache, b.cache) : null];
        };
        const [cold, dc] = await delta(() => measureMode({ ...randread, sockets: [sock.ours], seed }));
        res.cold.push(cold);
        hit.cold.push(dc?.readHitRate ?? null);
        await measureMode({ sockets: [sock.ours], mode: 'read', bs: 65536, depth: 16, queues: 1, runtime: 600, count: ws / 65536, size: ws, seed: 1 });
        const [warm, dw] = await delta(() => measureMode({ ...randread, sockets: [sock.ours], seed: seed + 100 }));
        res.warm.push(warm);
        hit.warm.push(dw?.readHitRate ?? null);
      } finally {
        await ours.stop();
        fs.rmSync(cacheFile, { force: true });
        fs.rmSync(`${cacheFile}.meta`, { force: true });
      }
      process.stderr.write(`rep ${r}: qsd ${fmtInt(res.qsd[r].iops)} cold ${fmtInt(res.cold[r].iops)} warm ${fmtInt(res.warm[r].iops)}\n`);
    }
    const med = { qsd: medianOf(res.qsd), cold: medianOf(res.cold), warm: medianOf(res.warm) };
    const hitStr = (xs: (number | null)[]): string => xs.map((x) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`)).join(', ');
    process.stdout.write(
      `\n## Slow NBD backing (nbdkit memory, delay filter rdelay=1ms wdelay=1ms): 4 KiB random reads, depth ${depth}, ` +
        `working set ${ws >> 20} MiB, cache ${(2 * ws) >> 20} MiB, ${runtime} s x ${reps} reps (medians)\n\n`,
    );
    const row = (name: string, m: Measurement, hits: string, per: Measurement[]): (string | number)[] => [
      name, fmtInt(m.iops), fmtRatio(m.iops, med.qsd.iops), fmtNum(m.lat.p50), fmtNum(m.lat.p99), hits, per.map((x) => fmtInt(x.iops)).join(', '),
    ];
    process.stdout.write(
      markdownTable(
        ['target', 'IOPS', 'vs qsd', 'p50 µs', 'p99 µs', 'hit rate', 'IOPS per rep'],
        [
          row('qemu-storage-daemon (NBD)', med.qsd, '-', res.qsd),
          row('vhost-blk-cache cold', med.cold, hitStr(hit.cold), res.cold),
          row('vhost-blk-cache warm', med.warm, hitStr(hit.warm), res.warm),
        ],
      ) + '\n\n',
    );
    const rw = med.warm.iops / med.qsd.iops;
    const rc = med.cold.iops / med.qsd.iops;
    process.stdout.write(`- warm / qsd: ${rw.toFixed(2)}x (target >= 20x): ${rw >= 20 ? 'met' : 'NOT met'}\n`);
    process.stdout.write(`- cold / qsd: ${rc.toFixed(2)}x (target >= 0.9x): ${rc >= 0.9 ? 'met' : 'NOT met'}\n\nCommands:\n\n`);
    for (const c of commands) process.stdout.write(`    ${c}\n`);
    process.stdout.write(`    node dist/bench/nbd-slow.js --runtime ${runtime} --reps ${reps} --ws ${ws >> 20} --depth ${depth}\n`);
  } finally {
    for (const t of stopAll.reverse()) await t.stop();
    if (values.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
