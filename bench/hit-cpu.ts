/**
 * Issue 16: the CPU of a cache device hit against the pass-through read of the same bytes, in
 * one process, without vhost: a FileStore on a page-cached image (pass-through) and a
 * CachedStore over the same image with a warm page-cached cache file, reopened so that every
 * hit is a device hit (io_uring read of the cache file + CRC-32C check), each behind its own
 * BlkDispatcher (the daemon's JS path: batches handed to handleBatch). 4 KiB random reads,
 * `depth` per batch; repetitions alternate pass-through and hits; CPU time per read from
 * process.cpuUsage (user + system), which the load of a shared machine disturbs less than wall
 * time. Profile a side with --only hit|pass and `node --cpu-prof`.
 *
 * Run: node dist/bench/hit-cpu.js [--mib 64] [--reads 100000] [--reps 5] [--depth 16] [--only hit|pass]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { BackingStore } from '../src/backing/backing-store';
import { FileStore } from '../src/backing/file-store';
import { Cache } from '../src/cache/cache';
import { CachedStore } from '../src/cache/cached-store';
import { UringEngine } from '../src/io/uring-engine';
import { REQ_DATA_LEN, REQ_FIRST_SEG, REQ_SECTOR, REQ_SEG_COUNT, REQ_STRIDE, REQ_TAG, REQ_TYPE } from '../src/native/types';
import { silentLogger } from '../src/util/logger';
import { BlkDispatcher } from '../src/virtio-blk/dispatch';
import { SECTOR_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN } from '../src/virtio-blk/spec';
import { median } from '../src/bench/measure';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';

const BS = 4096;

async function main(): Promise<void> {
  exitOnHelp('Usage: node dist/bench/hit-cpu.js [--mib 64] [--reads 100000] [--reps 5] [--depth 16] [--only hit|pass]');
  const { values } = parseArgs({
    options: {
      mib: { type: 'string', default: '64' },
      reads: { type: 'string', default: '100000' },
      reps: { type: 'string', default: '5' },
      depth: { type: 'string', default: '16' },
      only: { type: 'string' },
    },
  });
  const size = positiveNumber(values.mib, '--mib') * 2 ** 20;
  const reads = positiveNumber(values.reads, '--reads');
  const reps = positiveNumber(values.reps, '--reps');
  const depth = positiveNumber(values.depth, '--depth');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hit-cpu-'));
  const engine = new UringEngine();
  try {
    const image = path.join(dir, 'disk.img');
    const data = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i += 4) data.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
    fs.writeFileSync(image, data);
    const cachePath = path.join(dir, 'cache.img');
    // Warm: sequential passes until every block is cached, waiting for the insertions every 64
    // reads (the log's insertion queue is bounded: reads faster than it drops them), then close
    // and reopen the cache so that no segment is in a RAM buffer (every hit reads the device).
    let cache = await Cache.open({ path: cachePath, size: 2 * size, engine });
    let cached = await CachedStore.open({ backing: await FileStore.open(image, { engine }), cache, name: 'vol0' });
    const chunk = new Uint8Array(65536);
    for (let pass = 0; pass < 10 && cache.stats().blocks < size / BS; pass++) {
      for (let i = 0; i * chunk.byteLength < size; i++) {
        await cached.read(i * chunk.byteLength, [chunk]);
        if (i % 64 === 63) await cache.log.quiesce();
      }
      await cache.log.quiesce();
    }
    await cached.close();
    await cache.close();
    cache = await Cache.open({ path: cachePath, engine });
    cached = await CachedStore.open({ backing: await FileStore.open(image, { engine }), cache, name: 'vol0' });
    const pass = await FileStore.open(image, { engine });
    // Both files in the page cache, for both sides alike.
    fs.readFileSync(image);
    fs.readFileSync(cachePath);

    const segs = Array.from({ length: depth }, () => new Uint8Array(BS));
    const table = new Float64Array(depth * REQ_STRIDE);
    let left = 0;
    let wake: () => void = () => undefined;
    const dispatcher = (store: BackingStore): BlkDispatcher =>
      new BlkDispatcher({ store, sizeBytes: size, logicalBlockSize: 512, readOnly: false, serial: 'hit-cpu', writeback: true }, (_q, _tag, status) => {
        if (status !== VIRTIO_BLK_S_OK) throw new Error(`read answered ${status}`);
        if (--left === 0) wake();
      }, silentLogger);
    let seed = 1;
    const nextBlock = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      return seed % (size / BS);
    };
    /** CPU µs per read of n random reads through d. */
    const run = async (d: BlkDispatcher, n: number): Promise<number> => {
      const c0 = process.cpuUsage();
      for (let done = 0; done < n; done += depth) {
        for (let i = 0; i < depth; i++) {
          const b = i * REQ_STRIDE;
          table[b + REQ_TAG] = i;
          table[b + REQ_TYPE] = VIRTIO_BLK_T_IN;
          table[b + REQ_SECTOR] = (nextBlock() * BS) / SECTOR_SIZE;
          table[b + REQ_DATA_LEN] = BS;
          table[b + REQ_FIRST_SEG] = i;
          table[b + REQ_SEG_COUNT] = 1;
        }
        left = depth;
        const settled = new Promise<void>((r) => (wake = r));
        d.handleBatch(0, depth, segs, table);
        await settled;
      }
      const c = process.cpuUsage(c0);
      return (c.user + c.system) / n;
    };
    const sides = [
      { name: 'pass-through (FileStore)', d: dispatcher(pass), us: [] as number[] },
      { name: 'device hit (CachedStore)', d: dispatcher(cached), us: [] as number[] },
    ].filter((s) => values.only === undefined || s.name.startsWith(values.only === 'hit' ? 'device' : 'pass'));
    for (const s of sides) await run(s.d, Math.min(reads, 20000)); // JIT warm-up
    const before = cache.stats();
    for (let r = 0; r < reps; r++) for (const s of sides) s.us.push(await run(s.d, reads));
    const after = cache.stats();
    console.log(`${reads} x ${reps} random 4 KiB reads of ${size >> 20} MiB, ${depth} per batch; CPU µs per read (user + system)`);
    for (const s of sides) console.log(`${s.name}: median ${median(s.us).toFixed(2)}  reps ${s.us.map((x) => x.toFixed(2)).join(' ')}`);
    if (sides.length === 2) console.log(`hit - pass-through: ${(median(sides[1]?.us ?? []) - median(sides[0]?.us ?? [])).toFixed(2)} µs`);
    console.log(`cache: ${after.storageHits - before.storageHits} device hits, ${after.ramHits - before.ramHits} RAM hits, ${after.reads - after.readHits - (before.reads - before.readHits)} misses`);
    console.log(`load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    await cached.close();
    await pass.close();
    await cache.close();
  } finally {
    engine.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
