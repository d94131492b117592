/**
 * Recovery from the segment headers (recovery.ts), case by case, on a simulated device
 * (mem-device.ts) whose bytes the tests edit between a crash and the next start: the newest
 * of two entries of a key wins, a torn header counts only its newest sectors, entries sealed
 * before a volume's epoch stay dropped, a volume whose backing identity changed while the
 * cache was down loses its blocks, and after a cache-device write error no block of before
 * comes back (a write waits until the device says so durably, or fails without being issued).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { deviceBytesFor, entryOffset, HEADER_SECTOR, segmentOffset } from '../../src/cache/segment';
import { VOLUME_TABLE_AREA, VOLUME_TABLE_COPY } from '../../src/cache/volume-table';
import { native } from '../../src/native/binding';
import { drawSlots, MemStore } from './helpers';
import { MemDevice } from '../support/mem-device';
import { tmpDir } from '../support/tmp';

const BS = 4096;

function blocks(first: number, n: number, tag = 0): Uint8Array {
  const d = new Uint8Array(n * BS);
  for (let k = 0; k < n; k++) d.fill((first + k + 1 + tag) & 0xff, k * BS, (k + 1) * BS);
  return d;
}

describe('cache recovery from the segment headers', () => {
  let dir: string;
  let dev: MemDevice;
  let cache: Cache;
  let segmentSize: number;
  const size = () => deviceBytesFor(4, BS, segmentSize);
  const open = async (): Promise<Cache> => {
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: size(), segmentSize, buffers: 2, engine: dev });
    return cache;
  };
  /** The process dies (its I/O done); the next start sees `image` (default: the device as is). */
  const crash = async (image?: Uint8Array): Promise<Cache> => {
    await cache.abort();
    dev = new MemDevice(size(), image ?? dev.image);
    return open();
  };

  beforeEach(() => {
    dir = tmpDir('recovery');
    segmentSize = 4 * BS;
    dev = new MemDevice(deviceBytesFor(4, BS, segmentSize));
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rebuilds the index of a crashed run: every block, the hand after the newest segment', async () => {
    await open();
    const v = cache.registerVolume('a', 'id-a', 1 << 20);
    assert.equal(await cache.insert(v, 0, blocks(0, 6), 6, () => true), 6);
    assert.equal(await cache.log.flush(), true);
    await crash();
    assert.equal(cache.warm, false);
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped, cache.recovery.rewritten], [6, 0, 0]);
    assert.equal(cache.registerVolume('a', 'id-a', 1 << 20), v);
    assert.equal(drawSlots(cache.map, 4), [' 0    1    2    3', ' 4    5    ..   ..', '>..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
    const out = new Uint8Array(6 * BS);
    assert.equal(await cache.readBlocks(v, 0, 6, out, new Uint8Array(6)), 6);
    assert.deepEqual(out, blocks(0, 6));
  });

  it('a segment header read failing during recovery fails the open (EIO); the next open recovers every block', async () => {
    await open();
    const v = cache.registerVolume('a', 'id-a', 1 << 20);
    assert.equal(await cache.insert(v, 0, blocks(0, 6), 6, () => true), 6);
    assert.equal(await cache.log.flush(), true);
    const header1 = segmentOffset(cache.geometry, 1);
    await cache.abort();
    dev = new MemDevice(size(), dev.image);
    let failures = 0;
    dev.readError = (offset) => offset === header1 && failures++ === 0;
    await assert.rejects(open(), (err: Error & { code?: string }) => err.code === 'EIO');
    assert.equal(failures, 1);
    await open();
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped], [6, 0]);
    const out = new Uint8Array(6 * BS);
    assert.equal(await cache.readBlocks(v, 0, 6, out, new Uint8Array(6)), 6);
    assert.deepEqual(out, blocks(0, 6));
  });

  it('a key named by two headers keeps the newer entry; the older header is rewritten before use', async () => {
    await open();
    const v = cache.registerVolume('a', 'id-a', 1 << 20);
    assert.equal(await cache.insert(v, 0, blocks(0, 4), 4, () => true), 4);
    assert.equal(await cache.log.flush(), true);
    const old = dev.image.slice(segmentOffset(cache.geometry, 0), segmentOffset(cache.geometry, 0) + cache.geometry.headerSize);
    // Block 2 again, newer data, in segment 1 (its slot in segment 0 is dropped and rewritten).
    assert.equal(await cache.insert(v, 2, blocks(2, 1, 50), 1, () => true), 1);
    assert.equal(await cache.log.flush(), true);
    // A device that lost segment 0's rewrite (the invariant forbids it; recovery still copes).
    const image = new Uint8Array(dev.image);
    image.set(old, segmentOffset(cache.geometry, 0));
    await crash(image);
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped, cache.recovery.rewritten], [4, 1, 1]);
    assert.equal(drawSlots(cache.map, 4), [' 0    1    ..   3', ' 2    ..   ..   ..', '>..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
    const out = new Uint8Array(BS);
    assert.equal(await cache.readBlocks(v, 2, 1, out, new Uint8Array(1)), 1);
    assert.deepEqual(out, blocks(2, 1, 50));
    // Rewritten at open: the next recovery finds one entry per key.
    await crash();
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped], [4, 0]);
  });

  it('a torn header: only the sectors of its newest write count, and it is rewritten', async () => {
    // 32 blocks per segment: a header of 2 sectors (28 entries, then 4).
    segmentSize = 32 * BS;
    dev = new MemDevice(size());
    await open();
    assert.equal(cache.geometry.headerSectors, 2);
    const v = cache.registerVolume('a', 'id-a', 1 << 20);
    assert.equal(await cache.insert(v, 0, blocks(0, 32), 32, () => true), 32);
    assert.equal(await cache.log.flush(), true);
    const at = segmentOffset(cache.geometry, 0);
    const before = dev.image.slice(at, at + 2 * HEADER_SECTOR);
    // Blocks 1 and 30 written: segment 0's header rewritten without them.
    await cache.invalidate(v, 1, 1);
    await cache.invalidate(v, 30, 1);
    // The writes did not wait for the rewrite (their segment marked: kill-marks.ts); it is done now.
    await cache.quiesce();
    // Torn: sector 0 of the rewrite, sector 1 of the first write (it still names block 30).
    const image = new Uint8Array(dev.image);
    image.set(before.subarray(HEADER_SECTOR), at + HEADER_SECTOR);
    await crash(image);
    // Sector 1's entries (blocks 28..31) are older than the header's newest sector: dropped.
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped, cache.recovery.rewritten], [27, 4, 1]);
    assert.equal(
      drawSlots(cache.map, 8),
      [' 0    ..   2    3    4    5    6    7', ' 8    9    10   11   12   13   14   15', ' 16   17   18   19   20   21   22   23', ' 24   25   26   27   ..   ..   ..   ..']
        .concat(Array.from({ length: 12 }, (_, i) => (i === 0 ? '>..   ..   ..   ..   ..   ..   ..   ..' : ' ..   ..   ..   ..   ..   ..   ..   ..')))
        .join('\n'),
    );
  });

  it('entries sealed before a volume epoch stay dropped (its blocks all dropped, then a crash)', async () => {
    await open();
    const a = cache.registerVolume('a', 'id-a', 1 << 20);
    const b = cache.registerVolume('b', 'id-b', 1 << 20);
    assert.equal(await cache.insert(a, 0, blocks(0, 3), 3, () => true), 3);
    assert.equal(await cache.insert(b, 0, blocks(0, 2), 2, () => true), 2);
    assert.equal(await cache.log.flush(), true);
    // E.g. a fenced or sample-mismatched volume: no header is rewritten, its epoch is raised.
    assert.equal(cache.dropVolume(a), 3);
    await cache.invalidate(a, 0, 1);
    await crash();
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped], [2, 3]);
    assert.equal(drawSlots(cache.map, 4), [' ..   ..   ..   1:0', ' 1:1  ..   ..   ..', '>..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
  });

  it('a volume whose backing identity changed while the cache was down loses its blocks; the same identity keeps them', async () => {
    await open();
    const a = cache.registerVolume('a', 'id-a', 1 << 20);
    const b = cache.registerVolume('b', 'id-b', 1 << 20);
    assert.equal(await cache.insert(a, 0, blocks(0, 2), 2, () => true), 2);
    assert.equal(await cache.insert(b, 5, blocks(5, 2), 2, () => true), 2);
    assert.equal(await cache.log.flush(), true);
    await crash();
    assert.equal(cache.recovery?.entries, 4);
    assert.equal(cache.registerVolume('a', 'id-a changed', 1 << 20), a);
    assert.equal(cache.registerVolume('b', 'id-b', 1 << 20), b);
    assert.equal(drawSlots(cache.map, 4), [' ..   ..   1:5  1:6', '>..   ..   ..   ..', ' ..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
    // The drop is durable (epoch) before a's next write: a second crash does not bring them back.
    await cache.invalidate(a, 9, 1);
    await crash();
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped], [2, 2]);
  });

  it('a device written before the 40-bit RAM key: entries of a volume id over 255 or a block over 2^32 - 1 and the record of that id are not recovered', async () => {
    await open();
    const a = cache.registerVolume('a', 'id-a', 1 << 20);
    const b = cache.registerVolume('b', 'id-b', 1 << 20);
    assert.equal(await cache.insert(a, 0, blocks(0, 3), 3, () => true), 3);
    assert.equal(await cache.insert(b, 0, blocks(0, 2), 2, () => true), 2);
    assert.equal(await cache.log.flush(), true);
    const g = cache.geometry;
    const image = new Uint8Array(dev.image);
    const view = new DataView(image.buffer);
    // What an older version could have written: b as volume id 300 (header entries and volume
    // table record), a's block 2 as block 2^32 + 2 (in a volume the record says is 32 TiB).
    const hdr = segmentOffset(g, 0);
    view.setUint32(hdr + entryOffset(2) + 4, 1, true);
    view.setUint32(hdr + entryOffset(3) + 4, 300 << 16, true);
    view.setUint32(hdr + HEADER_SECTOR - 4, native.crc32c(image.subarray(hdr, hdr + HEADER_SECTOR - 4)), true);
    const hdr1 = segmentOffset(g, 1);
    view.setUint32(hdr1 + entryOffset(0) + 4, 300 << 16, true);
    view.setUint32(hdr1 + HEADER_SECTOR - 4, native.crc32c(image.subarray(hdr1, hdr1 + HEADER_SECTOR - 4)), true);
    for (let c = 0; c < 2; c++) {
      const at = g.tableOffset + c * VOLUME_TABLE_COPY;
      const len = view.getUint32(at + 8, true);
      const doc = JSON.parse(Buffer.from(image.subarray(at + 64, at + 64 + len)).toString('utf8')) as { volumes: { name: string; id: number; sizeBytes: number }[] };
      for (const r of doc.volumes) {
        if (r.name === 'b') r.id = 300;
        if (r.name === 'a') r.sizeBytes = 2 ** 45;
      }
      const json = Buffer.from(JSON.stringify(doc), 'utf8');
      image.fill(0, at + 64, at + VOLUME_TABLE_COPY);
      image.set(json, at + 64);
      view.setUint32(at + 8, json.length, true);
      view.setUint32(at + 60, 0, true);
      view.setUint32(at + 60, native.crc32c(image.subarray(at, at + 64 + json.length)), true);
    }
    await crash(image);
    assert.deepEqual(cache.recovery && [cache.recovery.entries, cache.recovery.skipped], [2, 3]);
    assert.equal(drawSlots(cache.map, 4), [' 0    1    ..   ..', ' ..   ..   ..   ..', '>..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
    // a is too large for the cache now; b's record is forgotten: it gets the lowest free id, cold.
    assert.throws(() => cache.registerVolume('a', 'id-a', 2 ** 45), /volume a: 35184372088832 bytes exceed the 16 TiB a cache of 4096-byte blocks keys per volume/);
    assert.equal(cache.registerVolume('b', 'id-b', 1 << 20), 1);
    assert.equal(cache.map.volumeBlocks[1], 0);
  });

  it('keys at most 256 volume ids (ENOSPC beyond) and volumes of at most 2^32 blocks (EFBIG beyond)', async () => {
    await open();
    assert.equal(cache.registerVolume('16 TiB', 'id', 2 ** 32 * BS), 0);
    assert.throws(
      () => cache.registerVolume('16 TiB + 1 block', 'id', 2 ** 32 * BS + BS),
      (err: Error & { code?: string }) => err.code === 'EFBIG' && /^volume 16 TiB \+ 1 block: 17592186048512 bytes exceed the 16 TiB/.test(err.message),
    );
    for (let i = 1; i < 256; i++) assert.equal(cache.registerVolume(`v${i}`, `id-${i}`, 1 << 20), i);
    assert.throws(
      () => cache.registerVolume('one more', 'id', 1 << 20),
      (err: Error & { code?: string }) => err.code === 'ENOSPC' && /^one more: a cache keys at most 256 volumes/.test(err.message),
    );
    assert.throws(() => cache.registerShared('parent'), /parent: a cache keys at most 256 volumes/);
  });

  describe('after a cache-device write error (the cache disabled)', () => {
    let back: MemStore;
    let store: CachedStore;
    const openStore = async () => {
      store = await CachedStore.open({ backing: back, cache, name: 'a', mode: 'writearound' });
    };
    /** Volume a with blocks 0-1 cached, their header durable. */
    const cachedTwo = async () => {
      await open();
      back = new MemStore(1 << 20, 'id-a');
      back.data.set(blocks(0, 2));
      await openStore();
      await store.read(0, [new Uint8Array(2 * BS)]);
      await cache.quiesce();
      assert.equal(await cache.log.flush(), true);
      assert.ok(cache.map.lookup(store.volume, 0) >= 0, 'block 0 cached');
    };
    /** After a crash, block 0 as the guest reads it must be the backing store's. */
    const block0AfterCrash = async (image?: Uint8Array) => {
      await crash(image);
      await openStore();
      const out = new Uint8Array(BS);
      await store.read(0, [out]);
      assert.deepEqual(out, back.data.subarray(0, BS));
    };

    it('the volume table refusing writes: a write waits until the superblock is retired, so no block of before is recovered', async () => {
      await cachedTwo();
      const table = cache.geometry.tableOffset;
      dev.writeError = (offset) => offset >= table && offset < table + VOLUME_TABLE_AREA;
      cache.log.writeFailed('injected write error');
      // What a crash leaves at the moment the backing write is issued (durable bytes only).
      let atWrite: Uint8Array | null = null;
      back.writeHook = async () => void (atWrite ??= dev.crashImage(() => 0));
      await store.write(0, [blocks(0, 1, 7)]);
      assert.deepEqual(back.data.subarray(0, BS), blocks(0, 1, 7));
      dev.writeError = null;
      await block0AfterCrash(atWrite ?? undefined);
      assert.equal(cache.recovery, null, 'the retired device was formatted');
    });

    it('a device refusing every write: a write of a cached block fails (EIO) without being issued; once it accepts one, writes go on', async () => {
      await cachedTwo();
      dev.writeError = () => true;
      cache.log.writeFailed('injected write error');
      await assert.rejects(store.write(0, [blocks(0, 1, 7)]), { code: 'EIO' });
      assert.deepEqual(back.data.subarray(0, BS), blocks(0, 1), 'the backing write was not issued');
      dev.writeError = null;
      await store.write(0, [blocks(0, 1, 8)]);
      assert.deepEqual(back.data.subarray(0, BS), blocks(0, 1, 8));
      await block0AfterCrash();
    });
  });
});
