/**
 * Issue 13: write-back over a slow network backing store: nbdkit's memory plugin behind the
 * delay filter (rdelay=1ms wdelay=1ms), 4 KiB random writes at depth 16 over a working set far
 * below the dirty limit (half the cache), compared on the same writes:
 *   qsd           qemu-storage-daemon serving the NBD export over vhost-user-blk
 *   writethrough  our daemon, --cache-mode writethrough (every write waits for the backing store)
 *   writeback     our daemon, --cache-mode writeback (acknowledged once durable in the cache log)
 * Each repetition starts our daemon on a new cache file per mode. After each measured pass, a
 * FLUSH probe on the same target: FLUSH_ROUNDS rounds of depth - 1 random 4 KiB writes and one
 * FLUSH issued together; the FLUSH latencies (p50/p99 per rep, medians over reps) are reported.
 * CPU per write: the serving process's CPU time (user + system) over the measured pass / its
 * writes (our daemon's includes its destaging).
 * After the write-back pass the flush command destages everything (its time and the blocks
 * written back are reported).
 * Target (issue 13): write-back >= 10x qsd IOPS while the dirty limit is not reached.
 *
 * Run: node dist/bench/writeback-nbd.js [--runtime S] [--reps N] [--ws MiB]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { controlJson } from '../src/control/client';
import { Device } from '../src/bench/engine';
import { fmtInt, fmtNum, fmtRatio, markdownTable, measureMode, type Measurement, median, medianOf, processCpuUs } from '../src/bench/measure';
import { Rng } from '../src/bench/rng';
import { LatencyHistogram } from '../src/metrics/latency-histogram';
import { VIRTIO_BLK_S_OK } from '../src/virtio-blk/spec';
import { benchMain, openBench, parseBenchArgs } from '../src/bench/cli';
import { startSlowNbd, startVbc } from '../src/bench/targets';

/** Rounds of the FLUSH probe (each: depth - 1 writes and one FLUSH in flight together). */
const FLUSH_ROUNDS = 300;

/** FLUSH latency (µs) under random 4 KiB writes at `depth` (see the file comment): p50, p99. */
async function flushProbe(socketPath: string, ws: number, depth: number, seed: number): Promise<{ p50: number; p99: number }> {
  const d = await Device.open({ socketPath, queues: 1, depth, maxLen: 4096 });
  try {
    const ring = d.fe.ring(0);
    const rng = new Rng(seed);
    const data = new Uint8Array(4096).fill(seed & 0xff);
    const hist = new LatencyHistogram();
    for (let r = 0; r < FLUSH_ROUNDS; r++) {
      const ops: Promise<unknown>[] = [];
      for (let k = 1; k < depth; k++) ops.push(ring.write(rng.int(ws / 4096) * 8, data));
      const t = performance.now();
      ops.push(
        ring.flush().then((res) => {
          if (res.status !== VIRTIO_BLK_S_OK) throw new Error(`FLUSH failed: status ${res.status}`);
          hist.record((performance.now() - t) * 1e6);
        }),
      );
      await Promise.all(ops);
    }
    return { p50: hist.percentile(50) / 1000, p99: hist.percentile(99) / 1000 };
  } finally {
    await d.close();
  }
}

