/**
 * The log's buffers under reads and failures it races with: a block whose segment is being read
 * ahead (buffer Reading) is served from the device, never from the half-loaded buffer; going
 * round a warm log reads the next segment ahead and keeps its valid blocks; device reads of a
 * segment racing its rewrite report it (readSlots, readDirect: the rewrite waits for a direct
 * read), in any segment and slot; a direct hit drops exactly its blocks that do not check (a
 * write-back block is kept: the only copy of its data); a device read whose slot was given to
 * another block meanwhile (not written yet) is a miss, not a checksum error; read-ahead keeps a
 * write-back block that does not check (its reads fail), and after a failed read-ahead the
 * write-back blocks are read from the device, never from the buffer; a run of 256 blocks
 * (1 MiB segments) is checked whole; a failed segment
 * write drops exactly that segment's blocks and every other cached block keeps serving its data. Blocks carry their number in every byte (blockData), so a wrong block shows.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { Cache } from '../../src/cache/cache';
import { BufferState, deviceBytesFor, segmentOffset, slotOffset } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { FaultyEngine, gate } from './helpers';
import { HeldIo, settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';
import { VhostError } from '../../src/native/errors';
import type { Logger } from '../../src/util/logger';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';

const BS = 4096;
const SEGMENTS = 4;
const BPS = 4;

/** Log.readDirect (a callback on the hit path) as a promise: its ok flag, or its I/O error. */
function readDirect(cache: Cache, slot: number, bufs: Uint8Array[], vol: number, block: number): Promise<boolean> {
  return new Promise((resolve, reject) => cache.log.readDirect(slot, bufs, 1, vol, block, (ok, err) => (err === null ? resolve(ok) : reject(err))));
}

/**
 * Cache.readHit as a promise of its outcome: its return value when it served or refused the
 * read at once (`device` false), else what its callback reported (`device` true).
 */
function readHit(cache: Cache, vol: number, offset: number, len: number, bufs: Uint8Array[]): Promise<{ device: boolean; ok: boolean }> {
  return new Promise((resolve) => {
    const r = cache.readHit(vol, offset, len, bufs, (ok) => resolve({ device: true, ok }));
    if (r !== null) resolve({ device: false, ok: r });
  });
}

/** Block `b` of a volume: every byte = b + 1 (mod 256). */
function blockData(b: number, n = 1): Uint8Array {
  const d = new Uint8Array(n * BS);
  for (let k = 0; k < n; k++) d.fill((b + k + 1) & 0xff, k * BS, (k + 1) * BS);
  return d;
}

