/**
 * CRC-32C cost per cache hit: the time to check one 4 KiB block read from the cache device
 * against its stored CRC (native crc32cCheck, one call with one view, as Log.checkBlocks makes
 * for a one-block hit), the same with the block split over two guest buffers, per block of a
 * 32-block run (one call), and the raw CRC of a 4 KiB buffer.
 * Target: < 1 us of CPU per 4 KiB hit. Prints the median of 7 rounds per case (CPU and wall
 * clock ns, and the load average).
 * Run: node dist/bench/crc32c.js [iterations per round, default 200000]
 */
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import { native } from '../src/native/binding';
import { benchPositionals, positiveNumber } from '../src/bench/cli';

const BS = 4096;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/**
 * ns per block of `fn` (which checks `blocks` blocks), median of 7 rounds of `iters` calls:
 * CPU time of this process (user + system, what a hit costs the daemon; time spent
 * descheduled on a busy machine is not counted) and wall-clock time.
 */
function measure(iters: number, blocks: number, fn: () => void): { cpu: number; wall: number } {
  for (let i = 0; i < iters / 10; i++) fn();
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let r = 0; r < 7; r++) {
    const c = process.cpuUsage();
    const t = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) fn();
    wall.push(Number(process.hrtime.bigint() - t) / iters / blocks);
    const d = process.cpuUsage(c);
    cpu.push(((d.user + d.system) * 1000) / iters / blocks);
  }
  return { cpu: Math.round(median(cpu)), wall: Math.round(median(wall)) };
}

function main(): void {
  const [arg] = benchPositionals('Usage: node dist/bench/crc32c.js [iterations per round (default 200000)]', ['200000']);
  const iters = positiveNumber(arg, 'iterations');
  const run = new Uint8Array(randomBytes(32 * BS));
  const crcs = new Uint32Array(32);
  native.crc32cBlocks(run, BS, crcs, 0);
  const bad = new Uint8Array(32);
  const one = run.subarray(0, BS);
  const split = [run.subarray(0, 1000), run.subarray(1000, BS)];
  const check = (bufs: Uint8Array | readonly Uint8Array[], n: number) => () => {
    if (native.crc32cCheck(bufs, BS, crcs, 0, bad) !== 0) throw new Error(`CRC mismatch (${n} blocks)`);
  };
  const hit = measure(iters, 1, check(one, 1));
  const result = {
    hardware: native.crc32cHardware,
    folding: native.crc32cFolding,
    loadavg: os.loadavg().map((x) => +x.toFixed(1)),
    ns: {
      hit4k: hit,
      hit4kTwoViews: measure(iters, 1, check(split, 1)),
      runOf32PerBlock: measure(Math.ceil(iters / 32), 32, check(run, 32)),
      raw4k: measure(iters, 1, () => native.crc32c(one)),
    },
  };
  console.log(JSON.stringify(result));
  if (hit.cpu >= 1000) {
    console.error('CRC-32C check of a 4 KiB hit costs 1 us of CPU or more');
    process.exitCode = 1;
  }
}

main();
