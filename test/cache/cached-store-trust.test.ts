/**
 * CachedStore's trust and failure rules, one by one, against an in-memory store the test
 * drives (WatchedStore): failed writes leave their blocks unsettled until a covering write or a
 * later flush settles them; a lost connection (writesMayBeLost) drops what was written since the
 * last successful flush (the whole volume past MAX_UNFLUSHED_RANGES ranges); a fenced store is
 * served nothing from the cache again; a failed final flush leaves no block of the volume in the
 * saved metadata; a warm start of a store whose changes are invisible verifies a sample of its
 * cached blocks. Data is stamped (offset, generation): every read is checked against what the
 * store holds, and "cached" means a read of the block is served without a backing read.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackingEvents } from '../../src/backing/backing-store';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode, MAX_UNFLUSHED_RANGES, VERIFY_SAMPLE_BLOCKS } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { VhostError } from '../../src/native/errors';
import { FaultyEngine, gate, MemStore } from './helpers';
import { stampBytes, stamped, stampGeneration } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BS = 4096;

/**
 * A MemStore that reports events (watch), whose writes (write, discard, write-zeroes), flushes
 * and identity reads fail on demand. A failed write is not applied; the test applies it "late"
 * (as a server would after a timeout) with applyLate().
 */
class WatchedStore extends MemStore {
  events: BackingEvents | null = null;
  failWrites = false;
  failFlush = false;
  failIdentity = false;
  flushHook: (() => Promise<void>) | null = null;
  private pending: (() => void)[] = [];

  watch(events: BackingEvents): void {
    this.events = events;
  }

  override async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    if (!this.failWrites) return super.write(offset, bufs);
    const data = Buffer.concat(bufs);
    this.pending.push(() => this.data.set(data, offset));
    throw new VhostError('injected write timeout', 'ETIMEDOUT');
  }

  override async discard(offset: number, length: number): Promise<void> {
    if (!this.failWrites) return super.discard(offset, length);
    this.pending.push(() => this.data.fill(0, offset, offset + length));
    throw new VhostError('injected discard timeout', 'ETIMEDOUT');
  }

  /** Applies the failed writes now, in order. */
  applyLate(): void {
    for (const f of this.pending.splice(0)) f();
  }

  override async flush(): Promise<void> {
    if (this.flushHook) await this.flushHook();
    if (this.failFlush) throw new VhostError('injected flush error', 'EIO');
  }

  override currentIdentity(): Promise<string> {
    return this.failIdentity ? Promise.reject(new VhostError('injected stat error', 'EIO')) : super.currentIdentity();
  }
}

