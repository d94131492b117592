/** Test helpers for the cache: seeded PRNG, in-memory backing store, faulty IoEngine, drawing, recovered counts, address-map layout check. */
import { strict as assert } from 'node:assert';
import type { BackingStore } from '../../src/backing/backing-store';
import { type IoEngine, readvCheckedOf, readvThenOf, type SyncRegion, syncRegionOf } from '../../src/io/io-engine';
import { VhostError } from '../../src/native/errors';
import { gatherIov, iovLength, scatterIov } from '../../src/util/iov';
import { CacheMap } from '../../src/cache/cache-map';
import type { AddressMap } from '../../src/cache/address-map';
import { type BlockDescriptorArray, FLAG_RESERVED, FLAG_SHADOW } from '../../src/cache/bda';

/** mulberry32: deterministic 32-bit PRNG. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A held promise: resolve() releases whoever awaits `promise`. */
export function gate(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * In-memory BackingStore. `readHook`/`writeHook`, when set, are awaited before the data is
 * copied (reads) or applied (writes): tests use them to hold an operation in flight.
 */
export class MemStore implements BackingStore {
  readonly kind = 'mem';
  readonly readOnly = false;
  /** Like a file (true) or a block device / NBD export (false); tests set it. */
  changesVisible = true;
  readonly features = { flush: true, discard: true, writeZeroes: true };
  readonly data: Uint8Array;
  identity: string;
  readHook: ((offset: number, len: number) => Promise<void>) | null = null;
  writeHook: ((offset: number, len: number) => Promise<void>) | null = null;
  reads = 0;
  bytesRead = 0;

  constructor(
    readonly size: number,
    identity = 'mem-1',
  ) {
    this.data = new Uint8Array(size);
    this.identity = identity;
  }

  async read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    const len = iovLength(bufs);
    this.reads++;
    this.bytesRead += len;
    await Promise.resolve();
    if (this.readHook) await this.readHook(offset, len);
    scatterIov(this.data, offset, bufs);
  }

  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    const len = iovLength(bufs);
    await Promise.resolve();
    if (this.writeHook) await this.writeHook(offset, len);
    gatherIov(bufs, this.data, offset);
  }

  get location(): string {
    return `mem:${this.identity}`;
  }

  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }

  async flush(): Promise<void> {}

  async discard(offset: number, length: number): Promise<void> {
    await Promise.resolve();
    if (this.writeHook) await this.writeHook(offset, length);
    this.data.fill(0, offset, offset + length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    return this.discard(offset, length);
  }

  async close(): Promise<void> {}
}

/** IoEngine wrapper failing reads, writes or write-out starts on demand (EIO); counts reads, writes and fdatasyncs. */
export class FaultyEngine implements IoEngine {
  readonly kind: IoEngine['kind'];
  failReads = false;
  failWrites = false;
  /** Probability in [0, 1) of failing each read / write, drawn from `random`. */
  readFailRate = 0;
  writeFailRate = 0;
  failWriteouts = false;
  reads = 0;
  writes = 0;
  fdatasyncs = 0;
  /** startWriteout() calls, in order: [offset, length]. */
  readonly writeouts: [number, number][] = [];
  /** When set, awaited before a read is passed on: tests hold a read in flight with it. */
  readHook: ((offset: number, len: number) => Promise<void>) | null = null;

  constructor(
    private readonly inner: IoEngine,
    private readonly random: () => number = Math.random,
  ) {
    this.kind = inner.kind;
  }

  readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact?: boolean): Promise<void> {
    this.reads++;
    if (this.failReads || (this.readFailRate > 0 && this.random() < this.readFailRate)) {
      return Promise.reject(new VhostError('injected read error', 'EIO'));
    }
    const hook = this.readHook;
    if (hook) {
      return hook(offset, iovLength(bufs)).then(() => this.inner.readv(fd, bufs, offset, exact));
    }
    return this.inner.readv(fd, bufs, offset, exact);
  }

  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
    readvThenOf(this, fd, bufs, offset, done);
  }

  readvChecked(fd: number, bufs: readonly Uint8Array[], offset: number, blockSize: number, crcs: Uint32Array, at: number, done: (err: Error | null, ok: boolean) => void): void {
    readvCheckedOf(this, fd, bufs, offset, blockSize, crcs, at, done);
  }

  writev(fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> {
    this.writes++;
    if (this.failWrites || (this.writeFailRate > 0 && this.random() < this.writeFailRate)) {
      return Promise.reject(new VhostError('injected write error', 'EIO'));
    }
    return this.inner.writev(fd, bufs, offset);
  }

  writeSync(fd: number, bytes: Uint8Array, offset: number): void {
    this.writes++;
    if (this.failWrites || (this.writeFailRate > 0 && this.random() < this.writeFailRate)) {
      throw new VhostError('injected write error', 'EIO');
    }
    this.inner.writeSync(fd, bytes, offset);
  }

  /** Through writeSync, so its injected failures apply. */
  syncRegion(fd: number, offset: number, length: number): SyncRegion {
    return syncRegionOf(this, fd, offset, length);
  }

  fdatasync(fd: number): Promise<void> {
    this.fdatasyncs++;
    return this.inner.fdatasync(fd);
  }

  startWriteout(fd: number, offset: number, length: number): Promise<void> {
    this.writeouts.push([offset, length]);
    if (this.failWriteouts) return Promise.reject(new VhostError('injected write-out error', 'EIO'));
    return this.inner.startWriteout(fd, offset, length);
  }

  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    return this.inner.fallocate(fd, mode, offset, length);
  }

  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void> {
    return this.inner.blockRange(fd, op, offset, length);
  }

  close(): void {
    this.inner.close();
  }
}