describe('cache log: reads racing read-ahead, failed segment writes', () => {
  let dir: string;
  let engine: FaultyEngine;
  let cache: Cache;

  function open(logger?: Logger): Promise<Cache> {
    return Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(SEGMENTS, BS, BPS * BS), segmentSize: BPS * BS, buffers: 3, engine, logger });
  }

  /** A cache whose 16 slots hold blocks 0..15 of volume 'v', written, reopened warm (no segment in RAM). */
  async function warmFull(logger?: Logger): Promise<number> {
    cache = await open(logger);
    let vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 16), 16, () => true), 16);
    await cache.close();
    cache = await open(logger);
    vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(cache.map.volumeBlocks[vol], 16);
    return vol;
  }

  /** Reads block b of vol through the cache: its data when it is a hit, null on a miss. */
  async function readCached(vol: number, b: number): Promise<Uint8Array | null> {
    const out = new Uint8Array(BS);
    const hit = new Uint8Array(1);
    return (await cache.readBlocks(vol, b, 1, out, hit)) === 1 ? out : null;
  }

  /** Flips a byte of slot `slot`'s data on the device (behind the cache's back). */
  function corrupt(slot: number): void {
    const fd = fs.openSync(path.join(dir, 'cache'), 'r+');
    const at = slotOffset(cache.geometry, slot) + 1234;
    const one = Buffer.alloc(1);
    fs.readSync(fd, one, 0, 1, at);
    one[0] ^= 0x5a;
    fs.writeSync(fd, one, 0, 1, at);
    fs.closeSync(fd);
  }

  beforeEach(() => {
    dir = tmpDir('log-races');
    engine = new FaultyEngine(new FsEngine());
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a block whose segment is being read ahead is read from the device, not from the buffer being loaded', async () => {
    const vol = await warmFull();
    for (let b = 0; b < 16; b++) cache.map.lookup(vol, b);
    const g = cache.geometry;
    // Hold the first whole-segment read (a read-ahead or the load of the segment to refill).
    const held = gate();
    const reached = gate();
    let segment = -1;
    engine.readHook = async (offset, len) => {
      if (len !== g.headerSize + BPS * BS) return;
      engine.readHook = null;
      segment = (offset - segmentOffset(g, 0)) / g.stride;
      reached.resolve();
      await held.promise;
    };
    const inserts: Promise<number>[] = [];
    for (let b = 100; segment < 0 && b < 100 + 16; b++) {
      inserts.push(cache.insert(vol, b, blockData(b), 1, () => true));
      await Promise.race([inserts[inserts.length - 1], reached.promise]);
    }
    assert.ok(segment >= 0, 'a lap of insertions loads a segment that holds blocks');
    // Every block the map still places in that segment reads its own data.
    let checked = 0;
    for (let slot = segment * BPS; slot < (segment + 1) * BPS; slot++) {
      if (!cache.map.bda.isValid(slot)) continue;
      const b = cache.map.bda.blockOf(slot);
      assert.deepEqual(await readCached(vol, b), blockData(b), `block ${b} (slot ${slot}) while its segment is being read`);
      checked++;
    }
    assert.ok(checked > 0, 'the segment read holds valid blocks');
    held.resolve();
    await Promise.all(inserts);
  });

  it('going round a warm log reads the next segment ahead: its valid blocks are kept and served from RAM, its holes ignored', async () => {
    const vol = await warmFull();
    // Two holes (fewer than a segment's worth: the map refills by reading, not holes only).
    for (const b of [1, 9]) cache.invalidate(vol, b, 1);
    for (let b = 0; b < 16; b++) cache.map.lookup(vol, b);
    assert.equal(await cache.insert(vol, 100, blockData(100), 1, () => true), 1);
    await cache.log.quiesce();
    // The segment the hand entered was read (it holds valid blocks), and the next one ahead.
    assert.equal(cache.stats().segmentReads, 2);
    const ramHits0 = cache.stats().ramHits;
    const reads0 = engine.reads;
    let inRam = 0;
    for (let b = 0; b < 16; b++) {
      const slot = cache.map.peek(vol, b);
      if (slot < 0 || cache.log.ramBuffer(slot) === null) continue;
      assert.deepEqual(await readCached(vol, b), blockData(b), `block ${b} from RAM`);
      inRam++;
    }
    // Segment 0 (the hand's, minus block 1 and the evicted one) and the segment read ahead.
    assert.ok(inRam >= 5, `${inRam} blocks in RAM`);
    assert.equal(engine.reads, reads0, 'RAM hits read nothing from the device');
    assert.equal(cache.stats().ramHits - ramHits0, inRam);
    for (let b = 0; b < 16; b++) {
      const d = await readCached(vol, b);
      if (d !== null) assert.deepEqual(d, blockData(b), `block ${b}`);
      else assert.ok(b === 1 || b === 9 || cache.map.peek(vol, b) < 0, `block ${b} was dropped`);
    }
    assert.equal(cache.stats().checksumErrors, 0);
  });

  it('read-ahead drops the clean blocks that do not check: counted, one warning naming the segment and how many', async () => {
    const lines: Record<string, unknown>[] = [];
    const vol = await warmFull(pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) }));
    for (const b of [1, 9]) cache.invalidate(vol, b, 1);
    for (let b = 0; b < 16; b++) cache.map.lookup(vol, b);
    // Slots = blocks: one that does not check in each of segments 1-3 (which one is read ahead
    // once the hand enters segment 0 is the policy's choice).
    for (const b of [6, 10, 14]) corrupt(b);
    assert.equal(await cache.insert(vol, 100, blockData(100), 1, () => true), 1);
    await cache.log.quiesce();
    assert.equal(cache.stats().segmentReads, 2);
    const ahead = [1, 2, 3].filter((seg) => cache.log.ramBuffer(seg * BPS) !== null);
    assert.equal(ahead.length, 1, 'one segment read ahead');
    assert.deepEqual(
      lines.filter((l) => /read-ahead/.test(l.msg as string)).map((l) => [l.msg, l.segment, l.dropped]),
      [['cache segment read-ahead: blocks failed their checks', ahead[0], 1]],
    );
    assert.equal(cache.stats().checksumErrors, 1);
    const bad = [6, 10, 14][ahead[0] - 1];
    assert.equal(cache.map.peek(vol, bad), -1, `block ${bad} dropped`);
    assert.deepEqual(await readCached(vol, bad + 1), blockData(bad + 1));
  });

  it('an aligned full hit of blocks on the device only is read straight into the guest buffers, one device read per run', async () => {
    const vol = await warmFull();
    const reads0 = engine.reads;
    const out = new Uint8Array(4 * BS);
    // Blocks 5..8: slots 5..7 (one run in segment 1) and slot 8 (segment 2): two runs.
    assert.deepEqual(await readHit(cache, vol, 5 * BS, 4 * BS, [out.subarray(0, 3 * BS), out.subarray(3 * BS)]), { device: true, ok: true });
    assert.deepEqual(out, blockData(5, 4));
    assert.equal(engine.reads - reads0, 2);
    const st = cache.stats();
    assert.deepEqual([st.readHits, st.storageHits, st.ramHits], [4, 4, 0]);
  });

  it('checksum mismatches: each counted, one error line per segment naming the block (further ones in that segment counted, not logged)', async () => {
    const lines: Record<string, unknown>[] = [];
    const vol = await warmFull(pino({ level: 'error' }, { write: (l: string) => void lines.push(JSON.parse(l)) }));
    // Slots = blocks: 1 and 2 in segment 0, 5 in segment 1.
    for (const b of [1, 2, 5]) corrupt(b);
    for (const b of [1, 2, 5]) assert.equal(await readCached(vol, b), null, `block ${b} is a miss`);
    assert.equal(cache.stats().checksumErrors, 3);
    const logged = lines.filter((l) => /failed its CRC-32C check/.test(l.msg as string));
    assert.deepEqual(
      logged.map((l) => [l.msg, l.segment, l.slot, l.volume, l.block]),
      [1, 5].map((b) => [
        'cache device block failed its CRC-32C check; dropped, served from the backing store (further mismatches in this segment are counted, not logged)',
        Math.floor(b / BPS),
        b,
        vol,
        b,
      ]),
    );
  });

  it('a direct hit whose run holds blocks that do not check: false, exactly those blocks counted and dropped, the rest still cached', async () => {
    const vol = await warmFull();
    // Slots = blocks. Block 3, the last of a run of 4 (slots 0..3), then block 6, the middle of
    // a run of 3 (slots 5..7): the second check's result must not see the first's.
    for (const [from, n, bad, errors] of [[0, 4, 3, 1], [5, 3, 6, 2]] as const) {
      corrupt(bad);
      const out = new Uint8Array(n * BS);
      assert.deepEqual(await readHit(cache, vol, from * BS, n * BS, [out]), { device: true, ok: false }, `blocks ${from}..${from + n - 1}`);
      assert.equal(cache.stats().checksumErrors, errors);
    }
    const cached = [];
    for (let b = 0; b < 16; b++) if (cache.map.peek(vol, b) >= 0) cached.push(b);
    assert.deepEqual(cached, [0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    for (const b of [2, 5, 7, 8]) assert.deepEqual(await readCached(vol, b), blockData(b));
  });

  it('a direct hit of a write-back block that does not check: false, counted, the block kept (the only copy of its data)', async () => {
    cache = await open();
    let vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insertDirty(vol, 0, blockData(0, 4), 4), 4);
    assert.equal(await cache.commit(), true);
    await cache.close();
    cache = await open();
    vol = cache.registerVolume('v', 'id', 1 << 20);
    corrupt(cache.map.peek(vol, 2));
    assert.deepEqual(await readHit(cache, vol, 0, 4 * BS, [new Uint8Array(4 * BS)]), { device: true, ok: false });
    assert.equal(cache.stats().checksumErrors, 1);
    assert.equal(cache.map.dirtyBlocks(vol), 4);
    assert.deepEqual(await readCached(vol, 3), blockData(3));
  });

  /** Segment 0 holding write-back blocks 0..1 and clean blocks 2..3, committed; the cache reopened (warm). */
  const reopenWithMixedSegment = async (): Promise<number> => {
    cache = await open();
    const first = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insertDirty(first, 0, blockData(0, 2), 2), 2);
    assert.equal(await cache.insert(first, 2, blockData(2, 2), 2, () => true), 2);
    assert.equal(await cache.commit(), true);
    await cache.close();
    cache = await open();
    return cache.registerVolume('v', 'id', 1 << 20);
  };

  it('read-ahead of a segment keeps a write-back block that does not check (counted; its reads fail, never the older backing store)', async () => {
    const vol = await reopenWithMixedSegment();
    corrupt(cache.map.peek(vol, 1));
    // A lap of insertions: the hand comes back to segment 0 (its clean slots), which is read first.
    const reads = cache.log.segmentReads;
    assert.equal(await cache.insert(vol, 100, blockData(100, 14), 14, () => true), 14);
    await cache.log.quiesce();
    assert.ok(cache.log.segmentReads > reads, 'segments read ahead');
    assert.equal(cache.stats().checksumErrors, 1);
    assert.equal(cache.map.dirtyBlocks(vol), 2, 'both write-back blocks kept');
    await assert.rejects(cache.readBlocks(vol, 1, 1, new Uint8Array(BS), new Uint8Array(1)), /unreadable/);
    assert.deepEqual(await readCached(vol, 0), blockData(0));
  });

  it('a failed read-ahead keeps the write-back blocks of its segment, read from the device afterwards (never from the buffer)', async () => {
    const vol = await reopenWithMixedSegment();
    const g = cache.geometry;
    engine.readHook = async (_offset, len) => {
      if (len === g.headerSize + BPS * BS) throw new VhostError('injected read-ahead error', 'EIO');
    };
    assert.equal(await cache.insert(vol, 100, blockData(100, 14), 14, () => true), 14);
    await cache.log.quiesce();
    engine.readHook = null;
    assert.ok(cache.log.readErrors > 0, 'read-ahead failed');
    assert.equal(cache.map.dirtyBlocks(vol), 2);
    for (const b of [0, 1]) assert.deepEqual(await readCached(vol, b), blockData(b), `block ${b}`);
  });

  for (const other of ['another volume', 'another block'] as const) {
    it(`a device read whose slot the hand gave to ${other} meanwhile (the segment not written yet) is a miss, never a checksum error: the new block stays`, async () => {
      const vol = await warmFull();
      const w = cache.registerVolume('w', 'id-w', 1 << 20);
      // Hold the device reads of runs of 4 blocks (not the whole-segment read of the insertion).
      const held = gate();
      let waiting = 0;
      engine.readHook = async (_offset, len) => {
        if (len !== 4 * BS) return;
        waiting++;
        await held.promise;
      };
      const out = new Uint8Array(16 * BS);
      const reading = cache.readBlocks(vol, 0, 16, out, new Uint8Array(16));
      await waitFor(() => waiting === 4, 'the four device reads');
      // The hand's slot (every counter is 0 after the warm start) receives the new block.
      const slot = cache.map.hand;
      const [nv, nb] = other === 'another volume' ? [w, slot] : [vol, 100];
      assert.equal(await cache.insert(nv, nb, blockData(nb + 50), 1, () => true), 1);
      assert.equal(cache.map.peek(nv, nb), slot);
      held.resolve();
      assert.equal(await reading, 15);
      assert.equal(cache.stats().checksumErrors, 0);
      assert.deepEqual(await readCached(nv, nb), blockData(nb + 50));
    });
  }

  it('1 MiB segments: a device read of a run of 256 blocks checks every block (the check scratch grows past 128 entries)', async () => {
    const o = { path: path.join(dir, 'cache'), size: deviceBytesFor(2, BS, 256 * BS), segmentSize: 256 * BS, buffers: 2, engine };
    cache = await Cache.open(o);
    let vol = cache.registerVolume('v', 'id', 1 << 20);
    assert.equal(await cache.insert(vol, 0, blockData(0, 256), 256, () => true), 256);
    await cache.close();
    cache = await Cache.open(o);
    vol = cache.registerVolume('v', 'id', 1 << 20);
    const out = new Uint8Array(256 * BS);
    assert.equal(await cache.readBlocks(vol, 0, 256, out, new Uint8Array(256)), 256);
    assert.deepEqual(out, blockData(0, 256));
  });

  for (const how of ['readSlots', 'readDirect'] as const) {
    it(`${how}: a device read of a block in a later segment racing with that segment's rewrite reports it (direct reads hold the write back until the last one is done)`, async () => {
      const vol = await warmFull();
      const g = cache.geometry;
      // Block 9: slot 9, segment 2 (neither the first segment nor its first slot).
      const slot = cache.map.peek(vol, 9);
      assert.equal(slot, 9);
      const seg = Math.floor(slot / BPS);
      // Device reads are held until released one by one (a direct read of slot 10 too).
      const holds: (() => void)[] = [];
      engine.readHook = () => new Promise<void>((r) => holds.push(r));
      const segWrites: number[] = [];
      const writev = engine.writev.bind(engine);
      engine.writev = (fd, bufs, offset) => {
        if (offset === segmentOffset(g, seg)) segWrites.push(offset);
        return writev(fd, bufs, offset);
      };
      const out = new Uint8Array(BS);
      const read = how === 'readSlots' ? cache.log.readSlots(slot, 1, out) : readDirect(cache, slot, [out], vol, 9);
      const other10 = how === 'readDirect' ? readDirect(cache, 10, [new Uint8Array(BS)], vol, 10) : Promise.resolve(false);
      while (holds.length < (how === 'readDirect' ? 2 : 1)) await new Promise((r) => setImmediate(r));
      engine.readHook = null;
      // Another volume's blocks take every slot until segment 2's rewrite is submitted.
      for (let i = 0; i < g.slots; i++) cache.map.bda.unreference(i);
      const other = cache.registerVolume('other', 'other-1', 1 << 20);
      const data = new Uint8Array(BPS * BS).fill(0x5a);
      // Submitted: its buffer is Writing (held back by direct reads), or already written (readSlots).
      const rewritten = (): boolean => cache.log.ramBuffer(slot)?.state === BufferState.Writing || segWrites.length > 0;
      for (let i = 0; i < 4 * SEGMENTS && !rewritten(); i++) {
        assert.equal(await cache.insert(other, i * BPS, data, BPS, () => true), BPS);
      }
      assert.ok(rewritten(), 'segment 2 is being rewritten');
      await new Promise((r) => setImmediate(r));
      if (how === 'readDirect') {
        assert.deepEqual(segWrites, [], 'the rewrite waits for the direct reads');
        // One of the two direct reads done: the write still waits for the other.
        holds[1]();
        assert.equal(await other10, false);
        await new Promise((r) => setImmediate(r));
        assert.deepEqual(segWrites, [], 'the rewrite waits for the last direct read');
      }
      holds[0]();
      assert.equal(await read, false, 'the read reports the rewrite');
      assert.equal(await cache.log.flush(), true);
      assert.equal(segWrites.length, 1);
      assert.equal(cache.stats().checksumErrors, 0);
    });
  }

  it('a failed segment write drops exactly that segment; every other cached block still reads its data', async () => {
    const vol = await warmFull();
    const g = cache.geometry;
    // The hand moves on by one segment (written fine), so the failing write is not the first one.
    assert.equal(await cache.insert(vol, 100, blockData(100, BPS), BPS, () => true), BPS);
    assert.equal(await cache.log.flush(), true);
    // Writes of segment data fail; which segments were written is recorded. (The superblock
    // and volume table still accept writes: the write error is made durable, see recovery.ts.)
    const failedSegments = new Set<number>();
    const writev = engine.writev.bind(engine);
    engine.writev = (fd, bufs, offset) => {
      if (offset < segmentOffset(g, 0)) return writev(fd, bufs, offset);
      failedSegments.add(Math.floor((offset - segmentOffset(g, 0)) / g.stride));
      return Promise.reject(new Error('injected segment write error'));
    };
    // The first failed segment write disables insertion: what it held is dropped.
    await cache.insert(vol, 104, blockData(104, BPS), BPS, () => true);
    assert.equal(await cache.log.flush(), false);
    engine.writev = writev;
    assert.equal(failedSegments.size, 1, `segments written: ${[...failedSegments].join(', ')}`);
    assert.ok(!failedSegments.has(0), 'the failed segment is not the first one');
    for (let slot = 0; slot < g.slots; slot++) {
      const seg = Math.floor(slot / BPS);
      if (failedSegments.has(seg)) assert.equal(cache.map.bda.isValid(slot), false, `slot ${slot} of failed segment ${seg} is dropped`);
    }
    let kept = 0;
    for (const b of [...Array(16).keys(), 100, 101, 102, 103]) {
      const d = await readCached(vol, b);
      if (d === null) continue;
      assert.deepEqual(d, blockData(b), `block ${b}`);
      kept++;
    }
    for (let b = 104; b < 104 + BPS; b++) assert.equal(await readCached(vol, b), null, `block ${b} was never written`);
    assert.equal(kept, (SEGMENTS - failedSegments.size) * BPS, 'the segments not rewritten keep all their blocks');
    assert.equal(cache.stats().checksumErrors, 0);
  });
});

