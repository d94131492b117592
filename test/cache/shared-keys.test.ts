/**
 * Clones sharing their parent's cached blocks (SharedKeys through CachedStore), on in-memory
 * clones with RBD's semantics (CloneStore: a unit not owned reads the parent inside the
 * overlap; a write-like operation copies the unit up first): blocks read by one clone are hits
 * for the other; writes, discards and write-zeroes to one clone never change what the other
 * reads, racing reads included; a miss of blocks of both keys inserts each run under its key,
 * is joined per key, and a clone's own block never takes the parent's bytes of another clone's
 * read; a warm restart keeps the parent's blocks; a clone written
 * offline (its owned units found at open) never reads old parent blocks; blocks the clone
 * cached under its own key for a unit that reads the parent again are dropped at open.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BackingStore, SharedBlocks } from '../../src/backing/backing-store';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { gatherIov, iovLength, scatterIov } from '../../src/util/iov';
import { gate, rng } from './helpers';
import { stampBytes } from '../support/stamps';
import { rerun, seededRunsFromEnv } from '../support/seeded-runs';
import { waitFor } from '../support/wait';

const BS = 4096;
/** Unit of ownership (RBD: object): 4 blocks. */
const UNIT = 4 * BS;
/** The parent is 48 blocks; clones are 64 blocks with an overlap of 40 (the rest reads zeros). */
const PARENT = 48 * BS;
const OVERLAP = 40 * BS;
const VOL = 64 * BS;
const BLOCKS = VOL / BS;
/** Soaks of the randomized test: VBC_CLONES_RUN=SEEDS[:ROUNDS] (test/support/seeded-runs.ts). */
const CLONES_ENV = 'VBC_CLONES_RUN';

/** An RBD-like clone in memory: own units, copy-up on write, the parent below. */
class CloneStore implements BackingStore {
  readonly kind = 'clone';
  readonly readOnly = false;
  readonly changesVisible = false;
  readonly features = { flush: true, discard: true, writeZeroes: true };
  readonly size = VOL;
  readonly own = new Uint8Array(VOL);
  readonly owned = new Uint8Array(Math.ceil(OVERLAP / UNIT));
  /** Bytes read from this clone's parent (not from its own units). */
  parentBytesRead = 0;
  /** Awaited by every operation before it takes effect (tests interleave them with it). */
  delay: (kind: 'read' | 'write') => Promise<void> = () => Promise.resolve();

  constructor(
    readonly name: string,
    readonly parent: Uint8Array,
  ) {}

  get location(): string {
    return `clone:${this.name}`;
  }
  get identity(): string {
    return this.location;
  }
  /** What the cache is told at open: a snapshot of the owned units, as librbd reports them. */
  get sharing(): SharedBlocks {
    return { parent: 'rbd-parent:test', sharedBytes: OVERLAP, unitBytes: UNIT, owned: this.owned.slice() };
  }

  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }

  /** The clone's bytes now. */
  content(offset: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; ) {
      const at = offset + i;
      const u = Math.floor(at / UNIT);
      const n = Math.min(len - i, (u + 1) * UNIT - at);
      if (at < OVERLAP && this.owned[u] === 0) {
        const m = Math.max(0, Math.min(n, OVERLAP - at));
        out.set(this.parent.subarray(at, at + m), i);
        this.parentBytesRead += m;
      } else {
        out.set(this.own.subarray(at, at + n), i);
      }
      i += n;
    }
    return out;
  }

  private copyUp(offset: number, len: number): void {
    for (let u = Math.floor(offset / UNIT); u <= Math.floor((offset + len - 1) / UNIT) && u < this.owned.length; u++) {
      if (this.owned[u] !== 0) continue;
      const end = Math.min((u + 1) * UNIT, OVERLAP);
      this.own.set(this.parent.subarray(u * UNIT, end), u * UNIT);
      this.owned[u] = 1;
    }
  }

  async read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    await this.delay('read');
    scatterIov(this.content(offset, iovLength(bufs)), 0, bufs);
  }

  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    await this.delay('write');
    this.copyUp(offset, iovLength(bufs));
    gatherIov(bufs, this.own, offset);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.delay('write');
    this.copyUp(offset, length);
    this.own.fill(0, offset, offset + length);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.discard(offset, length);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

