/**
 * Issue 16: cache hits must not wait for the cache's own work. One daemon, one cache, two volumes:
 * `hot` serves a page-cached image whose blocks are all cached (every read is a hit), `cold` a
 * large NBD export (nbdkit memory behind the delay filter, as the slow-store benchmarks) read at
 * random in 64 KiB requests, so every read misses and is inserted: segment writes, evictions and
 * insertion copies run all along. Each repetition measures 4 KiB random reads of `hot` alone, then
 * the same reads while a second process (this script with --miss-stream) runs the misses, and
 * reports the hits' latency percentiles, the daemon's CPU time per request and the segment writes
 * that happened meanwhile.
 *
 * Target (issue 16): the hits' p99 with the miss stream stays that of hits alone (segment writes,
 * read-ahead and insertion work never delay a hit's completion).
 *
 * Run: node dist/bench/hits-under-misses.js [--runtime S] [--reps N] [--depth D] [--miss-depth D] [--nbd-delay MS]
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fmtInt, fmtNum, markdownTable, measureMode, median, type Measurement, processCpuUs } from '../src/bench/measure';
import { fetchStats, makeImage, startNbdkit, startVbc } from '../src/bench/targets';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';

const HOT_BYTES = 32 << 20;
const COLD_BYTES = 4 * 2 ** 30;
const MISS_BS = 65536;
/** The miss stream, in its own process so that its front end does not share the hits' loop. */
function missStream(sock: string, depth: number, runtime: number, seed: number): Promise<Measurement> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [__filename, '--miss-stream', sock, '--miss-depth', String(depth), '--runtime', String(runtime), '--seed', String(seed)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as Measurement) : reject(new Error(`miss stream exited with ${code}`))));
  });
}

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 3, reps: 3, depth: 4, 'miss-depth': 16, 'nbd-delay': 1, seed: 1 }, { 'miss-stream': { type: 'string' } });
  const { num, values } = args;
  const { runtime, reps, depth } = num;
  const missDepth = num['miss-depth'];
  const missStreamSocket = values['miss-stream'];
  if (typeof missStreamSocket === 'string') {
    const m = await measureMode({ sockets: [missStreamSocket], mode: 'randread', bs: MISS_BS, depth: missDepth, queues: 1, runtime, size: COLD_BYTES, seed: num.seed });
    process.stdout.write(JSON.stringify(m));
    return;
  }
  const delay = num['nbd-delay'];
  const run = openBench(args, 'hum-');
  const { dir, targets } = run;
  const image = path.join(dir, 'hot.img');
  makeImage(image, HOT_BYTES, 'random');
  fs.readFileSync(image); // in the page cache
  const nbdSock = path.join(dir, 'nbd.sock');
  const control = path.join(dir, 'control.sock');
  const sock = { hot: path.join(dir, 'hot.sock'), cold: path.join(dir, 'cold.sock') };
  try {
    const nbd = await startNbdkit({ socket: nbdSock, size: COLD_BYTES, readDelayMs: delay, writeDelayMs: delay });
    targets.push(nbd);
    const ours = await startVbc({
      volumes: [
        { name: 'hot', socketPath: sock.hot, backing: image },
        { name: 'cold', socketPath: sock.cold, backing: `nbd+unix:///?socket=${nbdSock}` },
      ],
      cache: { path: path.join(dir, 'cache.img'), size: 8 * HOT_BYTES, direct: false },
      control,
      configPath: path.join(dir, 'config.json'),
    });
    targets.push(ours);
    for (let pass = 0; pass < 10; pass++) {
      await measureMode({ sockets: [sock.hot], mode: 'read', bs: 65536, depth: 4, queues: 1, runtime: 600, count: HOT_BYTES / 65536, size: HOT_BYTES, seed: 1 });
      if (((await fetchStats(control)).cache?.blocks ?? 0) >= HOT_BYTES / 4096) break; // only hot is read so far
    }
    const hits = { mode: 'randread' as const, bs: 4096, depth, queues: 1, runtime, size: HOT_BYTES, sockets: [sock.hot] };
    const rows: string[][] = [];
    const alone: Measurement[] = [];
    const mixed: Measurement[] = [];
    for (let r = 0; r < reps; r++) {
      const c0 = processCpuUs(ours.pid);
      const a = await measureMode({ ...hits, seed: 3000 + r });
      const c1 = processCpuUs(ours.pid);
      const s0 = await fetchStats(control);
      const [h, m] = await Promise.all([measureMode({ ...hits, seed: 4000 + r }), missStream(sock.cold, missDepth, runtime, 5000 + r)]);
      const s1 = await fetchStats(control);
      const c2 = processCpuUs(ours.pid);
      alone.push(a);
      mixed.push(h);
      const segWrites = (s1.cache?.segmentWrites ?? 0) - (s0.cache?.segmentWrites ?? 0);
      const hotHits = (s1.cache?.volumes.hot?.readHits ?? 0) - (s0.cache?.volumes.hot?.readHits ?? 0);
      const hotReads = (s1.cache?.volumes.hot?.reads ?? 0) - (s0.cache?.volumes.hot?.reads ?? 0);
      rows.push([
        `${r + 1}`,
        `${fmtInt(a.iops)} / ${fmtNum(a.lat.p50)} / ${fmtNum(a.lat.p99)}`,
        `${fmtInt(h.iops)} / ${fmtNum(h.lat.p50)} / ${fmtNum(h.lat.p99)} / ${fmtNum(h.lat.p999)}`,
        `${fmtNum((hotHits / Math.max(1, hotReads)) * 100, 1)} %`,
        `${fmtInt(m.iops)} / ${fmtNum(m.lat.p99)}`,
        fmtInt(segWrites),
        fmtNum((c1 - c0) / a.ops, 2),
        fmtNum((c2 - c1) / (h.ops + m.ops), 2),
      ]);
      process.stderr.write(`rep ${r}: hits alone p99 ${fmtNum(a.lat.p99)} µs, with misses p99 ${fmtNum(h.lat.p99)} µs\n`);
    }
    process.stdout.write(
      `\n## Hits with and without a concurrent miss stream: 4 KiB random hits at depth ${depth} over ${HOT_BYTES >> 20} MiB; ` +
        `misses: ${MISS_BS >> 10} KiB random reads at depth ${missDepth} of a ${COLD_BYTES / 2 ** 30} GiB NBD export (${delay} ms delay), ${runtime} s x ${reps} reps\n\n`,
    );
    process.stdout.write(
      markdownTable(
        ['rep', 'hits alone: IOPS / p50 / p99 µs', 'hits with misses: IOPS / p50 / p99 / p99.9 µs', 'hot hit rate', 'misses: IOPS / p99 µs', 'segment writes', 'daemon CPU µs/req alone', 'with misses'],
        rows,
      ) + '\n\n',
    );
    const p99a = median(alone.map((m) => m.lat.p99));
    const p99m = median(mixed.map((m) => m.lat.p99));
    process.stdout.write(`- median hit p99: alone ${fmtNum(p99a)} µs, with misses ${fmtNum(p99m)} µs (target: with <= alone): ${p99m <= p99a ? 'met' : 'NOT met'}\n\n`);
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
