/**
 * Durable invalidation and the durable mark (log.ts: killFor, the header rewrite batches, sync,
 * the per-segment write chain, writeHeader, the fdatasync started when many evicted entries
 * await one), each checked by what a power cut leaves: a device that loses unflushed writes
 * (mem-device.ts), writes held and completed in the order the test chooses (held-io.ts), then
 * recovery from the segment headers. Two kinds of crash: a power cut (host crash: the next start
 * runs in another boot, unsynced writes may be lost) and a process crash (the same boot: every
 * completed write is kept). Each test states the guarantee it checks: a block whose
 * header entry was killed never comes back, an acknowledged write-back block always does, a
 * block whose data never reached the device is not recovered, nothing of before a write error
 * is recovered.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { Cache } from '../../src/cache/cache';
import { FLAG_RESERVED } from '../../src/cache/bda';
import { MAX_UNSYNCED_SEGMENTS, REWRITE_DELAY_MS } from '../../src/cache/log';
import { readMarks } from '../../src/cache/kill-marks';
import { deviceBytesFor, segmentOffset } from '../../src/cache/segment';
import type { VhostError } from '../../src/native/errors';
import { drawSlots, gate } from './helpers';
import { HeldIo, settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';

const BS = 4096;
/** Blocks per segment (8 segments). */
const BPS = 8;
const DEVICE = deviceBytesFor(8, BS, BPS * BS);