describe('clones share their parent cached blocks', () => {
  let dir: string;
  let cache: Cache;
  let parent: Uint8Array;
  let a: CloneStore;
  let b: CloneStore;

  async function openCache(): Promise<void> {
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: deviceBytesFor(16, 4096, 16384), segmentSize: 16384, buffers: 4, engine: new FsEngine() });
  }

  function cached(store: CloneStore): Promise<CachedStore> {
    return CachedStore.open({ backing: store, cache, name: store.name, readAhead: 0, exclusive: true });
  }

  async function readBack(s: CachedStore, offset: number, len: number): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    await s.read(offset, [out]);
    return out;
  }

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-shared-'));
    parent = new Uint8Array(PARENT);
    stampBytes(parent, 0, 1);
    a = new CloneStore('a', parent);
    b = new CloneStore('b', parent);
    await openCache();
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a block one clone read is a hit for the other, counted per volume and per parent', async () => {
    const ca = await cached(a);
    const cb = await cached(b);
    assert.deepEqual(await readBack(ca, 0, 16 * BS), parent.subarray(0, 16 * BS));
    await cache.log.quiesce();
    assert.deepEqual(await readBack(cb, 0, 8 * BS), parent.subarray(0, 8 * BS));
    // An unaligned read spanning blocks takes the other path (readThrough).
    assert.deepEqual(await readBack(cb, 8 * BS + 512, 4 * BS), parent.subarray(8 * BS + 512, 12 * BS + 512));
    assert.equal(b.parentBytesRead, 0);
    const st = cache.stats();
    assert.equal(st.volumes.b.sharedReads, 13);
    assert.equal(st.volumes.b.sharedHits, 13);
    assert.equal(st.volumes.b.reads, 0);
    assert.equal(st.volumes.a.sharedReads, 16);
    assert.equal(st.volumes.a.sharedHits, 0);
    const p = st.volumes['rbd-parent:test'];
    assert.equal(p.reads, 29);
    assert.equal(p.readHits, 13);
    assert.equal(p.blocks, 16);
    // Beyond the overlap each clone has its own blocks.
    await readBack(ca, 40 * BS, 4 * BS);
    await cache.log.quiesce();
    await readBack(cb, 40 * BS, 4 * BS);
    assert.equal(cache.stats().volumes.b.readHits, 0);
  });

  it('a write, discard or write-zeroes to one clone never changes what the other reads', async () => {
    const ca = await cached(a);
    const cb = await cached(b);
    await readBack(ca, 0, 32 * BS);
    await cache.log.quiesce();
    const w = new Uint8Array(BS);
    stampBytes(w, 5 * BS, 7);
    await ca.write(5 * BS, [w]);
    await ca.discard(9 * BS, 2 * BS);
    await ca.writeZeroes(16 * BS, UNIT, false);
    await cache.log.quiesce();
    for (const s of [ca, cb]) {
      const store = s === ca ? a : b;
      assert.deepEqual(await readBack(s, 0, 32 * BS), store.content(0, 32 * BS), `clone ${store.name}`);
    }
    assert.deepEqual(await readBack(cb, 0, 32 * BS), parent.subarray(0, 32 * BS));
    // The rest of a's units 1, 2 and 4 (copied up) are a's own now; its unit 0 still shared.
    const before = a.parentBytesRead;
    await readBack(ca, 0, 4 * BS);
    assert.equal(a.parentBytesRead, before);
    assert.equal(cache.stats().volumes['rbd-parent:test'].invalidateHits, 0);
  });

  it('a read racing a write to another block of its unit inserts the parent data only', async () => {
    const ca = await cached(a);
    const cb = await cached(b);
    const held = gate();
    a.delay = () => held.promise;
    const reading = readBack(ca, 2 * BS, BS);
    const w = new Uint8Array(BS);
    stampBytes(w, 2 * BS, 9);
    const w2 = new Uint8Array(BS);
    stampBytes(w2, 3 * BS, 9);
    // Block 3 (same unit) and block 2 itself: the read is poisoned; then block 1 alone.
    const writes = [ca.write(3 * BS, [w2]), ca.write(2 * BS, [w])];
    held.resolve();
    await Promise.all([reading, ...writes]);
    a.delay = () => Promise.resolve();
    await cache.log.quiesce();
    assert.deepEqual(await readBack(cb, 0, 4 * BS), parent.subarray(0, 4 * BS));
    assert.deepEqual(await readBack(ca, 0, 4 * BS), a.content(0, 4 * BS));
  });

  it('a miss of blocks of both keys that a write poisons gives up each key run\'s insertion once and serves the read', async () => {
    const ca = await cached(a);
    // Unit 1 (blocks 4..7) becomes a's own; block 3 (unit 0) still reads the parent.
    const w = new Uint8Array(BS);
    stampBytes(w, 5 * BS, 3);
    await ca.write(5 * BS, [w]);
    const held = gate();
    a.delay = (kind) => (kind === 'read' ? held.promise : Promise.resolve());
    // Blocks 3 and 4: one backing read, two key runs to insert.
    const reading = readBack(ca, 3 * BS, 2 * BS);
    await new Promise((r) => setImmediate(r));
    const w4 = new Uint8Array(BS);
    stampBytes(w4, 4 * BS, 4);
    await ca.write(4 * BS, [w4]);
    held.resolve();
    assert.deepEqual(await reading, a.content(3 * BS, 2 * BS));
    a.delay = () => Promise.resolve();
    await cache.log.quiesce();
    assert.deepEqual(await readBack(ca, 0, 8 * BS), a.content(0, 8 * BS));
  });

  it('a clone missing blocks another clone is reading takes that read instead of reading them again', async () => {
    const ca = await cached(a);
    const cb = await cached(b);
    const held = gate();
    a.delay = () => held.promise;
    const ra = readBack(ca, 0, 8 * BS);
    // Let a's lookup finish and its backing read start (it waits on `held`).
    await new Promise((r) => setImmediate(r));
    const rb = readBack(cb, 4 * BS, 8 * BS);
    await new Promise((r) => setImmediate(r));
    held.resolve();
    assert.deepEqual(await ra, parent.subarray(0, 8 * BS));
    assert.deepEqual(await rb, parent.subarray(4 * BS, 12 * BS));
    // b read only blocks 8..11 itself.
    assert.equal(b.parentBytesRead, 4 * BS);
    assert.equal(a.parentBytesRead, 8 * BS);
  });

  it('a borrowed read poisoned by a write of the reading clone is read again by the borrower', async () => {
    const ca = await cached(a);
    const cb = await cached(b);
    const held = gate();
    // a's read is held; its write (block 1) lands on the store before the read takes its bytes.
    a.delay = (kind) => (kind === 'read' ? held.promise : Promise.resolve());
    const ra = readBack(ca, 0, 4 * BS);
    await new Promise((r) => setImmediate(r));
    const rb = readBack(cb, 0, 4 * BS);
    const w = new Uint8Array(BS);
    stampBytes(w, BS, 8);
    await ca.write(BS, [w]);
    held.resolve();
    await ra;
    assert.deepEqual(await rb, parent.subarray(0, 4 * BS));
    assert.equal(b.parentBytesRead, 4 * BS);
    await cache.log.quiesce();
    assert.deepEqual(await readBack(cb, 0, 4 * BS), parent.subarray(0, 4 * BS));
    assert.deepEqual(await readBack(ca, 0, 4 * BS), a.content(0, 4 * BS));
  });

  const clonesSoak = seededRunsFromEnv(CLONES_ENV, 300);
  const clonesRuns = clonesSoak ?? [{ seed: 15, size: 300 }];
  for (const run of clonesRuns) {
    it(`randomized: interleaved operations on two clones always read what each clone holds (seed ${run.seed}, ${run.size} rounds)`, async function () {
      this.timeout(60_000 + run.size * 200);
      const random = rng(run.seed);
      const where = (round: number): string => `round ${round} (${rerun(CLONES_ENV, run, 'dist/test/cache/shared-keys.test.js')})`;
      const clones = [a, b];
      const stores = [await cached(a), await cached(b)];
      for (const c of clones) c.delay = () => new Promise((r) => (random() < 0.5 ? setImmediate(r) : queueMicrotask(r)));
      for (let round = 0; round < run.size; round++) {
        // Up to 4 operations at once, write-like ones on distinct blocks per clone.
        const busy = [new Set<number>(), new Set<number>()];
        const ops: Promise<unknown>[] = [];
        for (let i = 0; i < 4; i++) {
          const c = Math.floor(random() * 2);
          const first = Math.floor(random() * BLOCKS);
          const n = 1 + Math.floor(random() * Math.min(6, BLOCKS - first));
          const kind = random();
          const s = stores[c];
          if (kind < 0.6) {
            ops.push(readBack(s, first * BS, n * BS));
            continue;
          }
          let free = true;
          for (let k = first; k < first + n; k++) if (busy[c].has(k)) free = false;
          if (!free) continue;
          for (let k = first; k < first + n; k++) busy[c].add(k);
          if (kind < 0.85) {
            const d = new Uint8Array(n * BS);
            stampBytes(d, first * BS, round + 2);
            ops.push(s.write(first * BS, [d]));
          } else if (kind < 0.93) {
            ops.push(s.discard(first * BS, n * BS));
          } else {
            ops.push(s.writeZeroes(first * BS, n * BS, true));
          }
        }
        await Promise.all(ops);
        if (round % 10 === 0) await cache.log.quiesce();
        const c = Math.floor(random() * 2);
        const first = Math.floor(random() * BLOCKS);
        const n = 1 + Math.floor(random() * Math.min(8, BLOCKS - first));
        assert.deepEqual(await readBack(stores[c], first * BS, n * BS), clones[c].content(first * BS, n * BS), where(round));
      }
      for (let c = 0; c < 2; c++) assert.deepEqual(await readBack(stores[c], 0, VOL), clones[c].content(0, VOL));
      const st = cache.stats();
      assert.ok(st.volumes.a.sharedReads + st.volumes.b.sharedReads > 0, 'parent blocks were read');
      // The CI run also hits blocks the other clone cached; a soak's seed may happen not to.
      if (clonesSoak === null) assert.ok(st.volumes.a.sharedHits + st.volumes.b.sharedHits > 0);
    });
  }

  it('a warm restart keeps the parent blocks; a clone written offline reads its own data', async () => {
    let ca = await cached(a);
    let cb = await cached(b);
    await readBack(ca, 0, 32 * BS);
    await cache.log.quiesce();
    await ca.close();
    await cb.close();
    await cache.close();
    // Offline: someone else writes a's block 6 (unit 1 is copied up).
    const w = new Uint8Array(BS);
    stampBytes(w, 6 * BS, 5);
    await a.write(6 * BS, [w]);
    await openCache();
    assert.ok(cache.warm);
    ca = await cached(a);
    cb = await cached(b);
    assert.deepEqual(await readBack(cb, 0, 32 * BS), parent.subarray(0, 32 * BS));
    assert.equal(b.parentBytesRead, 0);
    assert.equal(cache.stats().volumes.b.sharedHits, 32);
    assert.deepEqual(await readBack(ca, 0, 32 * BS), a.content(0, 32 * BS));
    assert.deepEqual((await readBack(ca, 6 * BS, BS)).subarray(0, BS), w);
  });

  it("blocks a clone cached under its own key for a unit that reads the parent again are dropped at open", async () => {
    const ca = await cached(a);
    const w = new Uint8Array(UNIT);
    stampBytes(w, 0, 4);
    await ca.write(0, [w]);
    await cache.log.quiesce();
    assert.equal(cache.stats().volumes.a.blocks, 4);
    await ca.close();
    // Offline, the unit goes back to reading the parent (as after an RBD snapshot rollback).
    a.owned[0] = 0;
    const again = await cached(a);
    assert.equal(cache.stats().volumes.a.blocks, 0);
    assert.deepEqual(await readBack(again, 0, UNIT), parent.subarray(0, UNIT));
  });

  for (const [what, sharedBytes, shareParent, shares] of [
    ['shareParent: false', OVERLAP, false, false],
    ['less than one block shared', BS - 512, true, false],
    ['exactly one block shared', BS, true, true],
  ] as const) {
    it(`${what}: the other clone's read of block 0 ${shares ? 'hits the block one clone read' : 'is its own miss'}`, async () => {
      const open = (c: CloneStore): Promise<CachedStore> => {
        const sharing: SharedBlocks = { ...c.sharing, sharedBytes };
        Object.defineProperty(c, 'sharing', { value: sharing });
        return CachedStore.open({ backing: c, cache, name: c.name, readAhead: 0, exclusive: true, shareParent });
      };
      const ca = await open(a);
      const cb = await open(b);
      assert.deepEqual(await readBack(ca, 0, BS), parent.subarray(0, BS));
      await cache.log.quiesce();
      assert.deepEqual(await readBack(cb, 0, BS), parent.subarray(0, BS));
      assert.equal(b.parentBytesRead, shares ? 0 : BS);
      assert.equal(cache.stats().volumes.b.sharedHits, shares ? 1 : 0);
      // A clone that keys nothing by its parent registers no entry for it.
      assert.equal('rbd-parent:test' in cache.stats().volumes, shares);
    });
  }

  it('a clone reading ahead inserts parent blocks under the parent key (hits for the other clone), the rest under its own', async () => {
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 8, exclusive: true });
    const cb = await cached(b);
    // A stream of 4-block reads from block 20: at 16 blocks it reads 36..43 ahead, across the overlap's end (block 40).
    for (let k = 20; k < 36; k += 4) assert.deepEqual(await readBack(ca, k * BS, 4 * BS), parent.subarray(k * BS, (k + 4) * BS));
    await ca.drain();
    await cache.log.quiesce();
    const keyed = (volume: number): number[] => {
      const out: number[] = [];
      for (let k = 30; k < 52; k++) if (cache.map.peek(volume, k) >= 0) out.push(k);
      return out;
    };
    // One read ahead of 36..43: 36..39 under the parent's key, 40..43 (past the overlap) under a's.
    assert.equal(a.parentBytesRead, 20 * BS);
    assert.deepEqual(keyed(ca.volume), [40, 41, 42, 43]);
    let st = cache.stats().volumes;
    assert.deepEqual([st.a.prefetched, st['rbd-parent:test'].prefetched], [4, 4]);
    // b finds 36..39 read ahead by a; a its own 40..43.
    assert.deepEqual(await readBack(cb, 36 * BS, 4 * BS), parent.subarray(36 * BS, 40 * BS));
    assert.equal(b.parentBytesRead, 0);
    assert.deepEqual(await readBack(ca, 40 * BS, 4 * BS), a.own.subarray(40 * BS, 44 * BS));
    st = cache.stats().volumes;
    assert.deepEqual([st.b.sharedHits, st.a.readHits, st.a.prefetchHits, st['rbd-parent:test'].prefetchHits], [4, 4, 4, 4]);
  });

  it("a clone whose parent's name is taken by a volume fails to open and leaves its own name free", async () => {
    const taken = cache.registerVolume('rbd-parent:test', 'some-volume', VOL);
    await assert.rejects(CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true }), /a volume of that name exists/);
    cache.unregisterVolume(taken, 'some-volume');
    cache.map.dropVolume(taken);
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true, shareParent: false });
    assert.deepEqual(await readBack(ca, 0, BS), parent.subarray(0, BS));
  });

  it("a clone's missing run after a hit is inserted under its blocks' own keys: the other clone never reads a written block as the parent's", async () => {
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true, mode: 'writearound' });
    const cb = await cached(b);
    // Unit 2 (blocks 8..11) becomes a's own; block 7 (unit 1) still reads the parent, cached under its key.
    await ca.write(8 * BS, [new Uint8Array(BS).fill(0xab)]);
    assert.deepEqual(await readBack(ca, 7 * BS, BS), parent.subarray(7 * BS, 8 * BS));
    await ca.drain();
    await cache.log.quiesce();
    // Block 7 hits (parent key), 8..9 miss (a's key).
    assert.deepEqual(await readBack(ca, 7 * BS, 3 * BS), a.content(7 * BS, 3 * BS));
    await ca.drain();
    await cache.log.quiesce();
    assert.deepEqual(await readBack(cb, 8 * BS, 2 * BS), parent.subarray(8 * BS, 10 * BS));
  });

  it("a clone's miss of blocks of two keys: each key's run inserted under its key, joined by a read of the second run, a racing write poisons its run", async () => {
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true, mode: 'writearound' });
    const cb = await cached(b);
    // Unit 2 (blocks 8..11) becomes a's own: blocks 6..9 are two key runs, the parent's 6..7, a's 8..9.
    const w8 = new Uint8Array(BS);
    stampBytes(w8, 8 * BS, 3);
    await ca.write(8 * BS, [w8]);
    const held = gate();
    let reads = 0;
    a.delay = (kind) => (kind === 'read' ? (reads++, held.promise) : Promise.resolve());
    const whole = readBack(ca, 6 * BS, 4 * BS);
    await waitFor(() => reads === 1, "a's backing read of blocks 6..9");
    // Blocks 8..9 are being read (the second key run of that read): taken from it.
    const joined = readBack(ca, 8 * BS, 2 * BS);
    held.resolve();
    assert.deepEqual(await whole, a.content(6 * BS, 4 * BS));
    assert.deepEqual(await joined, a.content(8 * BS, 2 * BS));
    assert.equal(reads, 1, 'blocks 8..9 read once');
    assert.equal(cache.stats().volumes.a.readsJoined, 2);
    a.delay = (kind) => (kind === 'read' && reads++, Promise.resolve());
    await ca.drain();
    await cache.log.quiesce();
    // 6..7 cached under the parent's key (hits for b), 8..9 under a's.
    assert.deepEqual(await readBack(cb, 6 * BS, 2 * BS), parent.subarray(6 * BS, 8 * BS));
    assert.equal(b.parentBytesRead, 0);
    assert.deepEqual(await readBack(ca, 6 * BS, 4 * BS), a.content(6 * BS, 4 * BS));
    assert.equal(reads, 1, 'blocks 6..9 all hits');
    // Block 9 invalidated (a write), read again after hits 6..8, and a write lands before that
    // read's insertion of 9 is placed (insertions wait for a check phase): a write of block 9
    // poisons it, a write of block 5 (another unit) does not.
    for (const [gen, target, inserted] of [[4, 9, false], [5, 5, true]] as const) {
      await ca.write(9 * BS, [new Uint8Array(BS).fill(gen)]);
      assert.deepEqual(await readBack(ca, 6 * BS, 4 * BS), a.content(6 * BS, 4 * BS));
      const w = new Uint8Array(BS);
      stampBytes(w, target * BS, gen);
      await ca.write(target * BS, [w]);
      await ca.drain();
      await cache.log.quiesce();
      const before: number = reads;
      assert.deepEqual(await readBack(ca, 9 * BS, BS), a.content(9 * BS, BS), `block 9 after the write of block ${target}`);
      assert.equal(reads - before, inserted ? 0 : 1, `block 9 ${inserted ? 'inserted' : 'not inserted'} by the read the write of ${target} raced`);
      assert.deepEqual(await readBack(ca, 0, 12 * BS), a.content(0, 12 * BS));
    }
  });

  it("a clone's miss of its own block never takes the other clone's read of the parent's block of that number", async () => {
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true, mode: 'writearound' });
    const cb = await cached(b);
    const w8 = new Uint8Array(BS);
    stampBytes(w8, 8 * BS, 3);
    await ca.write(8 * BS, [w8]);
    const held = gate();
    let reads = 0;
    b.delay = (kind) => (kind === 'read' ? (reads++, held.promise) : Promise.resolve());
    // b reads the parent's blocks 8..9; a then misses 7 (the parent's) and 8..9 (its own).
    const rb = readBack(cb, 8 * BS, 2 * BS);
    await waitFor(() => reads === 1, "b's backing read of blocks 8..9");
    let aReads = 0;
    a.delay = (kind) => (kind === 'read' && aReads++, Promise.resolve());
    const ra = readBack(ca, 7 * BS, 3 * BS);
    // a's backing read is issued once its misses were looked up among the reads in flight.
    await waitFor(() => aReads === 1, "a's backing read");
    held.resolve();
    assert.deepEqual(await ra, a.content(7 * BS, 3 * BS));
    assert.deepEqual(await rb, parent.subarray(8 * BS, 10 * BS));
  });

  it("a clone sharing less than one block with its parent opens even when the parent's name is taken (it keys nothing by the parent)", async () => {
    cache.registerVolume('rbd-parent:test', 'some-volume', VOL);
    Object.defineProperty(a, 'sharing', { value: { ...a.sharing, sharedBytes: BS - 512 } });
    const ca = await CachedStore.open({ backing: a, cache, name: a.name, readAhead: 0, exclusive: true });
    assert.deepEqual(await readBack(ca, 0, BS), parent.subarray(0, BS));
  });
});
