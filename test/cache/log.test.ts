import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { native } from '../../src/native/binding';
import { Cache } from '../../src/cache/cache';
import { INSERT_BLOCKS_PER_TURN, READ_LATENCY_SAMPLE } from '../../src/cache/log';
import { deviceBytesFor, entryOffset, HEADER_SECTOR, SEGMENT_MAGIC, segmentOffset } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { drawSlots, FaultyEngine } from './helpers';
import { tmpDir } from '../support/tmp';

const BS = 4096;

/** Block `b` of the test volume: every byte = b + 1 (mod 256), distinguishable per block. */
function blockData(b: number, n = 1): Uint8Array {
  const d = new Uint8Array(n * BS);
  for (let k = 0; k < n; k++) d.fill((b + k + 1) & 0xff, k * BS, (k + 1) * BS);
  return d;
}

describe('cache log', () => {
  let dir: string;
  let engine: FaultyEngine;
  let cache: Cache;

  beforeEach(async () => {
    dir = tmpDir('log');
    engine = new FaultyEngine(new FsEngine());
    // 4 segments of 4 blocks (16 KiB data + 4 KiB header), 3 RAM buffers: 16 slots.
    cache = await Cache.open({
      path: path.join(dir, 'cache'),
      size: deviceBytesFor(4, 4096, 16384),
      segmentSize: 16384,
      buffers: 3,
      engine,
    });
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function read(first: number, count: number): Promise<{ data: Uint8Array; hit: Uint8Array; hits: number }> {
    const data = new Uint8Array(count * BS);
    const hit = new Uint8Array(count);
    const hits = await cache.readBlocks(0, first, count, data, hit);
    return { data, hit, hits };
  }

  it('fills segments in order, serves RAM hits, coalesces device reads, carries used blocks forward when cleaning refills a segment', async () => {
    assert.equal(cache.geometry.slots, 16);
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(vol, 0);
    assert.equal(await cache.insert(vol, 0, blockData(0, 6), 6, () => true), 6);
    assert.equal(
      drawSlots(cache.map, 4),
      [' 0    1    2    3', ' 4    5   >..   ..', ' ..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'),
    );
    // Segment 0 was written when the hand left it; both segments are still in RAM.
    let r = await read(0, 6);
    assert.equal(r.hits, 6);
    assert.deepEqual(r.data, blockData(0, 6));
    assert.equal(cache.stats().ramHits, 6);

    assert.equal(await cache.insert(vol, 6, blockData(6, 10), 10, () => true), 10);
    assert.equal(await cache.log.flush(), true);
    // 4 segments through 3 buffers: segment 0's buffer was recycled, its blocks come from the
    // device, 4 adjacent slots in one read.
    const readsBefore = engine.reads;
    r = await read(0, 4);
    assert.equal(r.hits, 4);
    assert.deepEqual(r.data, blockData(0, 4));
    assert.equal(engine.reads - readsBefore, 1);
    assert.equal(cache.stats().storageHits, 4);
    assert.equal(cache.map.wraps, 1);

    // The reads counted uses of blocks 0-5. When the hand entered segment 3, cleaning chose
    // segment 2 to come next (coldest: nothing to carry, older than 3); the hand went there
    // when segment 3 was full. Use block 9, insert 3 blocks: 9 is carried forward, 8, 10 and
    // 11 are evicted.
    assert.equal(cache.map.hand, 8);
    for (const b of [1, 4, 5, 9]) cache.map.lookup(vol, b);

    const segReads = cache.stats().segmentReads;
    const writesBefore = engine.writes;
    const bytesBefore = cache.stats().deviceWriteBytes;
    assert.equal(await cache.insert(vol, 100, blockData(100, 3), 3, () => true), 3);
    assert.equal(
      drawSlots(cache.map, 4),
      [' 0**  1*** 2**  3**', ' 4**  5**  6    7', ' 100  9    101  102', '>12   13   14   15'].join('\n'),
    );
    // Segment 2's written buffer was still in RAM (Clean): refilled without a device read.
    assert.equal(cache.stats().segmentReads, segReads);
    assert.equal(cache.stats().blocksCarried, 1);
    assert.equal(await cache.log.flush(), true);
    // Only what changed is written: header + slot 8 (contiguous, one write), slots 10-11.
    assert.equal(engine.writes - writesBefore, 2);
    assert.equal(cache.stats().deviceWriteBytes - bytesBefore, 4096 + 3 * BS);

    // On the device, segment 2 = header (keys 100, 9, 101, 102) + data; block 9 survived.
    const raw = fs.readFileSync(cache.path);
    const seg2 = raw.subarray(segmentOffset(cache.geometry, 2), segmentOffset(cache.geometry, 3));
    const dv = new DataView(seg2.buffer, seg2.byteOffset, seg2.byteLength);
    assert.equal(dv.getUint32(0, true), SEGMENT_MAGIC);
    assert.deepEqual(
      [0, 1, 2, 3].map((k) => dv.getUint32(entryOffset(k), true)),
      [100, 9, 101, 102],
    );
    for (let k = 0; k < 4; k++) {
      const data = seg2.subarray(4096 + k * BS, 4096 + (k + 1) * BS);
      assert.equal(dv.getUint32(entryOffset(k) + 8, true), native.crc32c(data));
      assert.equal(dv.getUint32(entryOffset(k) + 12, true), 1);
    }
    assert.deepEqual(new Uint8Array(seg2.subarray(4096 + BS, 4096 + 2 * BS)), blockData(9));
    // One header sector (4 entries), its CRC-32C in its last 4 bytes.
    assert.equal(dv.getUint32(HEADER_SECTOR - 4, true), native.crc32c(seg2.subarray(0, HEADER_SECTOR - 4)));
  });

  it('insertions queued in one turn beyond INSERT_BLOCKS_PER_TURN blocks start in later turns, each once, in order', async () => {
    await cache.abort();
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, maxQueuedBlocks: 4 * INSERT_BLOCKS_PER_TURN });
    const v = cache.registerVolume('v', 'id', 1 << 30);
    // The first job takes all but 50 blocks of the turn's budget: the second (100 blocks) waits a turn.
    const n = INSERT_BLOCKS_PER_TURN - 50;
    const inserts = [cache.insert(v, 0, blockData(0, n), n, () => true), cache.insert(v, 1000, blockData(1000, 100), 100, () => true)];
    assert.deepEqual(await Promise.all(inserts), [n, 100]);
    await cache.log.quiesce();
    // 16 slots, all holding blocks of the second job (it ran last), each its own data.
    const cached = [...Array(1100).keys()].filter((b) => cache.map.peek(v, b) >= 0);
    assert.equal(cached.length, 16);
    for (const b of cached) {
      const out = new Uint8Array(BS);
      assert.ok(b >= 1000, `block ${b} of the first job`);
      assert.equal(await cache.readBlocks(v, b, 1, out, new Uint8Array(1)), 1);
      assert.deepEqual(out, blockData(b));
    }
  });

  it('drops insertions beyond maxQueuedBlocks queued (counted), and takes them again once the queue drained', async () => {
    await cache.abort();
    cache = await Cache.open({ path: path.join(dir, 'cache2'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, maxQueuedBlocks: 8 });
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    // Not awaited: the first two fill the queue exactly, the third does not fit.
    const a = cache.insert(vol, 0, blockData(0, 4), 4, () => true);
    const b = cache.insert(vol, 4, blockData(4, 4), 4, () => true);
    const c = cache.insert(vol, 8, blockData(8, 2), 2, () => true);
    assert.deepEqual(await Promise.all([a, b, c]), [4, 4, 0]);
    assert.equal(cache.stats().insertsDropped, 2);
    assert.equal(cache.map.peek(vol, 8), -1);
    // Drained: 8 fit again.
    assert.equal(await cache.insert(vol, 8, blockData(8, 8), 8, () => true), 8);
    assert.equal(cache.stats().insertsDropped, 2);
  });

  it('a holes-only refill reads nothing: hits of the untouched blocks come from the device, only the refilled run is written', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    await cache.insert(vol, 0, blockData(0, 16), 16, () => true);
    assert.equal(await cache.log.flush(), true);
    // 5 holes > one segment's worth (4): cleaning refills the holiest segment's holes first.
    for (const b of [4, 5, 9, 13, 1]) cache.invalidate(vol, b, 1);
    // Their header rewrites (marked kills: they gather for REWRITE_DELAY_MS) written first.
    await cache.log.quiesce();
    const reads0 = engine.reads;
    assert.equal(await cache.insert(vol, 100, blockData(100, 4), 4, () => true), 4);
    assert.equal(
      drawSlots(cache.map, 4),
      [' 100  101  102  103', '>..   ..   6    7', ' 8    ..   10   11', ' 12   ..   14   15'].join('\n'),
    );
    // Segment 0 may be read (it held 0, 2, 3; the threadpool engine decides when that read-ahead
    // runs); segment 1, chosen for its holes, is not read ahead.
    assert.ok(engine.reads - reads0 <= 1);
    assert.equal(await cache.insert(vol, 104, blockData(104), 1, () => true), 1);
    assert.equal(cache.map.refillingHoles, true);
    assert.equal(
      drawSlots(cache.map, 4),
      [' 100  101  102  103', ' 104 >..   6    7', ' 8    ..   10   11', ' 12   ..   14   15'].join('\n'),
    );
    // 6 and 7 are not in segment 1's buffer: read from the device (one read), not from RAM.
    const st0 = cache.stats();
    const reads1 = engine.reads;
    let r = await read(6, 2);
    assert.equal(r.hits, 2);
    assert.deepEqual(r.data, blockData(6, 2));
    assert.equal(engine.reads - reads1, 1);
    assert.equal(cache.stats().storageHits - st0.storageHits, 2);
    assert.equal(cache.stats().ramHits, st0.ramHits);
    // 104 is in the buffer.
    r = await read(104, 1);
    assert.deepEqual(r.data, blockData(104));
    assert.equal(cache.stats().ramHits, st0.ramHits + 1);
    // Written: header + slot 4 (one write); slots 5-7 of the device untouched.
    const writes0 = engine.writes;
    assert.equal(await cache.log.flush(), true);
    assert.equal(engine.writes - writes0, 1);
    const raw = fs.readFileSync(cache.path);
    const seg1 = segmentOffset(cache.geometry, 1) + 4096;
    assert.deepEqual(new Uint8Array(raw.subarray(seg1, seg1 + 4 * BS)), new Uint8Array([...blockData(104), ...blockData(5), ...blockData(6, 2)]));
  });

  it('stops an insertion at the first block its accept() refuses, also when asked again after a segment change', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 4), 4, () => false), 0);
    // The first block enters a new segment: accept() is asked before and after the change.
    let asked = 0;
    assert.equal(await cache.insert(vol, 0, blockData(0, 4), 4, () => ++asked < 2), 0);
    assert.equal(asked, 2);
    // Same segment now: asked once per block.
    let left = 3;
    assert.equal(await cache.insert(vol, 10, blockData(10, 6), 6, () => left-- > 0), 3);
    assert.equal(cache.map.peek(vol, 0), -1);
    assert.ok(cache.map.peek(vol, 12) >= 0 && cache.map.peek(vol, 13) === -1);
  });

  it("a block's CRC-32C is that of the copy the segment holds, even if the caller's data changed while the insertion ran", async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    // Blocks 0-1 in one segment, 2-5 across the next boundary (a segment change in between).
    const data = blockData(0, 6);
    let asked = 0;
    // accept() runs before each block is placed: it changes every block not placed yet.
    const inserted = await cache.insert(vol, 0, data, 6, () => {
      data.fill(0xa0 + asked++, asked * BS);
      return true;
    });
    assert.equal(inserted, 6);
    assert.equal(await cache.log.flush(), true);
    for (let b = 0; b < 6; b++) {
      const slot = cache.map.peek(vol, b);
      const held = cache.log.ramBlock(slot);
      assert.ok(held !== null);
      assert.equal(cache.map.bda.crc[slot], native.crc32c(held), `block ${b}`);
    }
    // Each block holds one value: what it held when it was copied (block 0 its own, the others 0xa0 + n).
    const r = await read(0, 6);
    assert.equal(r.hits, 6);
    for (let b = 0; b < 6; b++) {
      const got = r.data.subarray(b * BS, (b + 1) * BS);
      assert.ok(got.every((x) => x === got[0]) && (b === 0 ? got[0] === 1 : got[0] >= 0xa0), `block ${b}`);
    }
  });

  it('flush() waits for segment writes in flight and syncs the device; a failed sync fails it and disables insertion', async () => {
    const lines: { msg: string; [k: string]: unknown }[] = [];
    await cache.abort();
    const logger = pino({ level: 'error' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    cache = await Cache.open({ path: path.join(dir, 'cache4'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, logger });
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    // The volume table naming the volume is saved first (writes and syncs not counted below).
    await cache.quiesce();
    const release: (() => void)[] = [];
    const writev = engine.writev.bind(engine);
    engine.writev = (fd, bufs, offset) => new Promise<void>((r) => release.push(r)).then(() => writev(fd, bufs, offset));
    let syncs = 0;
    const fdatasync = engine.fdatasync.bind(engine);
    let failSync = false;
    engine.fdatasync = (fd) => {
      syncs++;
      return failSync ? Promise.reject(new Error('sync failed')) : fdatasync(fd);
    };
    assert.equal(await cache.insert(vol, 0, blockData(0, 5), 5, () => true), 5);
    // Segment 0 is being written (the hand left it), segment 1 is filling.
    let quiet = false;
    const quiesce = cache.log.quiesce().then(() => (quiet = true));
    while (release.length < 1) await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(quiet, false, 'quiesce() waits for the segment write in flight');
    let flushed = false;
    const flush = cache.log.flush().then((ok) => (flushed = ok));
    while (release.length < 2) await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(flushed, false, 'flush() waits for the segment writes in flight');
    assert.equal(syncs, 0);
    for (const r of release.splice(0)) r();
    await Promise.all([flush, quiesce]);
    assert.equal(flushed, true);
    assert.equal(syncs, 1);
    assert.equal(cache.stats().segmentWrites, 2);
    engine.writev = writev;
    failSync = true;
    assert.equal(await cache.log.flush(), false);
    assert.equal(cache.stats().disabled, true);
    assert.equal(cache.stats().writeErrors, 1);
    // The floor (nothing written before is recovered) and the superblock retirement are
    // retried for a round, then given up.
    await cache.quiesce();
    // Logged when the cache was disabled, and when neither could be made durable.
    assert.deepEqual(
      lines.map((l) => [l.msg, l.writeErrors]),
      [
        ['cache device fdatasync failed: sync failed; cache disabled for new data (pass-through)', 1],
        ['cache device refuses writes after a write error: writes of blocks it may hold fail (EIO) until it accepts one; remove or reformat it', undefined],
      ],
    );
  });

  it('counts segment reads and writes, and read-ahead failures (their blocks dropped, logged once each)', async () => {
    const lines: { msg: string; [k: string]: unknown }[] = [];
    await cache.abort();
    const logger = pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    cache = await Cache.open({ path: path.join(dir, 'cache3'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, logger });
    let vol = cache.registerVolume('v', 'id', 1 << 20);
    const opened = engine.reads;
    assert.equal(await cache.insert(vol, 0, blockData(0, 16), 16, () => true), 16);
    assert.equal(await cache.log.flush(), true);
    // Every device read since the open was a segment read ahead (the lap comes back to segment 0).
    assert.deepEqual([cache.stats().segmentWrites, cache.stats().segmentReads], [4, engine.reads - opened]);
    // Reopened warm, no segment is in RAM: going round the log reads segments ahead (3
    // buffers). Which insertion issues the first read depends on the policy's refill choices,
    // so insert until one does, at most one lap.
    await cache.close();
    cache = await Cache.open({ path: path.join(dir, 'cache3'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, logger });
    vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(cache.map.volumeBlocks[vol], 16, 'warm after a clean close');
    for (let b = 0; b < 16; b++) cache.map.lookup(vol, b);
    const before = cache.map.volumeBlocks[vol];
    const readsBefore = engine.reads;
    engine.failReads = true;
    let inserted = 0;
    for (let b = 100; engine.reads === readsBefore && b < 116; b++) {
      inserted += await cache.insert(vol, b, blockData(b), 1, () => true);
    }
    await cache.log.quiesce();
    engine.failReads = false;
    const failedReads = engine.reads - readsBefore;
    assert.ok(failedReads >= 1, 'a lap of insertions reads a segment ahead');
    await cache.log.quiesce();
    const st = cache.stats();
    assert.equal(st.readErrors, failedReads, 'every failed device read is counted');
    const failed = lines.filter((l) => /read-ahead failed/.test(l.msg));
    assert.equal(failed.length, st.readErrors, 'each failed read-ahead is logged once');
    let dropped = 0;
    for (const f of failed) {
      assert.ok((f.dropped as number) >= 1 && (f.dropped as number) <= 4, `a segment holds 1..4 valid blocks, dropped ${f.dropped}`);
      dropped += f.dropped as number;
    }
    assert.ok(cache.map.volumeBlocks[vol] <= before + inserted - dropped, 'the unread segments lost their blocks');
  });

  it('times one device read of cached blocks in READ_LATENCY_SAMPLE (a sampled mean latency)', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 4), 4, () => true), 4);
    assert.equal(await cache.log.flush(), true);
    const out = new Uint8Array(BS);
    for (let i = 0; i < 2 * READ_LATENCY_SAMPLE + 1; i++) assert.equal(await cache.log.readSlots(i % 4, 1, out), true);
    assert.equal(cache.log.readLatency.samples, 2);
    assert.ok(cache.stats().readLatencyUs > 0);
  });

  it('a cache device opened with O_DIRECT: a device read of cached blocks into a buffer at any address goes through an aligned bounce buffer', async () => {
    await cache.abort();
    cache = await Cache.open({ path: path.join(dir, 'cache-direct'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, direct: true });
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 4), 4, () => true), 4);
    assert.equal(await cache.log.flush(), true);
    // Blocks 1..2 (slots 1..2) into a buffer one byte past an aligned address.
    const out = new Uint8Array(2 * BS + 1).subarray(1);
    assert.equal(await cache.log.readSlots(1, 2, out), true);
    assert.deepEqual(out, blockData(1, 2));
  });

  it('starts the write-out of each segment the hand left once written; none for the writes a flush syncs at once, none with O_DIRECT', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    const at = (s: number) => segmentOffset(cache.geometry, s);
    // 10 blocks: segments 0 and 1 are written as the hand leaves them, 2 holds 2 blocks.
    assert.equal(await cache.insert(vol, 0, blockData(0, 10), 10, () => true), 10);
    assert.equal(await cache.log.flush(), true);
    // Each over its header and data, started after its write completed (the two writes are in
    // flight together and complete in either order); segment 2 (written by the flush, synced
    // right after) gets none.
    assert.deepEqual([...engine.writeouts].sort((a, b) => a[0] - b[0]), [
      [at(0), 4096 + 4 * BS],
      [at(1), 4096 + 4 * BS],
    ]);
    // The hand leaves segment 2 (2 more blocks): its write-out covers header .. its last run.
    assert.equal(await cache.insert(vol, 10, blockData(10, 3), 3, () => true), 3);
    assert.equal(await cache.log.flush(), true);
    assert.deepEqual(engine.writeouts.slice(2), [[at(2), 4096 + 4 * BS]]);
    const r = await read(0, 13);
    assert.equal(r.hits, 13);
    assert.deepEqual(r.data, blockData(0, 13));

    // O_DIRECT: no dirty pages, no write-out.
    await cache.abort();
    const direct = new FaultyEngine(new FsEngine());
    cache = await Cache.open({ path: path.join(dir, 'cache-direct'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine: direct, direct: true });
    const dv = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(dv, 0, blockData(0, 10), 10, () => true), 10);
    assert.equal(await cache.log.flush(), true);
    assert.ok(direct.writes >= 3);
    assert.deepEqual(direct.writeouts, []);
  });

  it('a failed write-out start is logged once and changes nothing else (fdatasync makes the log durable)', async () => {
    await cache.abort();
    const lines: { msg: string }[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    engine.failWriteouts = true;
    cache = await Cache.open({ path: path.join(dir, 'cache5'), size: deviceBytesFor(4, 4096, 16384), segmentSize: 16384, buffers: 3, engine, logger });
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 13), 13, () => true), 13);
    assert.equal(await cache.log.flush(), true);
    assert.equal(engine.writeouts.length, 3);
    assert.deepEqual(
      lines.map((l) => l.msg),
      ['cache device write-out start failed (ignored: fdatasync still makes the log durable; not logged again)'],
    );
    assert.equal(cache.log.disabled, false);
    assert.equal(cache.stats().writeErrors, 0);
    const r = await read(0, 13);
    assert.equal(r.hits, 13);
    assert.deepEqual(r.data, blockData(0, 13));
  });

  it('a segment buffer served a RAM hit lately is kept when another segment needs a buffer (the least recently used one is recycled)', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 16), 16, () => true), 16);
    assert.equal(await cache.log.flush(), true);
    await cache.log.quiesce();
    // Segments 1..3 are held (written last); RAM hits of block 8 (segment 2, written before 3).
    const ramHits = cache.stats().ramHits;
    for (let i = 0; i < 10; i++) assert.deepEqual((await read(8, 1)).data, blockData(8));
    assert.equal(cache.stats().ramHits - ramHits, 10);
    // The hand comes back to segment 0: a buffer is recycled to read it (and one for the segment
    // read ahead after it).
    assert.equal(await cache.insert(vol, 100, blockData(100), 1, () => true), 1);
    await cache.log.quiesce();
    const inRam = [0, 1, 2, 3].filter((seg) => cache.log.ramBuffer(seg * 4) !== null);
    assert.ok(inRam.includes(2), `segment 2 (its RAM hits the latest use) kept: ${inRam}`);
  });

  it('an insertion refused right after the hand entered a new segment writes nothing for that segment', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 4), 4, () => true), 4);
    assert.equal(await cache.log.flush(), true);
    const writes = cache.stats().segmentWrites;
    // The next block enters segment 1; accept() says no once the hand is there.
    let asked = 0;
    assert.equal(await cache.insert(vol, 10, blockData(10), 1, () => ++asked < 2), 0);
    assert.equal(asked, 2);
    assert.equal(await cache.log.flush(), true);
    assert.equal(cache.stats().segmentWrites, writes, 'no segment write: no block was put');
  });

  it('drops blocks on a device read error and disables insertion on a write error', async () => {
    const vol = cache.registerVolume('v', 'id', 1 << 20);
    await cache.insert(vol, 0, blockData(0, 16), 16, () => true);
    await cache.log.flush();
    // The hand is back at segment 0 (the log is full), so segment 0 is read ahead and may be
    // served from RAM: wait for that, then read two blocks of a segment no buffer holds.
    await cache.log.quiesce();
    const onDevice = [...Array(16).keys()].filter((b) => cache.log.ramBuffer(cache.map.peek(vol, b)) === null);
    assert.equal(onDevice.length, 4, 'one segment of the four is not in RAM');
    const first = onDevice[0];
    engine.failReads = true;
    const r = await read(first, 2);
    assert.equal(r.hits, 0);
    assert.equal(cache.map.peek(vol, first), -1);
    assert.equal(cache.map.peek(vol, first + 1), -1);
    assert.equal(cache.stats().readErrors, 1);
    engine.failReads = false;
    engine.failWrites = true;
    await cache.insert(vol, 50, blockData(50, 8), 8, () => true);
    assert.equal(await cache.log.flush(), false);
    assert.equal(cache.stats().disabled, true);
    assert.equal(cache.stats().writeErrors >= 1, true);
    // Blocks of the segment that failed to write are gone; nothing new is inserted.
    assert.equal(cache.map.peek(vol, 50), -1);
    assert.equal(await cache.insert(vol, 60, blockData(60), 1, () => true), 0);
  });
});