describe('cache log: durable invalidation and the durable mark, checked after power cuts', function () {
  this.timeout(60000);
  let dir: string;
  let dev: MemDevice;
  let cache: Cache;
  let v: number;
  /** Error lines logged. */
  let errors: string[];
  /** The host boot the cache runs in (a power cut starts another one). */
  let boot = 0;
  /** Kills of clean entries mark their segment instead of waiting (CacheOptions.killMarks). */
  let marks = true;
  const open = async (image?: Uint8Array, size = DEVICE, prepare?: (d: MemDevice) => void): Promise<void> => {
    dev = new MemDevice(size, image);
    prepare?.(dev);
    errors = [];
    const logger = pino({ level: 'error' }, { write: (l: string) => void errors.push(JSON.parse(l).msg) });
    cache = await Cache.open({ path: path.join(dir, 'cache'), size, blockSize: BS, segmentSize: BPS * BS, buffers: 3, engine: dev, logger, bootId: `boot-${boot}`, killMarks: marks });
    v = cache.registerVolume('v', 'mem-1', 256 * BS);
    await cache.quiesce();
  };
  /** The process stops; a start on the device holding `image` recovers. */
  const restartOn = async (image: Uint8Array): Promise<void> => {
    dev.freeze();
    fs.closeSync((cache as unknown as { fd: number }).fd);
    await open(image, image.byteLength);
  };
  /** A power cut now, `kept` choosing what survives of the unflushed writes; then a start (another boot) that recovers. */
  const crashAndRecover = (kept: () => number): Promise<void> => {
    boot++;
    return restartOn(dev.crashImage(kept));
  };
  /** The process dies now (every completed write kept); a start in the same boot recovers. */
  const processCrash = (): Promise<void> => restartOn(dev.image);
  /** Drops block b and kills its entries the way a destage does (rewrite + fdatasync). */
  const killDurably = (b: number): Promise<void> | null => {
    cache.map.invalidateRange(v, b, 1);
    return cache.killDropped(v, b, 1, true);
  };
  const block = (b: number, gen: number): Uint8Array => {
    const d = new Uint8Array(BS);
    stampBytes(d, b * BS, gen);
    return d;
  };
  const insertClean = async (first: number, n: number): Promise<void> => {
    const data = new Uint8Array(n * BS);
    for (let k = 0; k < n; k++) data.set(block(first + k, 1), k * BS);
    assert.equal(await cache.insert(v, first, data, n, () => true), n);
  };
  /** Block b as the cache serves it now, or null on a miss. */
  const cached = async (b: number): Promise<Uint8Array | null> => {
    const out = new Uint8Array(BS);
    return (await cache.readBlocks(v, b, 1, out, new Uint8Array(1))) === 1 ? out : null;
  };

  beforeEach(async () => {
    dir = tmpDir('logdurable');
    marks = true;
    await open();
  });
  afterEach(async () => {
    if (!dev.frozen) await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Clean blocks 40..42 in segment 0, written and synced; then block 41 killed (a write-through
   * write's invalidation) and its header rewrite done: with marks the write waits for nothing
   * (segment 0 marked on the device first, the mark cleared after the rewrite), without it
   * waits for the rewrite.
   */
  const killClean = async (): Promise<void> => {
    await insertClean(40, 3);
    assert.equal(await cache.log.flush(), true);
    const before = cache.stats();
    const [writes, syncs] = [dev.writes, dev.fdatasyncs];
    const killed = cache.invalidate(v, 41, 1);
    if (marks) {
      assert.equal(killed, null, 'block 41 is named by the header of segment 0, which is marked: the write need not wait');
      assert.deepEqual(readMarks(dev.image), [0], 'the mark is on the device before the write goes on');
      await cache.quiesce();
      assert.deepEqual(readMarks(dev.image), [], 'cleared once the rewrite is written');
    } else {
      assert.ok(killed !== null, 'block 41 is named by the header of segment 0');
      await killed;
    }
    const after = cache.stats();
    assert.deepEqual(
      [after.headerRewrites - before.headerRewrites, after.rewriteBatches - before.rewriteBatches, after.deviceWriteBytes - before.deviceWriteBytes],
      [1, 1, cache.geometry.headerSize],
    );
    assert.deepEqual([dev.writes - writes, dev.fdatasyncs - syncs], [marks ? 3 : 1, 0], 'the header rewrite (and the mark, then its clear), no fdatasync before the write');
    assert.equal(cache.invalidate(v, 41, 1), null, 'a second write of block 41 waits for nothing (its header is written)');
  };

  it('a kill of a clean block marks its segment and does not wait: a process crash before the header rewrite lands drops the segment\'s clean blocks, the killed one never comes back', async () => {
    await insertClean(40, 3);
    assert.equal(await cache.insertDirty(v, 43, block(43, 1), 1), 1);
    assert.equal(await cache.commit(), true);
    const io = new HeldIo();
    dev.io = io;
    assert.equal(cache.invalidate(v, 41, 1), null, 'the write is issued at once');
    assert.deepEqual(readMarks(dev.image), [0]);
    await waitFor(() => io.pending.length === 1, 'the header rewrite of segment 0');
    // The process dies with the rewrite in flight (never landed): segment 0's header names 41.
    const image = new Uint8Array(dev.image);
    dev.io = null;
    await restartOn(image);
    assert.deepEqual([cache.recovery?.hostCrash, cache.recovery?.cleanDropped], [false, 3], 'blocks 40..42 dropped (marked segment), write-back block 43 kept');
    assert.equal(await cached(41), null, 'the killed block is not recovered');
    assert.equal(await cached(40), null);
    assert.deepEqual(await cached(43), block(43, 1));
    assert.deepEqual(readMarks(dev.image), [], 'the open rewrote segment 0 and cleared its mark');
    // Its header names 41 no more: another process crash brings back nothing of it either.
    await processCrash();
    assert.equal(await cached(41), null);
    assert.deepEqual(await cached(43), block(43, 1));
  });

  it('a mark found at open is kept on the device until its segment is rewritten and synced: a crash during that open still honours it', async () => {
    await insertClean(40, 3);
    assert.equal(await cache.log.flush(), true);
    const io = new HeldIo();
    dev.io = io;
    assert.equal(cache.invalidate(v, 41, 1), null);
    await waitFor(() => io.pending.length === 1, 'the header rewrite of segment 0');
    const image = new Uint8Array(dev.image);
    dev.io = null;
    // A start whose own rewrite of segment 0 never lands (frozen at its first write: the superblock).
    dev.freeze();
    fs.closeSync((cache as unknown as { fd: number }).fd);
    dev = new MemDevice(image.byteLength, image);
    dev.freezeAtWrite = 1;
    // (Another file to lock, of the device's size: the frozen open never lets go of its own.)
    fs.writeFileSync(path.join(dir, 'frozen'), '');
    fs.truncateSync(path.join(dir, 'frozen'), image.byteLength);
    const opening = Cache.open({ path: path.join(dir, 'frozen'), size: image.byteLength, blockSize: BS, segmentSize: BPS * BS, buffers: 3, engine: dev, bootId: `boot-${boot}` });
    await dev.frozenSignal;
    assert.deepEqual(readMarks(dev.processCrashImage(() => 0.9)), [0], 'the superblock that open writes keeps the mark');
    void opening.catch(() => {});
    await open(dev.processCrashImage(() => 0.9), image.byteLength);
    assert.equal(await cached(41), null);
    assert.equal(await cached(40), null);
  });

  it('without marks (killMarks false) the write waits for the header rewrite, which a process crash then keeps', async () => {
    await cache.abort();
    marks = false;
    await open();
    await killClean();
    await processCrash();
    assert.equal(await cached(41), null, 'the killed block is not recovered');
    assert.deepEqual(await cached(40), block(40, 1), 'warm after a process crash');
  });

  it('a kill of a clean block rewrites the header once and does not sync (counted: headerRewrites, rewriteBatches, deviceWriteBytes, fdatasyncs); a process crash never brings it back', async () => {
    await killClean();
    await processCrash();
    assert.equal(cache.recovery?.hostCrash, false);
    assert.equal(await cached(41), null, 'the killed block is not recovered');
    assert.deepEqual(await cached(40), block(40, 1), 'warm after a process crash');
    assert.deepEqual(await cached(42), block(42, 1));
  });

  it('the rewrites of marked kills gather into one batch that starts REWRITE_DELAY_MS later, or with the first rewrite someone waits for', async () => {
    await insertClean(40, 3 * BPS);
    assert.equal(await cache.log.flush(), true);
    const before = cache.stats();
    const t0 = performance.now();
    // Kills in three segments, each in its own microtask of one turn (so no timer can fire
    // between them): each marks its segment and waits for nothing.
    for (const b of [40, 40 + BPS, 40 + 2 * BPS]) {
      assert.equal(cache.invalidate(v, b, 1), null);
      for (let k = 0; k < 5; k++) await Promise.resolve();
    }
    assert.deepEqual(readMarks(dev.image).sort((a, b) => a - b), [0, 1, 2]);
    assert.equal(cache.stats().rewriteBatches, before.rewriteBatches, 'no rewrite started yet');
    await waitFor(() => readMarks(dev.image).length === 0, 'the marks cleared by the gathered rewrites');
    assert.ok(performance.now() - t0 >= REWRITE_DELAY_MS - 1, 'the batch waited for the delay');
    const gathered = cache.stats();
    assert.deepEqual([gathered.rewriteBatches - before.rewriteBatches, gathered.headerRewrites - before.headerRewrites], [1, 3], 'one batch of three header rewrites');
    // A marked kill gathers; a destage's kill (rewrite + fdatasync, waited for) takes it along at once.
    assert.equal(cache.invalidate(v, 41 + BPS, 1), null);
    const durable = killDurably(42);
    assert.ok(durable !== null);
    await new Promise((r) => setImmediate(r));
    assert.equal(cache.stats().rewriteBatches - gathered.rewriteBatches, 1, 'started in the turn after the waited-for kill');
    await durable;
    const after = cache.stats();
    assert.deepEqual([after.rewriteBatches - gathered.rewriteBatches, after.headerRewrites - gathered.headerRewrites], [1, 2], 'segments 0 and 1 in one batch');
    await cache.quiesce();
    assert.deepEqual(readMarks(dev.image), []);
  });

  it('rewriteDelayMs 0: the rewrite of a marked kill starts after its turn, with no timer; a delay that is not an integer >= 0 is refused', async () => {
    await cache.abort();
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, blockSize: BS, segmentSize: BPS * BS, buffers: 3, engine: dev, bootId: `boot-${boot}`, rewriteDelayMs: 0 });
    v = cache.registerVolume('v', 'mem-1', 256 * BS);
    await insertClean(40, 3);
    assert.equal(await cache.log.flush(), true);
    const before = cache.stats().rewriteBatches;
    assert.equal(cache.invalidate(v, 41, 1), null, 'marked: the write waits for nothing');
    await new Promise((r) => setImmediate(r));
    assert.equal(cache.stats().rewriteBatches - before, 1);
    for (const bad of [-1, 0.5, Number.NaN]) {
      await assert.rejects(Cache.open({ path: path.join(dir, 'other'), size: DEVICE, engine: dev, rewriteDelayMs: bad }), (e: VhostError) => e.code === 'EINVAL');
    }
  });

  it('a kill of a clean block not synced yet, then a power cut that loses its header rewrite: the start in the new boot drops every clean block, keeps the write-back ones', async () => {
    assert.equal(await cache.insertDirty(v, 3, block(3, 1), 1), 1);
    assert.equal(await cache.commit(), true);
    await killClean();
    await crashAndRecover(() => 0);
    // The header that landed names 40, 41 (its kill was lost) and 42: all three dropped.
    assert.deepEqual([cache.recovery?.hostCrash, cache.recovery?.cleanDropped], [true, 3]);
    assert.equal(await cached(41), null, 'the killed block is not recovered');
    assert.equal(await cached(40), null);
    assert.equal(await cached(42), null);
    assert.deepEqual(await cached(3), block(3, 1), 'the acknowledged write-back block survives');
  });

  it('a start in the same boot whose first fdatasync reports a lost write (the crashed process never saw it) recovers as after a host crash', async () => {
    assert.equal(await cache.insertDirty(v, 3, block(3, 1), 1), 1);
    assert.equal(await cache.commit(), true);
    await killClean();
    dev.freeze();
    fs.closeSync((cache as unknown as { fd: number }).fd);
    // The kernel reports the lost write-back once, to the first fdatasync of the new descriptor.
    let told = false;
    await open(dev.image, DEVICE, (d) => (d.syncError = () => !told && (told = true)));
    assert.equal(told, true);
    assert.deepEqual([cache.recovery?.hostCrash, cache.recovery?.cleanDropped], [true, 2]);
    assert.equal(await cached(40), null);
    assert.deepEqual(await cached(3), block(3, 1));
    // Told once: a crash now (same boot) is still a host crash until the clean floor is recorded;
    // it was, so the next process crash keeps what this run wrote.
    await insertClean(60, 1);
    assert.equal(await cache.log.flush(), true);
    await processCrash();
    assert.equal(cache.recovery?.hostCrash, false);
    assert.deepEqual(await cached(60), block(60, 1), 'blocks cached after the host-crash recovery stay warm across a process crash');
    assert.equal(await cached(42), null, 'clean blocks below the clean floor never come back');
  });

  it('the durable mark stays below a segment write still in flight when a rewrite batch syncs: a header landed over data that did not is caught, the acknowledged copy wins', async () => {
    // Segment 0: clean blocks 40..47; segment 1: block 3, write-back, committed.
    await insertClean(40, BPS);
    const older = block(3, 1);
    assert.equal(await cache.insertDirty(v, 3, older, 1), 1);
    assert.equal(await cache.commit(), true);
    const io = new HeldIo();
    dev.io = io;
    // A newer copy of block 3 and its commit: the segment write of segment 1 (header, data) held.
    assert.equal(await cache.insertDirty(v, 3, block(3, 2), 1), 1);
    let acknowledged = false;
    void cache.commit().then(() => (acknowledged = true));
    await waitFor(() => io.pending.length === 2, 'the header and data writes of the commit');
    const [commitHeader] = io.pending;
    assert.equal(commitHeader.offset, segmentOffset(cache.geometry, 1));
    // A kill in segment 0 meanwhile (a destage's: it syncs): its header rewrite, then the batch's fdatasync.
    const killed = killDurably(40);
    assert.ok(killed !== null);
    await waitFor(() => io.pending.length === 3, 'the header rewrite of segment 0');
    io.pending[2].complete();
    await killed;
    // A later rewrite seals the mark that fdatasync raised into its header (the power cut
    // comes before it completes).
    void killDurably(41);
    await waitFor(() => io.pending.length === 3, 'the second header rewrite of segment 0');
    io.pending[2].effect();
    // The commit's header lands, its data does not.
    commitHeader.effect();
    assert.equal(acknowledged, false);
    await crashAndRecover(() => 0.9);
    assert.ok(cache.recovery !== null);
    assert.equal(cache.recovery.torn, 1, 'the newer copy, sealed above the durable mark, was checked and dropped');
    assert.deepEqual(await cached(3), older, 'block 3 is the acknowledged copy');
    assert.equal(cache.stats().volumes.v.checksumErrors, 0);
  });

  it('recovery reads the data of only the write-back blocks sealed after the last durable mark (the mark rises with each fdatasync, past header rewrites too)', async () => {
    // Segment 0: write-back blocks 0..7, committed; block 7 then discarded (its header
    // rewritten); segment 1: block 8, committed after.
    const first = new Uint8Array(BPS * BS);
    for (let k = 0; k < BPS; k++) first.set(block(k, 1), k * BS);
    assert.equal(await cache.insertDirty(v, 0, first, BPS), BPS);
    assert.equal(await cache.commit(), true);
    await cache.invalidate(v, 7, 1);
    assert.equal(await cache.insertDirty(v, 8, block(8, 1), 1), 1);
    assert.equal(await cache.commit(), true);
    await crashAndRecover(() => 0);
    assert.ok(cache.recovery !== null);
    assert.deepEqual([cache.recovery.verified, cache.recovery.torn], [1, 0], 'only block 8 was sealed above the mark its header carries');
    for (let b = 0; b <= 8; b++) assert.deepEqual(await cached(b), b === 7 ? null : block(b, 1), `block ${b}`);
  });
  it('a header rewrite of another segment while one is being filled names every block of its own segment: an acknowledged write-back block survives a process crash', async () => {
    // Segment 0: write-back block 3 (slot 0) and clean 40..46, committed; the hand then fills
    // segment 1 (block 50 in its slot 0, not written yet).
    assert.equal(await cache.insertDirty(v, 3, block(3, 1), 1), 1);
    await insertClean(40, BPS - 1);
    assert.equal(await cache.commit(), true);
    await insertClean(50, 1);
    assert.ok(drawSlots(cache.map, BPS).split('\n')[1].startsWith(' 50  >'), 'segment 1 is being filled, block 50 in its slot 0');
    await cache.invalidate(v, 40, 1);
    // The process dies: the header rewrite (not synced) is what the next start reads.
    await processCrash();
    assert.deepEqual(await cached(3), block(3, 1), 'the committed write-back block is recovered');
    assert.equal(await cached(40), null);
  });

  it('a header rewrite of the segment being filled does not name the blocks put since it was written: a process crash recovers none of them', async () => {
    await insertClean(40, 2);
    assert.equal(await cache.log.flush(), true);
    // The hand goes on in segment 0: block 42 is put into slot 2, not written yet.
    await insertClean(42, 1);
    await cache.invalidate(v, 40, 1);
    await cache.quiesce();
    // The process dies: the header rewrite (not synced) is what the next start reads.
    await processCrash();
    assert.equal(cache.map.peek(v, 42), -1, 'block 42 (its data never written) is not recovered');
    assert.deepEqual(await cached(41), block(41, 1));
    assert.equal(await cached(40), null);
    assert.equal(cache.stats().volumes.v.checksumErrors, 0);
  });

  it('after a write error of a rewrite batch, nothing is sealed any more: a crash recovers no block of before (the floor is above every header written)', async () => {
    await insertClean(40, BPS);
    await insertClean(50, 2);
    assert.equal(await cache.log.flush(), true);
    // Block 52 is put into segment 1 and its commit's segment write held.
    await insertClean(52, 1);
    const io = new HeldIo();
    dev.io = io;
    const committed = cache.commit();
    await waitFor(() => io.pending.length === 2, 'the segment write of segment 1');
    // A rewrite batch of segments 1 (waiting for that write) and 0 (its header write fails).
    const seg0 = segmentOffset(cache.geometry, 0);
    dev.writeError = (offset) => offset === seg0;
    const kills = [cache.invalidate(v, 51, 1), cache.invalidate(v, 40, 1)];
    // Marked kills: their batch starts REWRITE_DELAY_MS later.
    await waitFor(() => cache.stats().disabled, 'the header write of segment 0 failed');
    await io.drain();
    dev.writeError = null;
    dev.io = null;
    assert.equal(await committed, false);
    for (const k of kills) await k;
    assert.equal(cache.stats().disabled, true);
    assert.deepEqual(errors, ['cache segment 0 header write failed: injected write error; cache disabled for new data (pass-through)']);
    await crashAndRecover(() => 0.9);
    assert.equal(cache.map.volumeBlocks[v], 0, 'no block of before the write error is recovered');
  });

  it('the device writes of a segment are issued one after the other: a commit\'s segment write waits for the header rewrite before it, whatever order the device completes writes in', async () => {
    await insertClean(40, 2);
    assert.equal(await cache.log.flush(), true);
    const io = new HeldIo();
    dev.io = io;
    // Write-back block 3 into slot 2, committed (held); a kill of block 40 meanwhile: its header
    // rewrite waits for that segment write.
    assert.equal(await cache.insertDirty(v, 3, block(3, 1), 1), 1);
    const first = cache.commit();
    await waitFor(() => io.pending.length === 2, 'the segment write of the commit');
    const killed = cache.invalidate(v, 40, 1);
    await settle();
    assert.equal(io.pending.length, 2, 'the header rewrite waits for the segment write');
    for (const h of io.pending.slice()) h.complete();
    await waitFor(() => io.pending.length === 1, 'the header rewrite');
    // Block 4 into slot 3 and its commit while the rewrite is in flight.
    assert.equal(await cache.insertDirty(v, 4, block(4, 1), 1), 1);
    const second = cache.commit();
    await settle();
    assert.equal(io.pending.length, 1, 'the second segment write waits for the header rewrite');
    // The device completes the newest write first.
    let acknowledged = false;
    void second.then((ok) => (acknowledged = ok));
    while (!acknowledged || io.pending.length > 0) {
      await settle();
      io.pending.at(-1)?.complete();
    }
    dev.io = null;
    assert.equal(await first, true);
    await killed;
    await crashAndRecover(() => 0);
    assert.deepEqual(await cached(3), block(3, 1));
    assert.deepEqual(await cached(4), block(4, 1), 'the acknowledged write-back block 4 is recovered');
    assert.equal(await cached(40), null);
  });

  it(`evicted entries are forgotten by an fdatasync started once MAX_UNSYNCED_SEGMENTS (${MAX_UNSYNCED_SEGMENTS}) segments' worth of them are written`, async () => {
    const slots = cache.geometry.slots;
    await insertClean(1000, slots);
    assert.equal(await cache.log.flush(), true);
    await cache.quiesce();
    assert.equal(cache.log.dropped.size, 0);
    const batches = cache.stats().rewriteBatches;
    // A lap of new blocks evicts the old ones, segment by segment.
    const evicting = MAX_UNSYNCED_SEGMENTS * BPS;
    for (let b = 0; b < evicting; b++) await insertClean(b, 1);
    await cache.quiesce();
    assert.equal(cache.stats().rewriteBatches, batches, 'the last segment is still being filled: nothing synced');
    assert.equal(cache.log.dropped.size, evicting);
    // The next block moves the hand on: the segment is written, the fdatasync follows.
    await insertClean(evicting, 1);
    await cache.quiesce();
    assert.equal(cache.stats().rewriteBatches, batches + 1);
    assert.equal(cache.log.dropped.size, 1, 'only the entry evicted into the segment being filled is left');
  });
  it('a commit resolves only once its segment write is durable, also when a rewrite batch\'s fdatasync started after that write completed is still in flight', async () => {
    // Segment 0: clean blocks 40..47; block 48 in segment 1, the one being filled.
    await insertClean(40, BPS + 1);
    assert.equal(await cache.log.flush(), true);
    const io = new HeldIo();
    dev.io = io;
    const data = block(49, 1);
    assert.equal(await cache.insertDirty(v, 49, data, 1), 1);
    // The power cut at the moment the commit is acknowledged.
    let atAck: Uint8Array | null = null;
    const committed = cache.commit().then((ok) => {
      if (ok) atAck = dev.crashImage(() => 0);
      return ok;
    });
    await waitFor(() => io.pending.length === 2, 'the segment write of the commit');
    // A kill in segment 0 (a destage's: it syncs): its header rewrite held too.
    const killed = killDurably(40);
    await waitFor(() => io.pending.length === 3, 'the header rewrite of segment 0');
    // fdatasyncs held; the header rewrite completes, then the segment write: the batch's
    // fdatasync starts after the segment write completed.
    const held = gate();
    dev.syncGate = held.promise;
    const [header, data1, rewrite] = io.pending.slice();
    rewrite.complete();
    header.complete();
    data1.complete();
    await settle();
    held.resolve();
    dev.syncGate = null;
    dev.io = null;
    assert.equal(await committed, true);
    await killed;
    assert.ok(atAck !== null);
    await restartOn(atAck);
    assert.deepEqual(await cached(49), data, 'the acknowledged write-back block is on the device');
  });
  it('a slot a newer drop reserves stays RESERVED when an older drop\'s cover of it is synced first (the newer drop not durable yet)', async () => {
    // Every slot holds a clean block, written; a write-back block 3 evicts one of them (that
    // drop is covered by the write of the segment being filled, which holds 3).
    await insertClean(1000, cache.geometry.slots);
    assert.equal(await cache.log.flush(), true);
    await cache.quiesce();
    assert.equal(await cache.insertDirty(v, 3, block(3, 1), 1), 1);
    const slot = cache.map.peek(v, 3);
    const io = new HeldIo();
    dev.io = io;
    try {
      let committed = false;
      const commit = cache.commit().then((ok) => (committed = ok));
      await waitFor(() => io.pending.length === 1, 'the segment write of the commit');
      // 3 discarded meanwhile: its slot RESERVED until a header without it is durable.
      const killed = cache.invalidate(v, 3, 1);
      assert.ok(killed !== null);
      assert.equal(cache.map.bda.flags[slot], FLAG_RESERVED);
      io.pending[0].complete();
      // The commit's fdatasync covers the eviction; the discard's header rewrite is held.
      await waitFor(() => committed && io.pending.length === 1, 'the commit, the header rewrite of the discard held');
      assert.equal(cache.map.bda.flags[slot], FLAG_RESERVED, 'the slot is not reused before the discard is durable');
      io.pending[0].complete();
      await killed;
      await commit;
      assert.equal(cache.map.bda.flags[slot], 0, 'free once the discard is durable');
    } finally {
      dev.io = null;
      await io.drain();
    }
  });
  it('after a write error the segment being filled is dropped, never written: its blocks are not served, a crash recovers nothing of before', async () => {
    await insertClean(40, BPS);
    // Block 50 is put into segment 1, being filled (segment 0 written when the hand left it).
    await insertClean(50, 1);
    // A header rewrite of segment 0 fails: the log is disabled; the kill resolves once the
    // floor is durable (the volume table accepts writes).
    const seg0 = segmentOffset(cache.geometry, 0);
    dev.writeError = (offset) => offset === seg0;
    await cache.invalidate(v, 40, 1);
    await cache.quiesce();
    dev.writeError = null;
    assert.equal(cache.stats().disabled, true);
    const writes = dev.writes;
    assert.equal(await cache.log.flush(), false);
    assert.equal(dev.writes, writes, 'nothing is written after the error');
    assert.equal(cache.map.peek(v, 50), -1, 'block 50 (never written) is dropped');
    assert.equal(await cached(50), null);
    await crashAndRecover(() => 0.9);
    assert.equal(cache.map.volumeBlocks[v], 0, 'no block of before the write error is recovered');
  });

  it('after a volume table write error: a kill waits for the floor to be durable, later kills write nothing more; a device refusing every write fails the kill with EIO (the write must not be issued)', async () => {
    await insertClean(40, 3);
    assert.equal(await cache.log.flush(), true);
    cache.log.writeFailed('injected volume table write error');
    assert.equal(cache.stats().disabled, true);
    await cache.invalidate(v, 40, 1);
    const writes = dev.writes;
    await cache.invalidate(v, 41, 1);
    assert.equal(dev.writes, writes, 'the floor is durable already: the second kill writes nothing');
    await crashAndRecover(() => 0.9);
    assert.equal(cache.map.volumeBlocks[v], 0, 'no block of before the write error is recovered');
    // Now a device that refuses every write (the floor round gives up after its attempts).
    await insertClean(40, 1);
    assert.equal(await cache.log.flush(), true);
    dev.writeError = () => true;
    cache.log.writeFailed('injected volume table write error');
    await assert.rejects(cache.invalidate(v, 40, 1) ?? Promise.resolve(), (e: VhostError) => e.code === 'EIO' && /the write is not issued/.test(e.message));
  });
  it('a failed segment write drops its blocks, disables the log and is logged once (which segment, the error)', async () => {
    await insertClean(40, 2);
    dev.writeError = (offset) => offset === segmentOffset(cache.geometry, 0);
    assert.equal(await cache.log.flush(), false);
    dev.writeError = null;
    assert.equal(cache.stats().disabled, true);
    assert.equal(await cached(40), null);
    assert.deepEqual(errors, ['cache segment 0 write failed: injected write error; cache disabled for new data (pass-through)']);
  });
});