/**
 * Draws the slots of a cache map, `perRow` slots per line: `..` = invalid, otherwise the block
 * number (volume 0) or `v:block`, `*` = REF bit set, `d` = dirty (write-back); `S` / `R` = a
 * SHADOW / RESERVED slot (bda.ts); `>` marks the hand.
 */
export function drawSlots(m: CacheMap, perRow: number): string {
  const rows: string[] = [];
  for (let r = 0; r < m.slots; r += perRow) {
    const cells: string[] = [];
    for (let i = r; i < Math.min(r + perRow, m.slots); i++) {
      const f = m.bda.flags[i];
      let c = (f & FLAG_SHADOW) !== 0 ? 'S' : (f & FLAG_RESERVED) !== 0 ? 'R' : '..';
      if (m.bda.isValid(i)) {
        const v = m.bda.volumeOf(i);
        c = (v === 0 ? '' : `${v}:`) + String(m.bda.blockOf(i)) + '*'.repeat(m.count(i)) + (m.bda.isDirty(i) ? 'd' : '');
      }
      cells.push((i === m.hand ? '>' : ' ') + c.padEnd(4));
    }
    rows.push(cells.join('').trimEnd());
  }
  return rows.join('\n');
}

/**
 * Asserts that a map adopted with the counts of its builder (recovery.ts) counts what a map
 * counting its BDA and table finds: entries, valid slots per segment and per volume, the dirty
 * slots of each volume (in slot order).
 */
export function assertCountsAgree(m: CacheMap, at: string): void {
  const counted = new CacheMap(m.slots, { segmentBlocks: m.segmentBlocks, ghostEntries: 0 }, m.bda, m.map.table);
  const segValid = (x: CacheMap) => [...(x as unknown as { segValid: Uint16Array }).segValid];
  assert.equal(m.map.size, counted.map.size, `${at}: address map entries`);
  assert.deepEqual(segValid(m), segValid(counted), `${at}: valid slots per segment`);
  assert.deepEqual([...m.volumeBlocks], [...counted.volumeBlocks], `${at}: blocks per volume`);
  const dirty = (x: CacheMap) => [...x.dirty].map(([v, slots]) => [v, [...slots.keys()]]).filter(([, slots]) => (slots as number[]).length > 0);
  assert.deepEqual(dirty(m), dirty(counted), `${at}: dirty slots per volume`);
  assert.equal(m.dirtyTotal, counted.dirtyTotal, `${at}: dirty blocks`);
}

/**
 * Checks every entry of the table against the BDA: it names a valid slot of its own key, once;
 * its displacement field is min(distance from its home, distMax); every position from its home
 * up to it holds an entry displaced at least as far as it would be there (Robin Hood: what
 * lets a lookup stop early). Returns the table drawn as `slot/displacement` cells ('.' empty).
 */
export function checkTable(map: AddressMap, bda: BlockDescriptorArray): string {
  const { table, capacity: cap } = map;
  const seen = new Set<number>();
  const cells: string[] = [];
  for (let p = 0; p < cap; p++) {
    const e = table[p];
    if (e === -1) {
      cells.push('.');
      continue;
    }
    const s = map.slotOf(e);
    assert.ok(s < bda.size && bda.isValid(s), `position ${p}: slot ${s} not valid`);
    assert.ok(!seen.has(s), `slot ${s} twice`);
    seen.add(s);
    const h = map.home(bda.keyLo[s], bda.keyHi[s]);
    const d = (p - h + cap) % cap;
    assert.equal(e >>> map.slotBits, Math.min(d, map.distMax), `position ${p}: displacement field`);
    assert.equal(map.distanceAt(p, e), d);
    for (let k = 0; k < d; k++) {
      const q = (h + k) % cap;
      assert.notEqual(table[q], -1, `hole at ${q} inside the run of slot ${s}`);
      assert.ok(map.distanceAt(q, table[q]) >= k, `position ${q} displaced less than slot ${s} would be there`);
    }
    cells.push(`${s}/${d}`);
  }
  assert.equal(map.size, seen.size);
  return cells.join(' ');
}
