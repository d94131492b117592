/**
 * What durable invalidation (recovery.ts, rule 1) costs a write: median latency of a
 * writethrough write of one 4 KiB block that is cached (its segment header is rewritten, the
 * write completed, before the backing write; an fdatasync only where write-back data is
 * involved, none here: fdatasyncs per write are counted) and of one that is not (nothing to
 * wait for), one write at a time, on a cache file in a temporary directory (VBC_BENCH_DIR) through the default engine,
 * with an in-memory backing store (so the difference is the invalidation). Then 16 writes of
 * cached blocks at once: header rewrites, batches and fdatasyncs.
 * Run: node dist/bench/invalidation-cost.js [writes] (at most 4096)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BackingStore } from '../src/backing/backing-store';
import { Cache } from '../src/cache/cache';
import { CachedStore } from '../src/cache/cached-store';
import { deviceBytesFor } from '../src/cache/segment';
import { createIoEngine } from '../src/io';
import { gatherIov, iovLength, scatterIov } from '../src/util/iov';
import { benchPositionals, positiveNumber } from '../src/bench/cli';

const BS = 4096;
const BLOCKS = 8192;

class RamStore implements BackingStore {
  readonly kind = 'ram';
  readonly readOnly = false;
  readonly changesVisible = true;
  readonly features = { flush: true, discard: true, writeZeroes: true };
  readonly identity = 'ram';
  readonly location = 'ram:bench';
  readonly data = new Uint8Array(BLOCKS * BS);
  readonly size = BLOCKS * BS;
  async read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    scatterIov(this.data, offset, bufs);
  }
  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    gatherIov(bufs, this.data.subarray(offset, offset + iovLength(bufs)));
  }
  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }
  async flush(): Promise<void> {}
  async discard(): Promise<void> {}
  async writeZeroes(): Promise<void> {}
  async close(): Promise<void> {}
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
}

async function main(): Promise<void> {
  const [writes] = benchPositionals('Usage: node dist/bench/invalidation-cost.js [writes (default 2000, at most 4096)]', ['2000']);
  const n = positiveNumber(writes, 'writes');
  if (n > 4096) throw new Error('at most 4096 writes');
  const dir = fs.mkdtempSync(path.join(process.env.VBC_BENCH_DIR ?? os.tmpdir(), 'vbc-inval-'));
  const engine = createIoEngine('auto');
  const cache = await Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(64), engine });
  const store = new CachedStore({ backing: new RamStore(), cache, name: 'v', readAhead: 0 });
  const block = new Uint8Array(BS).fill(7);
  try {
    // Cache blocks 0..n-1 (reads insert them), written to the device.
    for (let b = 0; b < n; b += 64) await store.read(b * BS, [new Uint8Array(Math.min(64, n - b) * BS)]);
    await store.drain();
    await cache.log.flush();
    const cached: number[] = [];
    const uncached: number[] = [];
    let rewrites = 0;
    let syncs = 0;
    let uncachedRewrites = 0;
    for (let i = 0; i < n; i++) {
      let r0 = cache.stats().headerRewrites;
      const s0 = cache.stats().fdatasyncs;
      let t = process.hrtime.bigint();
      await store.write(i * BS, [block]);
      cached.push(Number(process.hrtime.bigint() - t) / 1000);
      rewrites += cache.stats().headerRewrites - r0;
      syncs += cache.stats().fdatasyncs - s0;
      // A block never cached (its writethrough write inserts it: each one is written once).
      r0 = cache.stats().headerRewrites;
      t = process.hrtime.bigint();
      await store.write((n + i) * BS, [block]);
      uncached.push(Number(process.hrtime.bigint() - t) / 1000);
      uncachedRewrites += cache.stats().headerRewrites - r0;
    }
    // 16 at once, each a cached block.
    await store.drain();
    for (let b = 0; b < 256; b += 64) await store.read(b * BS, [new Uint8Array(64 * BS)]);
    await store.drain();
    const st0 = cache.stats();
    for (let round = 0; round < 16; round++) await Promise.all(Array.from({ length: 16 }, (_, k) => store.write((round * 16 + k) * BS, [block])));
    const st1 = cache.stats();
    console.log(
      JSON.stringify({
        engine: engine.kind,
        writes: n,
        cachedMedianUs: Math.round(median(cached)),
        uncachedMedianUs: Math.round(median(uncached)),
        headerRewritesPerCachedWrite: +(rewrites / n).toFixed(2),
        fdatasyncsPerCachedWrite: +(syncs / n).toFixed(2),
        headerRewritesPerUncachedWrite: +(uncachedRewrites / n).toFixed(2),
        qd16: { writes: 256, headerRewrites: st1.headerRewrites - st0.headerRewrites, batches: st1.rewriteBatches - st0.rewriteBatches, fdatasyncs: st1.fdatasyncs - st0.fdatasyncs },
      }),
    );
  } finally {
    await store.close();
    await cache.close();
    engine.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