describe('cache log: read-ahead of the segment the hand comes to next', () => {
  it('is not started while a buffer still holds that segment (its write in flight: the device copy is older)', async () => {
    const dir = tmpDir('logahead');
    const size = deviceBytesFor(3, BS, BPS * BS);
    const dev = new MemDevice(size);
    const cache = await Cache.open({ path: path.join(dir, 'cache'), size, segmentSize: BPS * BS, buffers: 3, engine: dev });
    const io = new HeldIo();
    try {
      const vol = cache.registerVolume('v', 'id', 1 << 20);
      // Segments 0-2 hold blocks 0..11, written; 8..11 hit once (segment 2 keeps all its
      // blocks: it scores 0 in the segment choice).
      assert.equal(await cache.insert(vol, 0, blockData(0, 3 * BPS), 3 * BPS, () => true), 3 * BPS);
      assert.equal(await cache.log.flush(), true);
      assert.equal(await cache.readBlocks(vol, 8, BPS, new Uint8Array(BPS * BS), new Uint8Array(BPS)), BPS);
      // The hand refills segment 0 (the oldest) with 100..103.
      assert.equal(await cache.insert(vol, 100, blockData(100, BPS), BPS, () => true), BPS);
      dev.io = io;
      // 104 takes the hand into segment 1: segment 0's write is issued (held), and segment 0
      // (cold, written last) is the one the hand comes to after segment 1: read ahead, if no
      // buffer held it.
      assert.equal(await cache.insert(vol, 104, blockData(104), 1, () => true), 1);
      await settle();
      assert.deepEqual(
        io.pending.map((h) => h.label),
        [`device write [${segmentOffset(cache.geometry, 0)}, ${segmentOffset(cache.geometry, 1)})`],
      );
      await io.drain();
      assert.equal(cache.stats().segmentReads, 0);
      const out = new Uint8Array(BPS * BS);
      assert.equal(await cache.readBlocks(vol, 100, BPS, out, new Uint8Array(BPS)), BPS);
      assert.deepEqual(out, blockData(100, BPS));
    } finally {
      dev.io = null;
      await io.drain();
      await cache.abort();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