async function main(): Promise<void> {
  const args = parseBenchArgs({ runtime: 5, reps: 3, ws: 32, depth: 16 });
  const { num } = args;
  const { runtime, reps, depth } = num;
  const ws = num.ws * 2 ** 20;
  const cacheSize = 8 * ws;
  const run = openBench(args);
  const { dir, targets } = run;
  const control = path.join(dir, 'control.sock');
  const sock = { ours: path.join(dir, 'vbc.sock'), qsd: path.join(dir, 'qsd.sock') };
  try {
    const slow = await startSlowNbd({ dir, size: 2 * ws, delayMs: 1, qsdSocket: sock.qsd });
    targets.push(...slow.targets);
    const { uri } = slow;
    const randwrite = { mode: 'randwrite' as const, bs: 4096, depth, queues: 1, runtime, size: ws };
    const res: Record<'qsd' | 'writethrough' | 'writeback', Measurement[]> = { qsd: [], writethrough: [], writeback: [] };
    const destage: { ms: number; blocks: number }[] = [];
    const cpuPerWrite: Record<'qsd' | 'writethrough' | 'writeback', number[]> = { qsd: [], writethrough: [], writeback: [] };
    /** The measured pass on `socket`, with the CPU of process `pid` per write. */
    const measured = async (k: keyof typeof cpuPerWrite, socket: string, pid: number, seed: number): Promise<Measurement> => {
      const cpu0 = processCpuUs(pid);
      const m = await measureMode({ ...randwrite, sockets: [socket], seed });
      cpuPerWrite[k].push((processCpuUs(pid) - cpu0) / m.ops);
      return m;
    };
    const flushLat: Record<'qsd' | 'writethrough' | 'writeback', { p50: number; p99: number }[]> = { qsd: [], writethrough: [], writeback: [] };
    const commits: { commits: number; us: number; dirty: number; destaged: number }[] = [];
    for (let r = 0; r < reps; r++) {
      const seed = 7000 + r;
      res.qsd.push(await measured('qsd', sock.qsd, slow.qsd.pid, seed));
      flushLat.qsd.push(await flushProbe(sock.qsd, ws, depth, seed));
      for (const mode of ['writethrough', 'writeback'] as const) {
        const cacheFile = path.join(dir, `cache${r}-${mode}.img`);
        const ours = await startVbc({
          volumes: [{ name: 'vol0', socketPath: sock.ours, backing: uri, numQueues: 1, cacheMode: mode }],
          cache: { path: cacheFile, size: cacheSize },
          control,
        });
        if (run.commands.length < 2) run.commands.push(ours.command);
        try {
          // Warm-up (JIT, NBD connections) outside the measured range.
          await measureMode({ ...randwrite, sockets: [sock.ours], seed: seed + 50, count: 2000, offset: ws, size: ws });
          res[mode].push(await measured(mode, sock.ours, ours.pid, seed));
          if (mode === 'writeback') {
            const st = (await controlJson(control, 'GET', '/stats')) as { cache: { commits: number; commitLatencyUs: number; volumes: Record<string, { dirtyBlocks: number; destaged: number }> } };
            commits.push({ commits: st.cache.commits, us: st.cache.commitLatencyUs, dirty: st.cache.volumes.vol0.dirtyBlocks, destaged: st.cache.volumes.vol0.destaged });
            const t = performance.now();
            const f = (await controlJson(control, 'POST', '/volumes/vol0/flush')) as { destaged: number };
            destage.push({ ms: performance.now() - t, blocks: f.destaged });
          }
          flushLat[mode].push(await flushProbe(sock.ours, ws, depth, seed));
        } finally {
          await ours.stop();
          fs.rmSync(cacheFile, { force: true });
        }
      }
      process.stderr.write(`rep ${r}: qsd ${fmtInt(res.qsd[r].iops)} writethrough ${fmtInt(res.writethrough[r].iops)} writeback ${fmtInt(res.writeback[r].iops)}\n`);
    }
    const med = { qsd: medianOf(res.qsd), writethrough: medianOf(res.writethrough), writeback: medianOf(res.writeback) };
    process.stdout.write(
      `\n## Write-back over a slow NBD backing (nbdkit memory, delay filter rdelay=1ms wdelay=1ms): 4 KiB random writes, depth ${depth}, ` +
        `working set ${ws >> 20} MiB, cache ${cacheSize >> 20} MiB (dirty limit ${cacheSize >> 21} MiB), ${runtime} s x ${reps} reps (medians)\n\n`,
    );
    const row = (name: string, k: keyof typeof res): (string | number)[] => [
      name,
      fmtInt(med[k].iops),
      fmtRatio(med[k].iops, med.qsd.iops),
      fmtNum(med[k].lat.mean),
      fmtNum(med[k].lat.p50),
      fmtNum(med[k].lat.p99),
      fmtNum(median(flushLat[k].map((x) => x.p50))),
      fmtNum(median(flushLat[k].map((x) => x.p99))),
      fmtNum(median(cpuPerWrite[k])),
      res[k].map((x) => fmtInt(x.iops)).join(', '),
    ];
    process.stdout.write(
      markdownTable(
        ['target', 'IOPS', 'vs qsd', 'mean µs', 'p50 µs', 'p99 µs', 'FLUSH p50 µs', 'FLUSH p99 µs', 'CPU µs/write', 'IOPS per rep'],
        [row('qemu-storage-daemon (NBD)', 'qsd'), row('vhost-blk-cache writethrough', 'writethrough'), row('vhost-blk-cache writeback', 'writeback')],
      ) + '\n\n',
    );
    const ratio = med.writeback.iops / med.qsd.iops;
    process.stdout.write(`- writeback / qsd IOPS: ${ratio.toFixed(2)}x (target >= 10x): ${ratio >= 10 ? 'met' : 'NOT met'}\n`);
    process.stdout.write(`- writeback mean latency / writethrough: ${(med.writeback.lat.mean / med.writethrough.lat.mean).toFixed(3)}x\n`);
    process.stdout.write(
      `- write-back group commits per pass (warm-up included): ${commits.map((c) => `${fmtInt(c.commits)} commits, mean ${fmtNum(c.us)} µs`).join('; ')}; ` +
        `dirty at the end of the pass / destaged during it: ${commits.map((c) => `${c.dirty} / ${fmtInt(c.destaged)}`).join(', ')}\n`,
    );
    process.stdout.write(`- flush command after each write-back pass: ${destage.map((d) => `${d.blocks} blocks in ${Math.round(d.ms)} ms`).join(', ')}\n\n`);
    run.report();
  } finally {
    await run.close();
  }
}

benchMain(main);
