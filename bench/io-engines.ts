/**
 * Micro-benchmark of the IoEngines: 4 KiB random reads from a page-cached 256 MiB file at
 * several queue depths, io_uring vs the libuv threadpool. Prints ops/s and the median and
 * 99th-percentile latency (dispatch to promise settlement, as the caller sees it).
 *
 *   node dist/bench/io-engines.js [--seconds 3] [--file /var/tmp/vbc-bench-256m.img] [--depths 1,32,64]
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';
import { FsEngine } from '../src/io/fs-engine';
import type { IoEngine } from '../src/io/io-engine';
import { UringEngine } from '../src/io/uring-engine';

const FILE_SIZE = 256 << 20;
const BLOCK = 4096;

/** Creates (once) a file of random bytes and reads it whole so it sits in the page cache. */
function prepareFile(file: string): void {
  let ok = false;
  try {
    ok = fs.statSync(file).size === FILE_SIZE;
  } catch {
    ok = false;
  }
  if (!ok) {
    const fd = fs.openSync(file, 'w');
    const chunk = Buffer.alloc(8 << 20);
    for (let off = 0; off < FILE_SIZE; off += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
      fs.writeSync(fd, chunk, 0, chunk.length, off);
    }
    fs.closeSync(fd);
  }
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(8 << 20);
  for (let off = 0; off < FILE_SIZE; off += buf.length) fs.readSync(fd, buf, 0, buf.length, off);
  fs.closeSync(fd);
}

interface Result {
  ops: number;
  seconds: number;
  latenciesUs: Float64Array;
}

/** `depth` independent request loops, each awaiting its read before issuing the next. */
async function run(engine: IoEngine, fd: number, depth: number, seconds: number): Promise<Result> {
  const blocks = FILE_SIZE / BLOCK;
  const maxSamples = 4_000_000;
  const lat = new Float64Array(maxSamples);
  let samples = 0;
  let ops = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let seed = 0x9e3779b9 ^ depth;
  const next = (): number => {
    // xorshift32
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % blocks;
  };
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(BLOCK);
    const bufs = [buf];
    for (;;) {
      const t0 = process.hrtime.bigint();
      if (t0 >= end) return;
      await engine.readv(fd, bufs, next() * BLOCK);
      const t1 = process.hrtime.bigint();
      if (samples < maxSamples) lat[samples++] = Number(t1 - t0) / 1000;
      ops++;
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  return { ops, seconds: elapsed, latenciesUs: lat.subarray(0, samples) };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function main(): Promise<void> {
  exitOnHelp('Usage: node dist/bench/io-engines.js [--seconds 3] [--file /var/tmp/vbc-bench-256m.img] [--depths 1,32,64]');
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '3' },
      file: { type: 'string', default: '/var/tmp/vbc-bench-256m.img' },
      depths: { type: 'string', default: '1,32,64' },
    },
  });
  const seconds = positiveNumber(values.seconds, '--seconds');
  const file = values.file;
  const depths = values.depths.split(',').map((d) => positiveNumber(d, '--depths'));
  prepareFile(file);
  const fd = fs.openSync(file, 'r');
  const engines: [string, () => IoEngine][] = [
    ['io_uring', () => new UringEngine({ entries: 256 })],
    ['threadpool', () => new FsEngine()],
  ];
  process.stdout.write(
    `4 KiB random reads, page-cached ${FILE_SIZE >> 20} MiB file ${file}, ${seconds} s per run, ` +
      `UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}\n`,
  );
  process.stdout.write('engine      depth       ops/s   median µs     p99 µs\n');
  for (const [name, make] of engines) {
    for (const depth of depths) {
      const engine = make();
      await run(engine, fd, depth, Math.min(0.5, seconds)); // warm-up
      const r = await run(engine, fd, depth, seconds);
      engine.close();
      const sorted = Float64Array.from(r.latenciesUs).sort();
      const line =
        `${name.padEnd(10)} ${String(depth).padStart(6)} ${Math.round(r.ops / r.seconds).toString().padStart(11)} ` +
        `${percentile(sorted, 0.5).toFixed(1).padStart(11)} ${percentile(sorted, 0.99).toFixed(1).padStart(10)}`;
      process.stdout.write(`${line}\n`);
      if (engine instanceof UringEngine) {
        const s = engine.stats;
        process.stdout.write(
          `           (io_uring_enter per op ${(s.submits / Math.max(1, s.inline + s.async)).toFixed(3)}, ` +
            `inline ${s.inline}, async ${s.async})\n`,
        );
      }
    }
  }
  fs.closeSync(fd);
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exitCode = 1;
});