describe('cached store: failed writes, lost writes, fencing, verification at a warm start', () => {
  let dir: string;
  let cache: Cache;
  let mem: WatchedStore;
  let engine: FaultyEngine;

  async function openCache(blocks = 256): Promise<Cache> {
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(Math.ceil(blocks / 4) + 2, BS, 4 * BS), segmentSize: 4 * BS, engine });
    return cache;
  }

  function store(mode: CacheMode = 'writethrough', readAhead = 0): CachedStore {
    return new CachedStore({ backing: mem, cache, name: 'vol', mode, readAhead });
  }

  async function readBlock(s: CachedStore, b: number): Promise<Uint8Array> {
    const out = new Uint8Array(BS);
    await s.read(b * BS, [out]);
    return out;
  }

  /** Reads block b, checks it against the store's bytes; returns whether the cache served it. */
  async function readsStore(s: CachedStore, b: number, what: string): Promise<boolean> {
    const before = mem.reads;
    const got = await readBlock(s, b);
    const want = mem.data.subarray(b * BS, (b + 1) * BS);
    assert.ok(Buffer.from(got).equals(want), `${what}: block ${b} read generation ${stampGeneration(got)}, the store holds ${stampGeneration(want)}`);
    await s.drain();
    await cache.log.quiesce();
    return mem.reads === before;
  }

  /** Reads block b twice; true when the second read is served by the cache. */
  async function cachedAfterRead(s: CachedStore, b: number, what: string): Promise<boolean> {
    await readsStore(s, b, what);
    return readsStore(s, b, `${what}, read again`);
  }

  function peek(s: CachedStore, b: number): boolean {
    return cache.map.peek(s.volume, b) >= 0;
  }

  beforeEach(() => {
    dir = tmpDir('store-trust');
    engine = new FaultyEngine(new FsEngine());
    mem = new WatchedStore(2048 * BS);
    stampBytes(mem.data, 0, 1);
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('failed write-like operations', () => {
    for (const op of ['write', 'discard'] as const) {
      it(`a failed ${op} drops the cached block and keeps it uninsertable, even once applied late, until a covering write`, async () => {
        await openCache();
        const s = store();
        assert.ok(await cachedAfterRead(s, 3, 'before'));
        mem.failWrites = true;
        const fail = op === 'write' ? s.write(3 * BS, [stamped(3 * BS, BS, 2)]) : s.discard(3 * BS, BS);
        await assert.rejects(fail, (e: VhostError) => e.code === 'ETIMEDOUT');
        mem.failWrites = false;
        // The store has not applied it: the old data is read, and not cached.
        assert.equal(await cachedAfterRead(s, 3, 'failed, not applied'), false);
        mem.applyLate();
        assert.equal(await cachedAfterRead(s, 3, 'applied late'), false);
        // Neighbours are not held.
        assert.ok(await cachedAfterRead(s, 2, 'neighbour'));
        assert.ok(await cachedAfterRead(s, 4, 'neighbour'));
        // The covering write settles the block (it started while the block was held, so it does
        // not insert it itself): the next read miss inserts it.
        await s.write(3 * BS, [stamped(3 * BS, BS, 3)]);
        assert.ok(await cachedAfterRead(s, 3, 'settled by a covering write'));
        await s.close();
      });
    }

    it('two failures far apart hold their own blocks only, not the blocks between them', async () => {
      await openCache();
      const s = store('writearound');
      mem.failWrites = true;
      for (const b of [3, 7]) await assert.rejects(s.write(b * BS, [stamped(b * BS, BS, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      mem.failWrites = false;
      mem.applyLate();
      assert.deepEqual(
        [await cachedAfterRead(s, 3, 'failed'), await cachedAfterRead(s, 5, 'between'), await cachedAfterRead(s, 7, 'failed')],
        [false, true, false],
      );
    });

    it('a write settles only the blocks it covers whole; the rest stay unsettled until a flush', async () => {
      await openCache();
      const s = store('writearound');
      mem.failWrites = true;
      await assert.rejects(s.write(BS, [stamped(BS, 4 * BS, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      mem.failWrites = false;
      mem.applyLate();
      // Bytes [2 BS + 100, 4 BS): block 3 whole, block 2 only partly.
      await s.write(2 * BS + 100, [new Uint8Array(2 * BS - 100).fill(7)]);
      const cached: boolean[] = [];
      for (const b of [1, 2, 3, 4]) cached.push(await cachedAfterRead(s, b, 'after the partial settle'));
      assert.deepEqual(cached, [false, false, true, false]);
      // Blocks outside the failed range were never held.
      assert.ok(await cachedAfterRead(s, 0, 'outside'));
      assert.ok(await cachedAfterRead(s, 5, 'outside'));
      await s.flush();
      for (const b of [1, 2, 4]) assert.ok(await cachedAfterRead(s, b, 'after a flush'), `block ${b} is cached after the flush`);
    });

    it('a failure during a flush is not settled by it, only by the next flush', async () => {
      await openCache();
      const s = store();
      const inFlush = gate();
      const release = gate();
      mem.flushHook = async () => {
        mem.flushHook = null;
        inFlush.resolve();
        await release.promise;
      };
      const flushing = s.flush();
      await inFlush.promise;
      mem.failWrites = true;
      await assert.rejects(s.write(6 * BS, [stamped(6 * BS, BS, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      mem.failWrites = false;
      release.resolve();
      await flushing;
      mem.applyLate();
      assert.equal(await cachedAfterRead(s, 6, 'failed during the flush'), false);
      await s.flush();
      assert.ok(await cachedAfterRead(s, 6, 'after the next flush'));
    });

    it('a failed flush settles nothing', async () => {
      await openCache();
      const s = store();
      mem.failWrites = true;
      await assert.rejects(s.write(6 * BS, [stamped(6 * BS, BS, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      mem.failWrites = false;
      mem.failFlush = true;
      await assert.rejects(s.flush(), (e: VhostError) => e.code === 'EIO');
      mem.failFlush = false;
      mem.applyLate();
      assert.equal(await cachedAfterRead(s, 6, 'after the failed flush'), false);
    });

    it('hundreds of failures (merged into one hold) keep every failed block uninsertable until a flush', async () => {
      await openCache(512);
      const s = store('writearound');
      mem.failWrites = true;
      // 300 single-block failures on blocks 10, 11, ..., 309 (every one its own range at first).
      const failures = Array.from({ length: 300 }, (_, k) => s.write((10 + k) * BS, [stamped((10 + k) * BS, BS, 2)]));
      for (const f of failures) await assert.rejects(f, (e: VhostError) => e.code === 'ETIMEDOUT');
      mem.failWrites = false;
      mem.applyLate();
      for (const b of [10, 11, 200, 264, 265, 266, 309]) assert.equal(await cachedAfterRead(s, b, 'unsettled'), false, `block ${b} is not cached`);
      for (const b of [9, 310]) assert.ok(await cachedAfterRead(s, b, 'never failed'), `block ${b} is cached`);
      await s.flush();
      for (const b of [10, 265, 309]) assert.ok(await cachedAfterRead(s, b, 'after the flush'), `block ${b} is cached after the flush`);
    });
  });

  describe('a store that may lose acknowledged writes (writesMayBeLost)', () => {
    it('drops exactly the blocks written since the last successful flush; a read in flight inserts nothing', async () => {
      await openCache();
      const s = store();
      assert.ok(mem.events !== null, 'the cached store watches its backing store');
      await s.write(0, [stamped(0, 2 * BS, 2)]);
      await s.flush();
      await s.write(4 * BS, [stamped(4 * BS, BS, 2)]);
      await s.discard(6 * BS, BS);
      assert.ok(await cachedAfterRead(s, 6, 'discarded'));
      assert.ok(await cachedAfterRead(s, 9, 'read only'));
      // A failed flush keeps the writes before it unflushed.
      mem.failFlush = true;
      await assert.rejects(s.flush(), (e: VhostError) => e.code === 'EIO');
      mem.failFlush = false;
      // A read miss of block 20 whose backing read is in flight when the loss is reported.
      const held = gate();
      const reached = gate();
      mem.readHook = async (offset) => {
        if (offset !== 20 * BS) return;
        mem.readHook = null;
        reached.resolve();
        await held.promise;
      };
      const r = readBlock(s, 20);
      await reached.promise;
      // The store lost the unflushed writes: blocks 4 and 6 hold generation 1 again.
      stampBytes(mem.data.subarray(4 * BS, 5 * BS), 4 * BS, 1);
      stampBytes(mem.data.subarray(6 * BS, 7 * BS), 6 * BS, 1);
      mem.events!.writesMayBeLost();
      held.resolve();
      await r;
      await s.drain();
      assert.equal(peek(s, 20), false, 'the read in flight inserted nothing');
      assert.equal(peek(s, 4), false);
      assert.equal(peek(s, 6), false);
      assert.ok(peek(s, 0) && peek(s, 1) && peek(s, 9), 'flushed and read-only blocks stay cached');
      for (const b of [0, 1, 4, 6, 9]) await readsStore(s, b, 'after the loss');
    });

    for (const [writes, dropsAll] of [
      [MAX_UNFLUSHED_RANGES, false],
      [MAX_UNFLUSHED_RANGES + 1, true],
    ] as const) {
      it(`${writes} ranges written since the flush: ${dropsAll ? 'every block of the volume is dropped' : 'only those are dropped'}`, async () => {
        await openCache();
        const s = store();
        assert.ok(await cachedAfterRead(s, 100, 'never written'));
        // Sector discards inside blocks 0..63: `writes` ranges, 64 blocks.
        for (let k = 0; k < writes; k++) await s.discard((k % 512) * 512, 512);
        mem.events!.writesMayBeLost();
        assert.equal(peek(s, 100), !dropsAll);
        assert.ok(await readsStore(s, 100, 'after the loss') === !dropsAll);
      });
    }

    it('a successful flush forgets an overflow before it, not the writes after it', async () => {
      await openCache();
      const s = store();
      for (let k = 0; k <= MAX_UNFLUSHED_RANGES; k++) await s.discard((k % 512) * 512, 512);
      await s.flush();
      assert.ok(await cachedAfterRead(s, 100, 'never written'));
      await s.write(110 * BS, [stamped(110 * BS, BS, 2)]);
      mem.events!.writesMayBeLost();
      assert.ok(peek(s, 100), 'the overflow was flushed: block 100 stays');
      assert.equal(peek(s, 110), false, 'written after the flush: dropped');
    });

    it('a write acknowledged during a flush stays unflushed after it', async () => {
      await openCache();
      const s = store();
      const inFlush = gate();
      const release = gate();
      mem.flushHook = async () => {
        mem.flushHook = null;
        inFlush.resolve();
        await release.promise;
      };
      const flushing = s.flush();
      await inFlush.promise;
      await s.write(12 * BS, [stamped(12 * BS, BS, 2)]);
      release.resolve();
      await flushing;
      await s.drain();
      assert.ok(peek(s, 12));
      mem.events!.writesMayBeLost();
      assert.equal(peek(s, 12), false);
    });
  });

  describe('a fenced store (its data is gone)', () => {
    it('loses its blocks, serves and inserts nothing from the cache again, and a read in flight inserts nothing', async () => {
      await openCache();
      const s = store();
      assert.ok(await cachedAfterRead(s, 1, 'before'));
      const held = gate();
      const reached = gate();
      mem.readHook = async (offset) => {
        if (offset !== 8 * BS) return;
        mem.readHook = null;
        reached.resolve();
        await held.promise;
      };
      const r = readBlock(s, 8);
      await reached.promise;
      mem.events!.fenced();
      held.resolve();
      await r;
      await s.drain();
      assert.equal(peek(s, 8), false, 'the read in flight inserted nothing');
      assert.equal(peek(s, 1), false, 'the volume lost its blocks');
      for (const b of [1, 2]) assert.equal(await cachedAfterRead(s, b, 'fenced'), false);
      await s.write(3 * BS, [stamped(3 * BS, BS, 2)]);
      await s.drain();
      assert.equal(peek(s, 3), false, 'a write of a fenced store inserts nothing');
      assert.equal(await readsStore(s, 3, 'written after the fence'), false);
      assert.equal(cache.stats().volumes.vol.readHits, 1);
    });
  });

  describe('close', () => {
    async function reopen(): Promise<CachedStore> {
      await cache.close();
      await openCache();
      return store();
    }

    it('after a failed final flush the saved metadata holds no block of the volume', async () => {
      await openCache();
      let s = store();
      assert.ok(await cachedAfterRead(s, 5, 'before'));
      mem.failFlush = true;
      await assert.rejects(s.flush(), (e: VhostError) => e.code === 'EIO');
      await s.close();
      mem.failFlush = false;
      s = await reopen();
      assert.equal(cache.warm, true);
      assert.equal(peek(s, 5), false);
    });

    it('a successful flush after a failed one keeps the blocks across a restart', async () => {
      await openCache();
      let s = store();
      assert.ok(await cachedAfterRead(s, 5, 'before'));
      mem.failFlush = true;
      await assert.rejects(s.flush(), (e: VhostError) => e.code === 'EIO');
      mem.failFlush = false;
      await s.flush();
      await s.close();
      s = await reopen();
      assert.ok(await readsStore(s, 5, 'after the restart'));
    });

    it('a fenced store closes without blocks; one whose identity cannot be read loses them at the next open', async () => {
      await openCache();
      let s = store();
      assert.ok(await cachedAfterRead(s, 5, 'before'));
      mem.events!.fenced();
      await s.close();
      s = await reopen();
      assert.equal(peek(s, 5), false, 'fenced');
      assert.ok(await cachedAfterRead(s, 5, 'cached again'));
      mem.failIdentity = true;
      await assert.rejects(s.close(), (e: VhostError) => e.code === 'EIO');
      mem.failIdentity = false;
      s = await reopen();
      assert.equal(peek(s, 5), false, 'no identity recorded');
    });
  });

  describe('a warm start of a store whose changes are invisible', () => {
    /** Caches blocks [0, n) of a store with invisible changes, then closes; returns the next open's store. */
    async function warmWith(n: number, change: () => void, exclusive?: boolean): Promise<CachedStore> {
      mem.changesVisible = false;
      await openCache(n + 64);
      let s = await CachedStore.open({ backing: mem, cache, name: 'vol', readAhead: 0 });
      assert.equal(s.verification?.checked, 0, 'a cold start has nothing to verify');
      for (let b = 0; b < n; b += 64) {
        await s.read(b * BS, [new Uint8Array(Math.min(64, n - b) * BS)]);
        await s.drain();
      }
      await s.close();
      await cache.close();
      change();
      await openCache(n + 64);
      mem.reads = 0;
      s = await CachedStore.open({ backing: mem, cache, name: 'vol', readAhead: 0, exclusive });
      return s;
    }

    it('unchanged: every cached block is compared and kept; the comparison counts no guest read', async () => {
      const s = await warmWith(40, () => undefined);
      assert.equal(s.verification?.checked, 40);
      assert.equal(s.verification?.mismatched, 0);
      assert.equal(s.verification?.dropped, 0);
      assert.equal(mem.reads, 40);
      const v = cache.stats().volumes.vol;
      assert.deepEqual([v.reads, v.readHits, v.ramHits, v.storageHits], [0, 0, 0, 0]);
      for (const b of [0, 17, 39]) assert.ok(await readsStore(s, b, 'kept'));
    });

    it('one block changed offline: all of the volume blocks are dropped and the new data is read', async () => {
      const s = await warmWith(40, () => stampBytes(mem.data.subarray(17 * BS, 18 * BS), 17 * BS, 5));
      assert.equal(s.verification?.mismatched, 1);
      assert.equal(s.verification?.dropped, 40);
      for (const b of [0, 17, 39]) assert.equal(await readsStore(s, b, 'after the drop'), false);
    });

    it('a backing read error during the comparison drops them too', async () => {
      // Block 3 is all zeros: what a read into a fresh buffer that failed would hold.
      mem.data.fill(0, 3 * BS, 4 * BS);
      const s = await warmWith(8, () => {
        mem.readHook = async (offset) => {
          if (offset === 3 * BS) throw new VhostError('injected read error', 'EIO');
        };
      });
      mem.readHook = null;
      assert.equal(s.verification?.mismatched, 1);
      assert.equal(s.verification?.dropped, 8);
      assert.equal(peek(s, 0), false);
    });

    it(`more than ${VERIFY_SAMPLE_BLOCKS} cached blocks: a sample of ${VERIFY_SAMPLE_BLOCKS} is compared`, async () => {
      const s = await warmWith(VERIFY_SAMPLE_BLOCKS + 100, () => undefined);
      assert.equal(s.verification?.checked, VERIFY_SAMPLE_BLOCKS);
      assert.equal(mem.reads, VERIFY_SAMPLE_BLOCKS);
      assert.ok(peek(s, 0) && peek(s, VERIFY_SAMPLE_BLOCKS + 99));
    });

    it(`blocks past the first ${VERIFY_SAMPLE_BLOCKS} slots are sampled too: changes to them are caught`, async () => {
      const n = VERIFY_SAMPLE_BLOCKS + 100;
      // The last 100 blocks (the last slots filled) change offline.
      const s = await warmWith(n, () => stampBytes(mem.data.subarray(VERIFY_SAMPLE_BLOCKS * BS, n * BS), VERIFY_SAMPLE_BLOCKS * BS, 7));
      assert.ok((s.verification?.mismatched ?? 0) > 0, 'a changed block was in the sample');
      assert.equal(s.verification?.dropped, n);
    });

    it('exclusive: nothing is compared (the operator guarantees no other writer)', async () => {
      const s = await warmWith(8, () => undefined, true);
      assert.equal(s.verification, null);
      assert.equal(mem.reads, 0);
      assert.ok(await readsStore(s, 3, 'kept'));
    });
  });

  describe('what is cached', () => {
    it('zero-length reads, writes and discards change nothing cached; reads of nothing read nothing', async () => {
      await openCache();
      const s = store();
      assert.ok(await cachedAfterRead(s, 0, 'before'));
      await s.write(0, []);
      await s.discard(0, 0);
      await s.writeZeroes(0, 0, false);
      const reads = mem.reads;
      await s.read(0, []);
      await s.read(BS, [new Uint8Array(0)]);
      assert.equal(mem.reads, reads);
      assert.ok(await readsStore(s, 0, 'after'));
      assert.equal(peek(s, 1), false);
      // A volume without a shared parent counts no shared lookups.
      assert.equal(cache.stats().volumes.vol.sharedReads, 0);
    });

    it('a read-ahead skips the blocks already cached at the start of its window', async () => {
      await openCache();
      // Another volume registered first: this one's id is not 0.
      cache.registerVolume('first', 'first-1', 512 * BS);
      const s = store('writethrough', 8);
      // Blocks 16 and 17 cached first (the first slots of the log).
      await s.read(16 * BS, [new Uint8Array(2 * BS)]);
      await s.drain();
      await s.read(0, [new Uint8Array(15 * BS)]);
      await s.drain();
      // Block 15 continues the stream: the read-ahead window is 16..23, of which 18..23 are read.
      const bytes = mem.bytesRead;
      await readsStore(s, 15, 'stream');
      assert.equal(mem.bytesRead - bytes, BS + 6 * BS);
      assert.equal(cache.stats().volumes.vol.prefetched, 6);
      for (let b = 16; b < 24; b++) assert.ok(peek(s, b), `block ${b} is cached`);
    });

    it('a backing read error fails the read, caches nothing, and the next read succeeds', async () => {
      await openCache();
      const s = store();
      mem.readHook = async (offset) => {
        if (offset === 2 * BS) throw new VhostError('injected read error', 'EIO');
      };
      // Blocks 0 and 1 are cached; the read of 0..3 then misses 2..3 and their read fails.
      assert.ok(await cachedAfterRead(s, 0, 'before') && (await cachedAfterRead(s, 1, 'before')));
      await assert.rejects(s.read(0, [new Uint8Array(4 * BS)]), (e: VhostError) => e.code === 'EIO');
      await s.drain();
      assert.equal(peek(s, 2), false);
      mem.readHook = null;
      assert.ok(await cachedAfterRead(s, 2, 'after the error'));
    });

    it('mode none reads the backing store even for blocks cached by an earlier run', async () => {
      await openCache();
      let s = store();
      assert.ok(await cachedAfterRead(s, 4, 'writethrough'));
      await s.close();
      s = store('none');
      const hits = cache.stats().readHits;
      assert.equal(await readsStore(s, 4, 'mode none'), false);
      assert.equal(cache.stats().readHits, hits);
    });

    it('the sequential cut-off applies without read-ahead too', async () => {
      await openCache();
      const s = new CachedStore({ backing: mem, cache, name: 'vol', readAhead: 0, sequentialCutoff: 4 * BS });
      for (let b = 0; b < 20; b++) await readsStore(s, b, 'stream');
      const cached: number[] = [];
      for (let b = 0; b < 20; b++) if (peek(s, b)) cached.push(b);
      assert.deepEqual(cached, [0, 1, 2, 3]);
      assert.equal(cache.stats().volumes.vol.admissionsRefused, 16);
      assert.equal(cache.stats().volumes.vol.prefetched, 0, 'read-ahead is off');
    });

    it("a read miss started while a writethrough write's insertion is pending is cached too", async () => {
      await openCache();
      const s = store();
      await s.read(40 * BS, [new Uint8Array(BS)]);
      await s.drain();
      // Hold the log: a flush waits for the segment write of block 40, later insertions queue.
      const release: (() => void)[] = [];
      const writev = engine.writev.bind(engine);
      engine.writev = (fd, bufs, offset) => new Promise<void>((r) => release.push(r)).then(() => writev(fd, bufs, offset));
      const flushed = cache.log.flush();
      // Blocks 1 and 2 are written whole (and inserted once the log moves), block 0 partly.
      await s.write(BS / 2, [stamped(BS / 2, 2 * BS + BS / 2, 2)]);
      const r = readBlock(s, 0);
      while (release.length === 0) await new Promise((res) => setImmediate(res));
      engine.writev = writev;
      for (const go of release.splice(0)) go();
      await r;
      await flushed;
      await s.drain();
      await cache.log.quiesce();
      for (const b of [0, 1, 2]) assert.ok(await readsStore(s, b, 'after the write'), `block ${b} is cached`);
    });
  });
});
