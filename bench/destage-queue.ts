/**
 * How many destage writes a guest read miss waits behind on a FIFO backing store (one operation
 * served at a time, one event-loop turn each: a count, not a time), for a write-back volume
 * destaging `--blocks` scattered dirty blocks (one backing write each) below its high
 * watermark, the miss arriving once the first destage write is queued. Prints the writes
 * queued ahead of the miss and the operations served before it completed.
 *
 * Run: node dist/bench/destage-queue.js [--blocks N]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { Cache } from '../src/cache/cache';
import { CachedStore } from '../src/cache/cached-store';
import { deviceBytesFor } from '../src/cache/segment';
import { MemStore } from '../test/cache/helpers';
import { MemDevice } from '../test/support/mem-device';
import { tmpDir } from '../test/support/tmp';

const BS = 4096;
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

async function main(): Promise<void> {
  const o = new Command().option('--blocks <n>', 'dirty blocks (at most 300)', '200').parse().opts<{ blocks: string }>();
  const n = Number(o.blocks);
  if (!(n >= 1 && n <= 300)) throw new Error(`--blocks: 1..300, got ${o.blocks}`);
  const dir = tmpDir('destage-queue');
  const DEVICE = deviceBytesFor(64, BS, 8 * BS);
  const cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, blockSize: BS, segmentSize: 8 * BS, buffers: 3, engine: new MemDevice(DEVICE) });
  const back = new MemStore(1024 * BS);
  // A dirty limit far above n: destaging is never pressed by the watermarks.
  const store = new CachedStore({ backing: back, cache, name: 'v', mode: 'writeback', readAhead: 0, dirtyLimitBlocks: 1024 });
  const queue: (() => void)[] = [];
  let serving = false;
  let served = 0;
  const serve = (): void => {
    if (serving || queue.length === 0) return;
    serving = true;
    setImmediate(() => {
      served++;
      (queue.shift() as () => void)();
      serving = false;
      serve();
    });
  };
  const enqueue = (): Promise<void> =>
    new Promise<void>((release) => {
      queue.push(release);
      serve();
    });
  back.writeHook = enqueue;
  back.readHook = enqueue;
  try {
    await Promise.all(Array.from({ length: n }, (_, i) => store.write(2 * i * BS, [new Uint8Array(BS).fill(1)])));
    while (queue.length === 0) await turn();
    const ahead = queue.length;
    const before = served;
    await store.read(BS, [new Uint8Array(BS)]);
    const servedBefore = served - before;
    while (store.destager.dirty > 0) await turn();
    process.stdout.write(`${JSON.stringify({ dirtyBlocks: n, writesQueuedAheadOfTheMiss: ahead, opsServedBeforeTheMissCompleted: servedBefore })}\n`);
  } finally {
    await store.destager.close();
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
