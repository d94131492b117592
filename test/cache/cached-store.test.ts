import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode, MISS_BUFFERS } from '../../src/cache/cached-store';
import { readMarks } from '../../src/cache/kill-marks';
import { BufferState, deviceBytesFor, segmentOffset, slotOffset } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { drawSlots, FaultyEngine, gate, MemStore } from './helpers';
import { HeldIo, settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';

const BS = 4096;
const VOL = 64 * BS;

describe('cached store', () => {
  let dir: string;
  let engine: FaultyEngine;
  let cache: Cache;
  let mem: MemStore;

  async function open(mode: CacheMode = 'writethrough', readAhead?: number, sequentialCutoff?: number): Promise<CachedStore> {
    cache = await Cache.open({
      path: path.join(dir, 'cache'),
      size: deviceBytesFor(8, 4096, 16384),
      segmentSize: 16384,
      buffers: 4,
      engine,
    });
    return new CachedStore({ backing: mem, cache, name: 'vol', mode, readAhead, sequentialCutoff });
  }

  function block(offset: number, gen: number, len = BS): Uint8Array {
    const b = new Uint8Array(len);
    stampBytes(b, offset, gen);
    return b;
  }

  async function readBack(store: CachedStore, offset: number, len: number): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    await store.read(offset, [out]);
    return out;
  }

  /** Lets background insertions finish. */
  async function settle(): Promise<void> {
    await cache.log.quiesce();
  }

  beforeEach(() => {
    dir = tmpDir('store');
    engine = new FaultyEngine(new FsEngine());
    mem = new MemStore(VOL);
    stampBytes(mem.data, 0, 1);
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('writethrough: writes are cached, read misses insert, hits skip the backing store', async () => {
    const s = await open();
    await s.write(0, [block(0, 2, 2 * BS)]);
    await settle();
    const before = mem.reads;
    assert.deepEqual(await readBack(s, 0, 2 * BS), block(0, 2, 2 * BS));
    assert.equal(mem.reads, before);
    assert.deepEqual(await readBack(s, 8 * BS, BS), mem.data.subarray(8 * BS, 9 * BS));
    await settle();
    assert.deepEqual(await readBack(s, 8 * BS, BS), mem.data.subarray(8 * BS, 9 * BS));
    assert.equal(mem.reads, before + 1);
    const st = cache.stats();
    assert.equal(st.readHits, 3);
    assert.equal(st.reads, 4);
    assert.equal(st.volumes.vol.insertions, 3);
  });

  it('writethrough: a write over a cached clean block issues its backing write once its segment is marked in the superblock, without waiting for the header rewrite or an fdatasync (drawn)', async () => {
    const s = await open();
    await s.write(0, [block(0, 2, 2 * BS)]);
    await settle();
    assert.equal(await cache.log.flush(), true);
    // Segment 0 (4 slots, the first row): blocks 0 and 1, written; the other segments empty.
    assert.equal(drawSlots(cache.map, 4).split('\n')[0], ' 0    1   >..   ..');
    const [syncs, rewrites] = [engine.fdatasyncs, cache.stats().headerRewrites];
    const superblock = (): Uint8Array => {
      const b = new Uint8Array(4096);
      fs.readSync(fs.openSync(path.join(dir, 'cache'), 'r'), b, 0, 4096, 0);
      return b;
    };
    let atBacking: unknown[] | null = null;
    mem.writeHook = () => {
      atBacking ??= [engine.fdatasyncs - syncs, cache.stats().headerRewrites - rewrites, readMarks(superblock())];
      return Promise.resolve();
    };
    await s.write(BS, [block(BS, 3)]);
    assert.deepEqual(atBacking, [0, 0, [0]], 'before the backing write: segment 0 marked, its header rewrite not done, no fdatasync');
    assert.equal(cache.stats().killsMarked, 1);
    await cache.quiesce();
    assert.equal(cache.stats().markedSegments, 0);
    assert.deepEqual([cache.stats().headerRewrites - rewrites, readMarks(superblock())], [1, []], 'then the rewrite, and the mark cleared');
    await settle();
    // Block 1 is cached again in the next slot (its reuse count restored: the ghost history); slot 1 is free.
    assert.equal(drawSlots(cache.map, 4).split('\n')[0], ' 0    ..   1***>..');
    assert.deepEqual(await readBack(s, 0, 2 * BS), new Uint8Array([...block(0, 2, BS), ...block(BS, 3)]));
  });

  it('a write-through write over a block destaged since (its clean mark not durable yet) syncs before its backing write', async () => {
    const s = await open('writeback');
    await s.write(BS, [block(BS, 2)]);
    assert.equal(drawSlots(cache.map, 4).split('\n')[0], ' 1d  >..   ..   ..');
    // Leaving write-back destages block 1: clean in RAM, its header rewrite not synced.
    await s.setMode('writethrough');
    assert.equal(drawSlots(cache.map, 4).split('\n')[0], ' 1*  >..   ..   ..');
    const syncs = engine.fdatasyncs;
    let atBacking: number | null = null;
    mem.writeHook = () => {
      atBacking ??= engine.fdatasyncs - syncs;
      return Promise.resolve();
    };
    await s.write(BS, [block(BS, 3)]);
    assert.equal(atBacking, 1, 'a durable header may still name block 1 dirty: killed durably first');
    await settle();
    assert.deepEqual(await readBack(s, BS, BS), block(BS, 3));
  });

  it('writearound and none: writes only invalidate; none never inserts', async () => {
    let s = await open('writearound');
    await s.read(0, [new Uint8Array(BS)]);
    await settle();
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    await s.write(0, [block(0, 5)]);
    assert.equal(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, BS), block(0, 5));
    await s.close();
    await cache.close();
    s = await open('none');
    await readBack(s, 4 * BS, BS);
    await settle();
    assert.equal(cache.map.peek(s.volume, 4), -1);
    // Warm from the writearound run: block 0 is cached, and a write in mode none drops it.
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    await s.write(100, [new Uint8Array(10).fill(9)]);
    assert.equal(cache.map.peek(s.volume, 0), -1);
  });

  it('partial and unaligned writes invalidate whole blocks and never merge stale data', async () => {
    const s = await open();
    await readBack(s, 0, 4 * BS);
    await settle();
    await s.write(BS + 100, [new Uint8Array(300).fill(0xaa), new Uint8Array(BS).fill(0xbb)]);
    const expect = new Uint8Array(mem.data.subarray(0, 4 * BS));
    assert.equal(cache.map.peek(s.volume, 1), -1);
    assert.equal(cache.map.peek(s.volume, 2), -1);
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, 4 * BS), expect);
    await settle();
    // Sub-block read of a cached block; and discard / write-zeroes.
    assert.deepEqual(await readBack(s, BS + 50, 1000), expect.subarray(BS + 50, BS + 1050));
    await s.discard(2 * BS, BS);
    await s.writeZeroes(3 * BS + 512, 512, false);
    expect.fill(0, 2 * BS, 3 * BS);
    expect.fill(0, 3 * BS + 512, 3 * BS + 1024);
    assert.deepEqual(await readBack(s, 0, 4 * BS), expect);
  });

  it('a write issued while a read miss of the same block is in flight wins', async () => {
    const s = await open();
    const held = gate();
    const reached = gate();
    mem.readHook = async () => {
      mem.readHook = null;
      reached.resolve();
      await held.promise;
    };
    const read = readBack(s, 0, BS);
    await reached.promise;
    // The backing read is in flight (its data is the old generation): write the block.
    await s.write(0, [block(0, 7)]);
    held.resolve();
    await read;
    await settle();
    assert.deepEqual(await readBack(s, 0, BS), block(0, 7));
    assert.deepEqual(mem.data.subarray(0, BS), block(0, 7));
  });

  it('a read miss overlapping a write still in flight inserts nothing stale', async () => {
    const s = await open('writearound');
    const held = gate();
    const reached = gate();
    mem.writeHook = async () => {
      mem.writeHook = null;
      reached.resolve();
      await held.promise;
    };
    const write = s.write(0, [block(0, 9)]);
    await reached.promise;
    // The read sees the old data in the backing store; it must not be cached.
    assert.deepEqual(await readBack(s, 0, BS), block(0, 1));
    await settle();
    held.resolve();
    await write;
    await settle();
    assert.deepEqual(await readBack(s, 0, BS), block(0, 9));
  });

  for (const mode of ['writearound', 'writethrough'] as const) {
    it(`${mode}: a read miss's insertion waits for a later loop turn; a write of its block meanwhile makes it place nothing`, async () => {
      const s = await open(mode);
      // The miss is answered before its insertion is placed; quiesce() waits for that insertion.
      assert.deepEqual(await readBack(s, 6 * BS, BS), block(6 * BS, 1));
      assert.ok(cache.map.peek(s.volume, 6) < 0, 'insertion deferred');
      await settle();
      assert.ok(cache.map.peek(s.volume, 6) >= 0, 'inserted by the time quiesce() resolves');
      const reads = mem.reads;
      assert.deepEqual(await readBack(s, 6 * BS, BS), block(6 * BS, 1));
      assert.equal(mem.reads, reads, 'a hit');
      // Another miss (its insertion would go into the same segment buffer, still filling) ...
      assert.deepEqual(await readBack(s, 5 * BS, BS), block(5 * BS, 1));
      assert.ok(cache.map.peek(s.volume, 5) < 0, 'insertion deferred');
      // ... and, before its insertion's turn, the guest overwrites the block.
      await s.write(5 * BS, [block(5 * BS, 7)]);
      await settle();
      const slot = cache.map.peek(s.volume, 5);
      if (mode === 'writearound') assert.ok(slot < 0, 'the stale insertion placed nothing');
      else assert.deepEqual(cache.log.ramBlock(slot), block(5 * BS, 7), "the write's own insertion");
      assert.deepEqual(await readBack(s, 5 * BS, BS), block(5 * BS, 7));
      assert.deepEqual(mem.data.subarray(5 * BS, 6 * BS), block(5 * BS, 7));
    });
  }

  it('a guest changing its buffer during a write cannot make cache and backing store differ', async () => {
    const s = await open();
    const held = gate();
    const reached = gate();
    mem.writeHook = async () => {
      mem.writeHook = null;
      reached.resolve();
      await held.promise;
    };
    const guest = block(0, 11);
    const write = s.write(0, [guest]);
    await reached.promise;
    guest.fill(0xee);
    held.resolve();
    await write;
    await settle();
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, BS), block(0, 11));
    assert.deepEqual(mem.data.subarray(0, BS), block(0, 11));
  });

  /** Device bytes of a slot's block. */
  function deviceBlock(slot: number): Uint8Array {
    const at = slotOffset(cache.geometry, slot);
    return new Uint8Array(fs.readFileSync(cache.path).subarray(at, at + BS));
  }

  it('full hits go straight into the guest buffers: RAM and device hits, unaligned, one readv per run', async () => {
    const first = await open();
    await readBack(first, 0, 32 * BS);
    await settle();
    await first.close();
    await cache.close();
    // Reopened warm: blocks 0..31 on the device only; blocks 9 and 18 written again, into RAM.
    const s = await open();
    await s.write(9 * BS, [block(9 * BS, 5)]);
    await s.write(18 * BS, [block(18 * BS, 5)]);
    await settle();
    const bps = cache.geometry.blocksPerSegment;
    // The request: blocks 9..18, its partial first and last blocks in RAM. Count the device
    // runs (consecutive slots of one segment whose buffer does not hold them) it should issue.
    let runs = 0;
    let ram = 0;
    let prev = -2;
    for (let b = 9; b <= 18; b++) {
      const slot = cache.map.peek(s.volume, b);
      assert.notEqual(slot, -1);
      if (cache.log.ramBuffer(slot) !== null) {
        ram++;
        prev = -2;
        continue;
      }
      if (!(slot === prev + 1 && slot % bps !== 0)) runs++;
      prev = slot;
    }
    assert.ok(runs > 1 && ram > 0, `want both kinds of hits (runs ${runs}, ram ${ram})`);
    const before = { mem: mem.reads, dev: engine.reads, st: cache.stats() };
    const start = 9 * BS + 700;
    const end = 19 * BS - 300;
    const out = new Uint8Array(end - start);
    const guest = [out.subarray(0, 1000), out.subarray(1000, 5096), out.subarray(5096, 5100), out.subarray(5100)];
    await s.read(start, guest);
    assert.deepEqual(out, mem.data.subarray(start, end));
    assert.equal(mem.reads, before.mem);
    assert.equal(engine.reads - before.dev, runs);
    const st = cache.stats();
    assert.equal(st.reads - before.st.reads, 10);
    assert.equal(st.ramHits - before.st.ramHits, ram);
    assert.equal(st.storageHits - before.st.storageHits, 10 - ram);
  });

  it('a block only on the device is read once, straight into the guest buffer, and counted once', async () => {
    const s = await open();
    await readBack(s, 0, 32 * BS);
    await settle();
    await cache.log.flush();
    let b = 0;
    while (cache.log.ramBuffer(cache.map.peek(s.volume, b)) !== null) b++;
    assert.ok(b < 32);
    const slot = cache.map.peek(s.volume, b);
    const before = { mem: mem.reads, dev: engine.reads, st: cache.stats(), uses: cache.map.count(slot) };
    assert.deepEqual(await readBack(s, b * BS, BS), mem.data.subarray(b * BS, (b + 1) * BS));
    assert.equal(mem.reads, before.mem);
    assert.equal(engine.reads - before.dev, 1);
    const st = cache.stats();
    assert.deepEqual(
      [st.reads - before.st.reads, st.readHits - before.st.readHits, st.storageHits - before.st.storageHits, st.ramHits - before.st.ramHits],
      [1, 1, 1, 0],
    );
    assert.equal(cache.map.count(slot), before.uses + 1);
  });

  it('device hits in flight together and hits started from a hit\'s callback each get their own blocks and counts (reused hit records)', async () => {
    // No read-ahead: the reads below form a stream, and only the hits are to be counted.
    const s = await open('writethrough', 0);
    await readBack(s, 0, 32 * BS);
    await settle();
    await cache.log.flush();
    const onDevice = (b: number): boolean => cache.log.ramBuffer(cache.map.peek(s.volume, b)) === null;
    // Reads of blocks only on the device: runs of 1 to 3 blocks on consecutive slots of one segment.
    const bps = cache.geometry.blocksPerSegment;
    const reads: { first: number; count: number }[] = [];
    for (let b = 0; b < 32; ) {
      let n = 0;
      const slot = cache.map.peek(s.volume, b);
      while (n < 3 && b + n < 32 && onDevice(b + n) && cache.map.peek(s.volume, b + n) === slot + n && (slot + n) % bps >= slot % bps) n++;
      if (n === 0) {
        b++;
        continue;
      }
      reads.push({ first: b, count: n });
      b += n;
    }
    // Read 2k + 1, started from the callback of read 2k, differs from it in length.
    assert.ok(reads.length >= 4 && reads.some((r, i) => i % 2 === 1 && r.count !== reads[i - 1]?.count), JSON.stringify(reads));
    const before = { mem: mem.reads, st: cache.stats() };
    const outs = reads.map((r) => new Uint8Array(r.count * BS));
    const errs: (Error | null)[] = [];
    const all = new Promise<void>((resolve) => {
      const start = (i: number): void => {
        const r = reads[i] as { first: number; count: number };
        s.readThen(r.first * BS, [outs[i] as Uint8Array], (err) => {
          errs.push(err);
          // Started from this callback: takes the record this hit has just given back.
          if (i % 2 === 0 && i + 1 < reads.length) start(i + 1);
          if (errs.length === reads.length) resolve();
        });
      };
      // The even ones in flight together.
      for (let i = 0; i < reads.length; i += 2) start(i);
    });
    await all;
    assert.deepEqual(errs, reads.map(() => null));
    for (const [i, r] of reads.entries()) assert.deepEqual(outs[i], mem.data.subarray(r.first * BS, (r.first + r.count) * BS), `read ${i}`);
    assert.equal(mem.reads, before.mem);
    const blocks = reads.reduce((n, r) => n + r.count, 0);
    const st = cache.stats();
    assert.deepEqual(
      [st.reads - before.st.reads, st.readHits - before.st.readHits, st.storageHits - before.st.storageHits],
      [blocks, blocks, blocks],
    );
    // No direct read is left counted against a segment: a rewrite of every segment goes out.
    for (let i = 0; i < cache.geometry.slots; i++) cache.map.bda.unreference(i);
    const other = cache.registerVolume('other', 'other-1', VOL);
    const data = new Uint8Array(bps * BS).fill(0x5a);
    for (let i = 0; i < 2 * cache.geometry.segments; i++) assert.equal(await cache.insert(other, i * bps, data, bps, () => true), bps);
    assert.equal(await cache.log.flush(), true);
  });
  it('a direct hit read racing with a rewrite of its segment holds the write back, then falls back', async () => {
    const s = await open();
    await readBack(s, 0, 32 * BS);
    await settle();
    await cache.log.flush();
    // A cached block whose segment is only on the device.
    let b = 0;
    while (cache.log.ramBuffer(cache.map.peek(s.volume, b)) !== null) b++;
    assert.ok(b < 32);
    const slot = cache.map.peek(s.volume, b);
    const bps = cache.geometry.blocksPerSegment;
    const seg = Math.floor(slot / bps);
    const held = gate();
    const reached = gate();
    engine.readHook = async () => {
      engine.readHook = null;
      reached.resolve();
      await held.promise;
    };
    const memReads = mem.reads;
    const storageHits = cache.stats().storageHits;
    // Device writes of block b's segment, as issued.
    const segWrites: number[] = [];
    const writev = engine.writev.bind(engine);
    engine.writev = (fd, bufs, offset) => {
      if (offset === segmentOffset(cache.geometry, seg)) segWrites.push(offset);
      return writev(fd, bufs, offset);
    };
    const read = readBack(s, b * BS, BS);
    await reached.promise;
    // The direct read is issued and held. Make the hand evict everything and rewrite the
    // block's segment with another volume's blocks until that segment's write is submitted.
    for (let i = 0; i < cache.geometry.slots; i++) cache.map.bda.unreference(i);
    const other = cache.registerVolume('other', 'other-1', VOL);
    const data = new Uint8Array(bps * BS).fill(0x5a);
    let buf = cache.log.ramBuffer(slot);
    for (let i = 0; i < 4 * cache.geometry.segments && !(buf !== null && buf.state === BufferState.Writing); i++) {
      assert.equal(await cache.insert(other, i * bps, data, bps, () => true), bps);
      buf = cache.log.ramBuffer(slot);
    }
    assert.ok(buf !== null && buf.state === BufferState.Writing, 'the segment was not rewritten');
    assert.equal(cache.map.peek(s.volume, b), -1);
    // The write of the segment waits for the direct read: not issued (a turn of the event loop
    // later either), the device still holds block b.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(segWrites, []);
    assert.equal(buf.state, BufferState.Writing);
    assert.deepEqual(deviceBlock(slot), mem.data.subarray(b * BS, (b + 1) * BS));
    held.resolve();
    // The segment changed during the read: the read is served again, from the backing store.
    assert.deepEqual(await read, mem.data.subarray(b * BS, (b + 1) * BS));
    assert.equal(mem.reads, memReads + 1);
    assert.equal(cache.stats().storageHits, storageHits);
    assert.equal(await cache.log.flush(), true);
    assert.equal(segWrites.length, 1, 'the held segment write went out once the read was done');
    assert.equal(Math.floor(slot / bps), seg);
    assert.deepEqual(deviceBlock(slot), data.subarray(0, BS));
  });

  it("a partial-hit read racing with a rewrite of its block's segment serves the block from the backing store", async () => {
    const s = await open();
    await readBack(s, 0, 32 * BS);
    await settle();
    await cache.log.flush();
    // A cached block on the device only, followed by one the cache does not hold: a read of both
    // takes Cache.readBlocks (a device read of the hit, then the miss from the backing store).
    let b = 0;
    while (cache.log.ramBuffer(cache.map.peek(s.volume, b)) !== null) b++;
    assert.ok(b < 31);
    await s.discard((b + 1) * BS, BS);
    assert.equal(cache.map.peek(s.volume, b + 1), -1);
    const slot = cache.map.peek(s.volume, b);
    const held = gate();
    const reached = gate();
    engine.readHook = async (offset) => {
      if (offset !== slotOffset(cache.geometry, slot)) return;
      engine.readHook = null;
      reached.resolve();
      await held.promise;
    };
    const read = readBack(s, b * BS, 2 * BS);
    await reached.promise;
    // While the device read is held, another volume's blocks take every slot and the block's
    // segment is written with them.
    for (let i = 0; i < cache.geometry.slots; i++) cache.map.bda.unreference(i);
    const other = cache.registerVolume('other', 'other-1', VOL);
    const bps = cache.geometry.blocksPerSegment;
    const data = new Uint8Array(bps * BS).fill(0x5a);
    for (let i = 0; i < 4 * cache.geometry.segments && cache.map.peek(s.volume, b) !== -1; i++) {
      assert.equal(await cache.insert(other, i * bps, data, bps, () => true), bps);
    }
    assert.equal(await cache.log.flush(), true);
    assert.deepEqual(deviceBlock(slot), data.subarray(0, BS), "the slot holds the other volume's block");
    held.resolve();
    assert.deepEqual(await read, mem.data.subarray(b * BS, (b + 2) * BS));
  });

  it('cache device errors fall back to the backing store; write errors turn the cache off', async () => {
    const s = await open();
    await readBack(s, 0, 40 * BS);
    await settle();
    await cache.log.flush();
    engine.failReads = true;
    assert.deepEqual(await readBack(s, 0, 40 * BS), mem.data.subarray(0, 40 * BS));
    assert.ok(cache.stats().readErrors > 0);
    engine.failReads = false;
    engine.failWrites = true;
    await readBack(s, 0, 64 * BS);
    await settle();
    await cache.log.flush();
    assert.equal(cache.stats().disabled, true);
    engine.failWrites = false;
    await s.write(0, [block(0, 3, 8 * BS)]);
    assert.deepEqual(await readBack(s, 0, 64 * BS), mem.data);
    assert.deepEqual(mem.data.subarray(0, 8 * BS), block(0, 3, 8 * BS));
  });

  it('read-ahead: a read continuing a stream prefetches the next blocks in one backing read; later reads hit them', async () => {
    const s = await open('writethrough', 8);
    await readBack(s, 0, 15 * BS);
    const before = mem.reads;
    // Block 15 continues the run at 0 to READ_AHEAD_MIN_RUN blocks: blocks 16..23 are read
    // ahead (one backing read).
    await readBack(s, 15 * BS, BS);
    await s.drain();
    assert.equal(mem.reads, before + 2);
    assert.equal(cache.stats().prefetched, 8);
    // All hits; the stream goes on, so blocks 24..31 are read ahead (one more backing read).
    assert.deepEqual(await readBack(s, 16 * BS, 8 * BS), mem.data.subarray(16 * BS, 24 * BS));
    await s.drain();
    assert.equal(mem.reads, before + 3);
    const st = cache.stats();
    assert.equal(st.prefetchHits, 8);
    assert.equal(st.volumes.vol.prefetched, 16);
  });

  it('sequential cut-off: reads and writes of a stream past it insert nothing and start no read-ahead; nothing stale is served', async () => {
    // Cut-off 4 blocks, read-ahead on (32 blocks, it would start at a run of 16).
    const s = await open('writethrough', undefined, 4 * BS);
    for (let b = 0; b < 20; b++) assert.deepEqual(await readBack(s, b * BS, BS), mem.data.subarray(b * BS, (b + 1) * BS));
    await settle();
    const cached = (from: number, to: number): number[] => {
      const r: number[] = [];
      for (let b = from; b < to; b++) if (cache.map.peek(s.volume, b) >= 0) r.push(b);
      return r;
    };
    assert.deepEqual(cached(0, 64), [0, 1, 2, 3]);
    let st = cache.stats().volumes.vol;
    assert.equal(st.prefetched, 0);
    assert.equal(st.admissionsRefused, 16);
    // Writes 40..47 one block at a time: the first 4 are inserted, the rest only invalidate.
    await s.read(44 * BS, [new Uint8Array(BS)]);
    await settle();
    assert.deepEqual(cached(40, 48), [44]);
    for (let b = 40; b < 48; b++) await s.write(b * BS, [block(b * BS, 2)]);
    await settle();
    assert.deepEqual(cached(40, 48), [40, 41, 42, 43]);
    st = cache.stats().volumes.vol;
    assert.equal(st.admissionsRefused, 20);
    assert.equal(st.invalidateHits, 1);
    for (let b = 40; b < 48; b++) assert.deepEqual(await readBack(s, b * BS, BS), block(b * BS, 2));
    // A random read (a new stream) is admitted again.
    await s.read(60 * BS, [new Uint8Array(BS)]);
    await settle();
    assert.deepEqual(cached(60, 61), [60]);
  });

  it('adaptive admission: read misses past the admission share are not inserted until read again; writes and read-ahead always are', async () => {
    const s = await open('writethrough', 4);
    const cached = (from: number, to: number): number[] => {
      const r: number[] = [];
      for (let b = from; b < to; b++) if (cache.map.peek(s.volume, b) >= 0) r.push(b);
      return r;
    };
    // Only first touches of regions whose refused blocks came back, or a share of them, are
    // admitted (cache-map.ts); here none: the share is 0 and no region scores.
    cache.map.admitShare = 0;
    for (const b of [3, 9]) assert.deepEqual(await readBack(s, b * BS, BS), mem.data.subarray(b * BS, (b + 1) * BS));
    await settle();
    assert.deepEqual(cached(0, 64), []);
    let st = cache.stats().volumes.vol;
    assert.deepEqual([st.firstTouchesRefused, st.refusedGhostHits, st.insertions], [2, 0, 0]);
    // Read again: a second touch, inserted; then a hit.
    assert.deepEqual(await readBack(s, 3 * BS, BS), mem.data.subarray(3 * BS, 4 * BS));
    await settle();
    assert.deepEqual(cached(0, 64), [3]);
    const reads = mem.reads;
    assert.deepEqual(await readBack(s, 3 * BS, BS), mem.data.subarray(3 * BS, 4 * BS));
    assert.equal(mem.reads, reads);
    // A write's blocks are inserted without asking admission.
    await s.write(20 * BS, [block(20 * BS, 2, 2 * BS)]);
    await settle();
    assert.deepEqual(cached(0, 64), [3, 20, 21]);
    // Read-ahead (window 4): block 47 continues the run at 32 to READ_AHEAD_MIN_RUN blocks, so
    // 48..51 are read ahead and inserted; the 16 read misses are refused.
    await readBack(s, 32 * BS, 15 * BS);
    await readBack(s, 47 * BS, BS);
    await s.drain();
    await settle();
    assert.deepEqual(cached(30, 64), [48, 49, 50, 51]);
    st = cache.stats().volumes.vol;
    assert.deepEqual([st.firstTouchesRefused, st.refusedGhostHits, st.prefetched], [18, 1, 4]);
  });

  /** Holds the first backing read at `offset` until the returned release() is called. */
  function holdRead(offset: number): { reached: Promise<void>; release: () => void } {
    const reached = gate();
    const held = gate();
    const prev = mem.readHook;
    mem.readHook = async (o, len) => {
      await prev?.(o, len);
      if (o !== offset) return;
      mem.readHook = prev;
      reached.resolve();
      await held.promise;
    };
    return { reached: reached.promise, release: held.resolve };
  }

  /** Records the backing reads as [first block, blocks]. */
  function recordReads(): number[][] {
    const seen: number[][] = [];
    const prev = mem.readHook;
    mem.readHook = async (o, len) => {
      seen.push([o / BS, len / BS]);
      await prev?.(o, len);
    };
    return seen;
  }

  it('a read miss of blocks a read-ahead is fetching waits for that read: read once, inserted once', async () => {
    const s = await open('writethrough', 8);
    await readBack(s, 0, 15 * BS);
    await settle();
    const ahead = holdRead(16 * BS);
    // Block 15 continues the stream: blocks 16..23 are read ahead (held in flight).
    await readBack(s, 15 * BS, BS);
    await ahead.reached;
    await settle();
    const reads = recordReads();
    const insertions = cache.stats().insertions;
    // A random read of blocks 18..21 (a new stream: no read-ahead of its own).
    const r = readBack(s, 18 * BS, 4 * BS);
    ahead.release();
    assert.deepEqual(await r, mem.data.subarray(18 * BS, 22 * BS));
    await s.drain();
    await settle();
    assert.deepEqual(reads, []);
    const st = cache.stats();
    assert.equal(st.insertions, insertions + 8);
    assert.equal(st.prefetched, 8);
    assert.equal(st.volumes.vol.readsJoined, 4);
    for (let b = 16; b < 24; b++) assert.ok(cache.map.peek(s.volume, b) >= 0, `block ${b} cached`);
  });

  it('a read-ahead skips blocks a read miss is fetching', async () => {
    const s = await open('writethrough', 16);
    await readBack(s, 0, 15 * BS);
    await settle();
    // A read of blocks 16..23 (a new stream) is held in flight.
    const miss = holdRead(16 * BS);
    const r = readBack(s, 16 * BS, 8 * BS);
    await miss.reached;
    const reads = recordReads();
    const insertions = cache.stats().insertions;
    // Block 15 continues the stream 0..14: the read-ahead window 16..31 reads 24..31 only.
    assert.deepEqual(await readBack(s, 15 * BS, BS), mem.data.subarray(15 * BS, 16 * BS));
    miss.release();
    assert.deepEqual(await r, mem.data.subarray(16 * BS, 24 * BS));
    await s.drain();
    await settle();
    assert.deepEqual(reads, [
      [24, 8],
      [15, 1],
    ]);
    const st = cache.stats();
    assert.equal(st.insertions, insertions + 1 + 8 + 8);
    assert.equal(st.prefetched, 8);
  });

  /** Resolves in a later check phase than every setImmediate scheduled so far. */
  const nextCheck = (): Promise<void> => new Promise((r) => setImmediate(r));

  it("a miss's pooled buffer comes back only after its joined read copied out of it and its insertion settled", async () => {
    const s = await open('writearound');
    const len = 7 * BS;
    const a = holdRead(10 * BS);
    const missA = readBack(s, 10 * BS, len);
    await a.reached;
    // B joins A's read of block 12 (and copies it out of A's buffer when it arrives).
    const missB = readBack(s, 12 * BS, BS);
    await waitFor(() => cache.stats().volumes.vol.readsJoined === 1, 'the read to join');
    const pooled = MISS_BUFFERS.pooledBytes;
    a.release();
    assert.deepEqual(await missA, mem.data.subarray(10 * BS, 17 * BS));
    assert.deepEqual(await missB, mem.data.subarray(12 * BS, 13 * BS));
    // A's insertion is placed in a check phase; its buffer may only go back in a later one.
    await nextCheck();
    assert.ok(MISS_BUFFERS.pooledBytes - pooled < len, "A's buffer is still held");
    await settle();
    await nextCheck();
    assert.ok(MISS_BUFFERS.pooledBytes - pooled >= len, "A's buffer is back");
    for (let b = 10; b < 17; b++) assert.deepEqual(cache.log.ramBlock(cache.map.peek(s.volume, b)), mem.data.subarray(b * BS, (b + 1) * BS));
    // Reused: the next miss of that length gets it back, and its own data.
    assert.deepEqual(await readBack(s, 30 * BS, len), mem.data.subarray(30 * BS, 37 * BS));
  });

  it("a miss whose first backing read fails keeps its pooled buffer until its other reads settled", async () => {
    const s = await open('writethrough');
    await s.write(22 * BS, [block(22 * BS, 2, 2 * BS)]);
    await settle();
    await nextCheck();
    const len = 9 * BS;
    // Blocks 20..28: 22 and 23 are hits, so two backing reads, 20..21 (fails) and 24..28 (held).
    const b = holdRead(24 * BS);
    const prev = mem.readHook;
    mem.readHook = async (o, n) => {
      await prev?.(o, n);
      if (o === 20 * BS) throw new Error('injected backing read failure');
    };
    const pooled = MISS_BUFFERS.pooledBytes;
    await assert.rejects(readBack(s, 20 * BS, len), /injected/);
    await b.reached;
    await nextCheck();
    await nextCheck();
    assert.ok(MISS_BUFFERS.pooledBytes - pooled < len, 'held while the read of 24..28 still writes into it');
    b.release();
    await waitFor(() => MISS_BUFFERS.pooledBytes - pooled >= len, 'the buffer back once that read settled');
    mem.readHook = null;
    assert.deepEqual(await readBack(s, 20 * BS, len), Uint8Array.from([...mem.data.subarray(20 * BS, 22 * BS), ...block(22 * BS, 2, 2 * BS), ...mem.data.subarray(24 * BS, 29 * BS)]));
  });

  it('a read joining a read-ahead never takes data older than a write that started before it', async () => {
    const s = await open('writearound', 8);
    await readBack(s, 0, 15 * BS);
    await settle();
    // The read-ahead of 16..23 reads the old data, then its insertion is held.
    const insertHeld = gate();
    const releaseInsert = gate();
    const insert = cache.insert.bind(cache);
    cache.insert = (volume, first, data, count, accept, prefetched) => {
      if (!prefetched) return insert(volume, first, data, count, accept, prefetched);
      insertHeld.resolve();
      return releaseInsert.promise.then(() => insert(volume, first, data, count, accept, prefetched));
    };
    await readBack(s, 15 * BS, BS);
    await insertHeld.promise;
    // Block 20 is written (completely) while the read-ahead still holds its old data.
    await s.write(20 * BS, [block(20 * BS, 3)]);
    assert.deepEqual(await readBack(s, 20 * BS, BS), block(20 * BS, 3));
    // A read joining the read-ahead for blocks it still holds (19, 21) gets them.
    assert.deepEqual(await readBack(s, 19 * BS, 3 * BS), mem.data.subarray(19 * BS, 22 * BS));
    releaseInsert.resolve();
    await s.drain();
    await settle();
    // The poisoned read-ahead inserted nothing; block 20 is cached with the written data.
    assert.equal(cache.stats().prefetched, 0);
    assert.ok(cache.map.peek(s.volume, 20) >= 0);
    assert.deepEqual(await readBack(s, 20 * BS, BS), block(20 * BS, 3));
  });

  it('a read joining a read-ahead that a write poisons reads the blocks itself', async () => {
    const s = await open('writearound', 8);
    await readBack(s, 0, 15 * BS);
    await settle();
    const ahead = holdRead(16 * BS);
    await readBack(s, 15 * BS, BS);
    await ahead.reached;
    // A read of 18..21 joins the read-ahead; then block 20 is written while both are in flight.
    const joined = readBack(s, 18 * BS, 4 * BS);
    await waitFor(() => cache.stats().volumes.vol.readsJoined === 4, 'the read to join the read-ahead');
    await s.write(20 * BS, [block(20 * BS, 4)]);
    const reads = recordReads();
    ahead.release();
    const got = await joined;
    await s.drain();
    await settle();
    // The read-ahead was poisoned: the joined read read its blocks itself (the written data or
    // the old, both are allowed for a read concurrent with the write), and nothing was inserted.
    assert.deepEqual(reads, [[18, 4]]);
    assert.deepEqual(got.subarray(0, 2 * BS), mem.data.subarray(18 * BS, 20 * BS));
    assert.equal(cache.stats().prefetched, 0);
    assert.deepEqual(await readBack(s, 20 * BS, BS), block(20 * BS, 4));
    for (let b = 16; b < 24; b++) assert.equal(cache.map.peek(s.volume, b), -1, `block ${b} not cached`);
  });

  it('a read missing a block before a hit and one a read-ahead is fetching registers only the block it reads: a later miss of the fetched block waits for the read-ahead', async () => {
    const s = await open('writearound', 8);
    await readBack(s, 0, 15 * BS);
    await settle();
    const ahead = holdRead(16 * BS);
    await readBack(s, 15 * BS, BS);
    await ahead.reached;
    // Block 15's insertion runs in a later loop turn (log.ts): wait for it.
    await waitFor(() => cache.map.peek(s.volume, 15) >= 0, 'block 15 to be inserted');
    // Block 14 misses (dropped), 15 hits, 16 is being read ahead (held).
    cache.map.drop(cache.map.peek(s.volume, 14));
    const first = readBack(s, 14 * BS, 3 * BS);
    await waitFor(() => cache.stats().volumes.vol.readsJoined === 1, 'the read to join the read-ahead for block 16');
    const second = readBack(s, 16 * BS, BS);
    await waitFor(() => cache.stats().volumes.vol.readsJoined === 2, 'the second read to join a read of block 16');
    // Let the backing read of block 14 complete before the read-ahead does.
    for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r));
    ahead.release();
    assert.deepEqual(await second, mem.data.subarray(16 * BS, 17 * BS));
    assert.deepEqual(await first, mem.data.subarray(14 * BS, 17 * BS));
  });

  it('read-ahead racing a write never inserts the old data', async () => {
    const s = await open('writearound', 8);
    await readBack(s, 0, 15 * BS);
    // Hold the read-ahead of blocks 16..23 before it copies anything.
    const prefetchHeld = gate();
    const releasePrefetch = gate();
    mem.readHook = async (offset) => {
      if (offset !== 16 * BS) return;
      mem.readHook = null;
      prefetchHeld.resolve();
      await releasePrefetch.promise;
    };
    await readBack(s, 15 * BS, BS);
    await prefetchHeld.promise;
    // A write of block 20 starts (invalidates) and is held before it reaches the backing store.
    const writeHeld = gate();
    const releaseWrite = gate();
    mem.writeHook = async () => {
      mem.writeHook = null;
      writeHeld.resolve();
      await releaseWrite.promise;
    };
    const w = s.write(20 * BS, [block(20 * BS, 3)]);
    await writeHeld.promise;
    // The read-ahead reads the old block 20 now; it must not insert it.
    releasePrefetch.resolve();
    releaseWrite.resolve();
    await w;
    await s.drain();
    await settle();
    assert.deepEqual(await readBack(s, 20 * BS, BS), block(20 * BS, 3));
    assert.equal(cache.stats().prefetched, 0);
  });

  it('a write right after a read-ahead window, while the read-ahead is in flight, does not stop its insertion', async () => {
    const s = await open('writearound', 8);
    await readBack(s, 0, 15 * BS);
    const prefetchHeld = gate();
    const releasePrefetch = gate();
    mem.readHook = async (offset) => {
      if (offset !== 16 * BS) return;
      mem.readHook = null;
      prefetchHeld.resolve();
      await releasePrefetch.promise;
    };
    await readBack(s, 15 * BS, BS);
    await prefetchHeld.promise;
    // The read-ahead of 16..23 is held; blocks 24 and 25 are written meanwhile.
    await s.write(24 * BS, [block(24 * BS, 3, 2 * BS)]);
    releasePrefetch.resolve();
    await s.drain();
    await settle();
    assert.equal(cache.stats().prefetched, 8);
    for (let b = 16; b < 24; b++) assert.notEqual(cache.map.peek(s.volume, b), -1, `block ${b} is cached`);
    assert.deepEqual(await readBack(s, 16 * BS, 8 * BS), mem.data.subarray(16 * BS, 24 * BS));
    assert.equal(cache.stats().volumes.vol.prefetchHits, 8);
  });
});

