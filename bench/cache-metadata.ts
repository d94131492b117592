/**
 * Warm-restart metadata save and load time at 16 M cache blocks (default; argument = blocks,
 * rounded to whole 512 KiB segments of 4 KiB blocks). Writes into a temporary directory
 * (or VBC_BENCH_DIR). Run: node dist/bench/cache-metadata.js [blocks]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CacheMap } from '../src/cache/cache-map';
import { loadMetadata, saveMetadata } from '../src/cache/metadata';
import { computeGeometry, deviceBytesFor } from '../src/cache/segment';
import { benchPositionals, positiveNumber } from '../src/bench/cli';

async function main(): Promise<void> {
  const [blocks] = benchPositionals('Usage: node dist/bench/cache-metadata.js [blocks (default 16777216)]', [String(1 << 24)]);
  const want = positiveNumber(blocks, 'blocks');
  const bps = 128;
  const g = computeGeometry(deviceBytesFor(Math.ceil(want / bps)), 4096, 512 * 1024);
  const map = new CacheMap(g.slots);
  for (let b = 0; b < g.slots; b++) map.assign(map.findVictim(b % 4), b % 4, b * 3);
  const dir = fs.mkdtempSync(path.join(process.env.VBC_BENCH_DIR ?? os.tmpdir(), 'vbc-meta-bench-'));
  const file = path.join(dir, 'cache.meta');
  const state = {
    geometry: g,
    tableCapacity: map.map.capacity,
    hand: map.hand,
    wraps: map.wraps,
    sequence: 1,
    floor: 0,
    volumes: [0, 1, 2, 3].map((id) => ({ id, name: `v${id}`, identity: `id${id}`, sizeBytes: 2 ** 40, maxBytes: 0, epoch: 0 })),
    bda: map.bda,
    table: map.map.table,
  };
  try {
    let t = performance.now();
    const bind = { uuid: new Uint8Array(16).fill(7), generation: 1 };
    await saveMetadata({ file }, state, bind);
    const saveMs = performance.now() - t;
    const bytes = fs.statSync(file).size;
    t = performance.now();
    const r = await loadMetadata({ file }, bind, { geometry: g, tableCapacity: state.tableCapacity });
    const loadMs = performance.now() - t;
    if (!r.ok) throw new Error(`load failed: ${r.reason}`);
    t = performance.now();
    const loaded = new CacheMap(g.slots, {}, r.state.bda, r.state.table);
    const adoptMs = performance.now() - t;
    if (loaded.peek(1, 3) !== map.peek(1, 3) || loaded.map.size !== map.map.size) throw new Error('loaded map differs');
    console.log(
      JSON.stringify({
        blocks: g.slots,
        fileMiB: +(bytes / 2 ** 20).toFixed(1),
        saveMs: Math.round(saveMs),
        loadMs: Math.round(loadMs),
        adoptMs: Math.round(adoptMs),
      }),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
