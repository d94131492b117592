/**
 * Cache map throughput and RAM per cache block (the whole index: BDA, address map, ghost
 * history, per-segment and per-volume counters), at 1 M and 16 M blocks: measured as the array
 * buffers allocated, and by part from the typed arrays (CacheMap.ramParts).
 * Run: node --expose-gc dist/bench/cache-map.js [--load-factor F] [--segment-blocks N] [blocks...]
 *   --load-factor: the address map's (default DEFAULT_LOAD_FACTOR, address-map.ts).
 *   --segment-blocks: blocks per log segment (default 128, the daemon's: 512 KiB of 4 KiB).
 */
import { parseArgs } from 'node:util';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';
import { DEFAULT_LOAD_FACTOR } from '../src/cache/address-map';
import { CacheMap } from '../src/cache/cache-map';

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

function run(slots: number, loadFactor: number, segmentBlocks: number): void {
  gc();
  const m0 = process.memoryUsage();
  const map = new CacheMap(slots, { loadFactor, segmentBlocks });
  gc();
  const m1 = process.memoryUsage();
  const perBlock = (m1.arrayBuffers - m0.arrayBuffers) / slots;
  const heapPerBlock = (m1.heapUsed - m0.heapUsed) / slots;

  // Fill: every insert takes a free slot.
  let t = performance.now();
  for (let b = 0; b < slots; b++) map.assign(map.findVictim(0), 0, b);
  const fillMs = performance.now() - t;

  // Random lookups, half hits (blocks < slots) and half misses.
  let x = 12345;
  let hits = 0;
  const lookups = Math.min(slots, 4_000_000);
  t = performance.now();
  for (let i = 0; i < lookups; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    if (map.lookup(0, x % (2 * slots)) >= 0) hits++;
  }
  const lookupMs = performance.now() - t;

  // Inserts into the full cache: CLOCK scan + eviction + map remove/add.
  const inserts = Math.min(slots, 4_000_000);
  t = performance.now();
  for (let i = 0; i < inserts; i++) map.assign(map.findVictim(0), 0, slots + i);
  const evictMs = performance.now() - t;

  console.log(
    JSON.stringify({
      blocks: slots,
      loadFactor,
      segmentBlocks: map.segmentBlocks,
      ramBytesPerBlock: +perBlock.toFixed(2),
      heapBytesPerBlock: +heapPerBlock.toFixed(3),
      structureBytesPerBlock: +(map.byteLength / slots).toFixed(2),
      partsBytesPerBlock: Object.fromEntries(Object.entries(map.ramParts()).map(([k, v]) => [k, +(v / slots).toFixed(3)])),
      fillInsertsPerSec: Math.round(slots / (fillMs / 1000)),
      lookupsPerSec: Math.round(lookups / (lookupMs / 1000)),
      lookupHitRate: +(hits / lookups).toFixed(3),
      evictingInsertsPerSec: Math.round(inserts / (evictMs / 1000)),
      evictions: map.stats(0).evictions,
    }),
  );
}

exitOnHelp('Usage: node --expose-gc dist/bench/cache-map.js [--load-factor F] [--segment-blocks N] [blocks...]');
const { values, positionals } = parseArgs({
  options: {
    'load-factor': { type: 'string', default: String(DEFAULT_LOAD_FACTOR) },
    'segment-blocks': { type: 'string', default: '128' },
  },
  allowPositionals: true,
});
const loadFactor = positiveNumber(values['load-factor'], '--load-factor');
const segmentBlocks = positiveNumber(values['segment-blocks'], '--segment-blocks');
const sizes = positionals.map((b) => positiveNumber(b, 'blocks'));
for (const n of sizes.length > 0 ? sizes : [1 << 20, 1 << 24]) run(n, loadFactor, segmentBlocks);