describe('cached store: a miss next to blocks already inserted by a read still in flight', () => {
  it('reads only its missing block: the hit blocks are not joined to the backing read in flight that fetched them', async () => {
    const dir = tmpDir('cs-joined');
    // 4 segments of 4 blocks, 2 RAM buffers; device writes held: an insertion stops when the
    // hand needs a third buffer.
    const size = deviceBytesFor(4, BS, 4 * BS);
    const dev = new MemDevice(size);
    const cache = await Cache.open({ path: path.join(dir, 'cache'), size, blockSize: BS, segmentSize: 4 * BS, buffers: 2, engine: dev });
    const back = new MemStore(64 * BS);
    stampBytes(back.data, 0, 1);
    const store = new CachedStore({ backing: back, cache, name: 'v', mode: 'writethrough', readAhead: 0 });
    const io = new HeldIo();
    dev.io = io;
    try {
      // A miss of blocks 1..9: 1..8 inserted (segments 0 and 1, their writes held), 9 waits for
      // a buffer; the read's blocks stay registered in flight until all are inserted.
      const first = new Uint8Array(9 * BS);
      const reading = store.read(BS, [first]);
      await waitFor(() => io.pending.length === 2, 'the writes of segments 0 and 1');
      await settle();
      assert.equal(drawSlots(cache.map, 4), [' 1    2    3    4', ' 5    6    7    8', '>..   ..   ..   ..', ' ..   ..   ..   ..'].join('\n'));
      // Blocks 0..1: 0 missing (read from the backing store), 1 a hit.
      const out = new Uint8Array(2 * BS);
      await store.read(0, [out]);
      assert.deepEqual(out, back.data.subarray(0, 2 * BS));
      const st = cache.stats();
      assert.deepEqual([st.readHits, st.readsJoined, back.reads], [1, 0, 2]);
      dev.io = null;
      await io.drain();
      await reading;
      assert.deepEqual(first, back.data.subarray(BS, 10 * BS));
    } finally {
      dev.io = null;
      await io.drain();
      await cache.abort();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
