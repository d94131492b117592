/**
 * Demand reads joining read-ahead (issue 12/16 finding): a sequential warm-up of a volume
 * through CachedStore — 64 KiB reads, 8 in flight, default read-ahead — against an in-memory
 * backing store that answers each read after 1 ms (so reads overlap the way they do over NBD).
 * Reports backing reads and bytes, cache insertions (each block once is ideal), blocks dropped
 * by back-pressure, read-ahead blocks and blocks of misses that joined a read in flight.
 * Counts, not times: the figures do not depend on the machine's load.
 *
 * Run: node dist/bench/read-join.js [--mib 256] [--depth 8] [--kib 64]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Cache } from '../src/cache/cache';
import { CachedStore } from '../src/cache/cached-store';
import { deviceBytesFor } from '../src/cache/segment';
import { FsEngine } from '../src/io/fs-engine';
import { MemStore } from '../test/cache/helpers';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';

async function main(): Promise<void> {
  exitOnHelp('Usage: node dist/bench/read-join.js [--mib 256] [--depth 8] [--kib 64]');
  const { values } = parseArgs({ options: { mib: { type: 'string', default: '256' }, depth: { type: 'string', default: '8' }, kib: { type: 'string', default: '64' } } });
  const size = positiveNumber(values.mib, '--mib') * 2 ** 20;
  const len = positiveNumber(values.kib, '--kib') * 1024;
  const depth = positiveNumber(values.depth, '--depth');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'read-join-'));
  try {
    const mem = new MemStore(size);
    mem.readHook = () => new Promise((r) => setTimeout(r, 1));
    const segment = 512 * 1024;
    const cache = await Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(2 * (size / segment), 4096, segment), segmentSize: segment, buffers: 8, engine: new FsEngine() });
    const store = new CachedStore({ backing: mem, cache, name: 'vol' });
    let next = 0;
    await Promise.all(
      Array.from({ length: depth }, async () => {
        const buf = new Uint8Array(len);
        while (next < size) {
          const at = next;
          next += len;
          await store.read(at, [buf]);
        }
      }),
    );
    await store.drain();
    await cache.log.quiesce();
    const st = cache.stats();
    console.log(
      JSON.stringify({
        blocks: size / 4096,
        backingReads: mem.reads,
        backingMiB: mem.bytesRead / 2 ** 20,
        insertions: st.insertions,
        insertsDropped: st.insertsDropped,
        prefetched: st.prefetched,
        readsJoined: st.readsJoined,
        cached: st.blocks,
      }),
    );
    await cache.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
