/**
 * Address map: (volume id, block number) -> BDA index.
 *
 * Memory layout: one Int32Array `table` of `capacity` entries, each EMPTY (-1) or a valid BDA
 * slot with its displacement: entry = (displacement << slotBits) | slot, where slotBits is the
 * bit length of the slot count (so a slot index never has all its bits set and -1 is never an
 * entry) and the displacement (distance from the key's home position, wrapping at capacity)
 * takes the 32 - slotBits bits left, saturating at distMax (= "distMax or more": the exact value
 * is then recomputed from the key). No key is stored: it is read back from the BDA. The map
 * costs 4 / loadFactor bytes per cache block (4.71 B at the default 0.85).
 * capacity = ceil(slots / loadFactor) + 1, home = (hash >>> 1) % capacity.
 *
 * Open addressing, linear probing with Robin Hood insertion (an entry displaced less than the
 * one being placed gives up its position and is placed further on; ties keep their place), so
 * along any probe run the displacements never drop by more than one from one entry to the next
 * unless a new run starts: a lookup stops at an empty entry or at an entry displaced less than
 * the key would be there, and compares keys (a BDA read) only for entries of its own home.
 * Deletion by backward shift (no tombstones): the entries after the removed one move back by
 * one, displacement minus one, until an empty entry or one at its home. Inserting and removing
 * read no key unless a displacement saturated, so a high load factor costs probe length in a
 * table read sequentially, not random reads of the BDA.
 */
import type { BlockDescriptorArray } from './bda';

export const DEFAULT_LOAD_FACTOR = 0.85;
/** Lowest load factor a cache may use: the on-device metadata area is sized for its table. */
export const MIN_LOAD_FACTOR = 0.5;
const EMPTY = -1;
/**
 * log2 of the homes per range of MapBuilder's sort: a range's arrays (~1 MiB) stay in the CPU
 * cache, and a home's offset in its range fits 16 bits.
 */
const BUILD_BITS = 16;
const BUILD_SPAN = 2 ** BUILD_BITS;

/** 32-bit hash of a key (block number, volume id) (murmur3 finalizer over both). */
export function hashKey(lo: number, hi: number): number {
  let h = (lo ^ Math.imul(hi, 0x9e3779b1)) | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

export class AddressMap {
  readonly table: Int32Array;
  readonly capacity: number;
  /** Low bits of an entry holding its slot. */
  readonly slotBits: number;
  /** Largest displacement an entry records exactly (the field's all-ones value means "or more"). */
  readonly distMax: number;
  private readonly slotMask: number;
  private readonly bda: BlockDescriptorArray;
  private entries = 0;

  /**
   * `table` (same capacity) is adopted as is, e.g. loaded from metadata; a number is the
   * capacity of a new empty table (loadFactor is then unused). `distBits` narrows the
   * displacement field below the 32 - slotBits bits available (tests: saturation). `entries`:
   * the entries `table` holds, when known (not counted then; recovery.ts: a table its threads
   * are about to fill, adopted empty, finishBuilt() sets the count).
   */
  constructor(bda: BlockDescriptorArray, loadFactor = DEFAULT_LOAD_FACTOR, table?: Int32Array | number, distBits = 32, entries?: number) {
    this.bda = bda;
    this.capacity = typeof table === 'number' ? table : (table?.length ?? AddressMap.capacityFor(bda.size, loadFactor));
    this.slotBits = 32 - Math.clz32(bda.size);
    this.slotMask = 2 ** this.slotBits - 1;
    this.distMax = 2 ** Math.min(distBits, 32 - this.slotBits) - 1;
    if (table instanceof Int32Array && entries !== undefined) {
      this.table = table;
      this.entries = entries;
    } else if (table instanceof Int32Array) {
      this.table = table;
      let n = 0;
      for (let i = 0; i < table.length; i++) if (table[i] !== EMPTY) n++;
      this.entries = n;
    } else {
      this.table = new Int32Array(this.capacity).fill(EMPTY);
    }
  }

  static capacityFor(slots: number, loadFactor = DEFAULT_LOAD_FACTOR): number {
    return Math.ceil(slots / loadFactor) + 1;
  }

  get size(): number {
    return this.entries;
  }

  /** Table position where the search for a key starts. */
  home(lo: number, hi: number): number {
    return (hashKey(lo, hi) >>> 1) % this.capacity;
  }

  /** Slot held by a (non-empty) entry. */
  slotOf(e: number): number {
    return e & this.slotMask;
  }

  /** Displacement of entry `e` at position p, exact (recomputed from its key when saturated). */
  distanceAt(p: number, e: number): number {
    const d = e >>> this.slotBits;
    if (d < this.distMax) return d;
    const s = e & this.slotMask;
    const h = this.home(this.bda.keyLo[s], this.bda.keyHi[s]);
    return p >= h ? p - h : p + this.capacity - h;
  }

  private entry(slot: number, d: number): number {
    return (Math.min(d, this.distMax) << this.slotBits) | slot;
  }

  /** Table position holding key (lo, hi), or -1. */
  private position(lo: number, hi: number): number {
    const { table, capacity, slotBits, slotMask, distMax } = this;
    const { keyLo, keyHi } = this.bda;
    let p = this.home(lo, hi);
    for (let d = 0; ; d++) {
      const e = table[p];
      if (e === EMPTY) return -1;
      let ed = e >>> slotBits;
      if (ed === distMax && d >= distMax) ed = this.distanceAt(p, e);
      if (ed < d) return -1;
      if (ed === d) {
        const s = e & slotMask;
        if (keyLo[s] === lo && keyHi[s] === hi) return p;
      }
      p = p + 1 === capacity ? 0 : p + 1;
    }
  }

  /** BDA index of (volume, block), or -1. */
  get(volume: number, block: number): number {
    const p = this.position(block, volume);
    return p < 0 ? -1 : this.table[p] & this.slotMask;
  }

  /**
   * Places slot `cur` at position p where it is displaced by d (p on its probe run, the key not
   * in the map), moving the entries it displaces further on.
   */
  private place(cur: number, p: number, d: number): void {
    const { table, capacity, slotBits, distMax } = this;
    for (;;) {
      const e = table[p];
      if (e === EMPTY) {
        table[p] = this.entry(cur, d);
        this.entries++;
        return;
      }
      let ed = e >>> slotBits;
      if (ed === distMax && d >= distMax) ed = this.distanceAt(p, e);
      if (ed < d) {
        table[p] = this.entry(cur, d);
        cur = e & this.slotMask;
        d = ed;
      }
      p = p + 1 === capacity ? 0 : p + 1;
      d++;
    }
  }

  /**
   * Adds BDA index `idx`, whose key is already written in the BDA. The key must not be in the
   * map (callers remove the previous slot of a key first).
   */
  add(idx: number): void {
    this.place(idx, this.home(this.bda.keyLo[idx], this.bda.keyHi[idx]), 0);
  }

  /**
   * Adds BDA index `idx` (its key already written in the BDA) unless the key is in the map:
   * returns -1 when added, else the index holding the key (nothing changed). One probe.
   */
  addUnlessPresent(idx: number): number {
    const { table, capacity, slotBits, slotMask, distMax } = this;
    const { keyLo, keyHi } = this.bda;
    const lo = keyLo[idx];
    const hi = keyHi[idx];
    let p = this.home(lo, hi);
    for (let d = 0; ; d++) {
      const e = table[p];
      let ed = e === EMPTY ? -1 : e >>> slotBits;
      if (ed === distMax && d >= distMax) ed = this.distanceAt(p, e);
      // Empty, or an entry displaced less than the key would be: the key is not further on.
      if (ed < d) {
        this.place(idx, p, d);
        return -1;
      }
      if (ed === d) {
        const s = e & slotMask;
        if (keyLo[s] === lo && keyHi[s] === hi) return s;
      }
      p = p + 1 === capacity ? 0 : p + 1;
    }
  }

  /**
   * Places every index added to `builders` (built over this map's capacity) into this EMPTY
   * map: one pass per range of homes in table order (RangePlacer), then finishBuilt(). A key met
   * twice: `pick(a, b)` returns the index that stays, the other is left out of the map (the
   * caller clears it). `late`: more indexes to add one by one (besides the builders' own).
   * recovery.ts runs the same steps spread over worker threads.
   */
  addBuilt(builders: readonly MapBuilder[], pick: (a: number, b: number) => number, late: readonly number[] = []): void {
    if (this.entries !== 0) throw new Error('AddressMap.addBuilt: the map is not empty');
    const placer = new RangePlacer(this.buildTarget());
    const twins: number[] = [];
    const rest = [...late, ...builders.flatMap((b) => b.late)];
    let placed = 0;
    for (let r = 0; r < rangesOf(this.capacity); r++) placed += placer.place(r, builders, rest, twins);
    this.finishBuilt(placed, twins, rest, pick);
  }

  /** What RangePlacer writes into: this map's table and layout, the BDA's keys. */
  buildTarget(): BuildTarget {
    return { table: this.table, capacity: this.capacity, slotBits: this.slotBits, distMax: this.distMax, keyLo: this.bda.keyLo, keyHi: this.bda.keyHi };
  }

  /**
   * Completes a map whose every range RangePlacer.place() filled (`placed` entries written):
   * each twin pair (the first index of a key placed in the table, another index of that key
   * placed after it) keeps pick()'s choice and the other is removed (backward shift); then each
   * `late` index is added one by one (wrapping), pick() deciding when its key is in the map.
   */
  finishBuilt(placed: number, twins: readonly number[], late: readonly number[], pick: (a: number, b: number) => number): void {
    this.entries = placed;
    /** Per first index of a key met twice: the index of that key in the map now. */
    const kept = new Map<number, number>();
    for (let i = 0; i < twins.length; i += 2) {
      const cur = kept.get(twins[i]) ?? twins[i];
      const keep = pick(cur, twins[i + 1]);
      this.remove(keep === cur ? twins[i + 1] : cur);
      kept.set(twins[i], keep);
    }
    for (const s of late) {
      const other = this.addUnlessPresent(s);
      if (other >= 0 && pick(other, s) === s) {
        this.remove(other);
        this.add(s);
      }
    }
  }

  /** Removes the entry of BDA index `idx` (its key still in the BDA). Returns false if absent. */
  remove(idx: number): boolean {
    const { table, capacity, slotBits, slotMask, distMax } = this;
    let hole = this.home(this.bda.keyLo[idx], this.bda.keyHi[idx]);
    for (let d = 0; ; d++) {
      const e = table[hole];
      if (e === EMPTY) return false;
      if ((e & slotMask) === idx) break;
      let ed = e >>> slotBits;
      if (ed === distMax && d >= distMax) ed = this.distanceAt(hole, e);
      if (ed < d) return false;
      hole = hole + 1 === capacity ? 0 : hole + 1;
    }
    // Backward shift: the entries after the hole move back by one until one sits at its home.
    for (;;) {
      const j = hole + 1 === capacity ? 0 : hole + 1;
      const e = table[j];
      if (e === EMPTY) break;
      const ed = this.distanceAt(j, e);
      if (ed === 0) break;
      table[hole] = this.entry(e & slotMask, ed - 1);
      hole = j;
    }
    table[hole] = EMPTY;
    this.entries--;
    return true;
  }

  clear(): void {
    this.table.fill(EMPTY);
    this.entries = 0;
  }

  get byteLength(): number {
    return this.table.byteLength;
  }
}

/** Ranges of BUILD_SPAN homes of a table of `capacity` positions. */
export function rangesOf(capacity: number): number {
  return Math.ceil(capacity / BUILD_SPAN);
}

/** A MapBuilder's memory (shared: recovery.ts fills builders on worker threads). */
export interface BuilderMemory {
  /** Indexes a range's region holds. */
  room: number;
  fill: SharedArrayBuffer;
  bySlot: SharedArrayBuffer;
  byKey: SharedArrayBuffer;
}

/**
 * Many keys added to an EMPTY map at once (recovery.ts), at the cost of a few sequential
 * passes: add() hashes each key once and sends (slot, home, hash bits) to the region of its
 * range of BUILD_SPAN homes (regions sized for the expected count of a range plus 8 standard
 * deviations; an index over its region's room waits in `late`); RangePlacer then places each
 * range of one or more builders (AddressMap.addBuilt, or recovery.ts's threads).
 * RAM: 8 bytes per index added (the regions are shared memory, touched as they fill: a builder
 * sized for more indexes than it gets costs address space only), plus under 1 MiB per placer.
 */
export class MapBuilder {
  /** Indexes over their range region's room: placed one by one after the ranges. */
  readonly late: number[] = [];
  readonly memory: BuilderMemory;
  private readonly capacity: number;
  private readonly room: number;
  /** Per range r: the next free position of its region [r * room, (r + 1) * room). */
  private readonly fill: Int32Array;
  private readonly bySlot: Int32Array;
  /** (home - its range's first home) << 16 | the hash's high 16 bits (equal home and bits: compare keys). */
  private readonly byKey: Uint32Array;

  /** For a map of `capacity` positions, room for `most` add() calls; or over `memory` (another thread's builder). */
  constructor(capacity: number, most: number, memory?: BuilderMemory) {
    this.capacity = capacity;
    const ranges = rangesOf(capacity);
    if (memory === undefined) {
      const mean = (most * Math.min(BUILD_SPAN, capacity)) / capacity;
      const room = Math.max(1, Math.min(most, Math.ceil(mean + 8 * Math.sqrt(mean) + 32)));
      memory = { room, fill: new SharedArrayBuffer(4 * ranges), bySlot: new SharedArrayBuffer(4 * ranges * room), byKey: new SharedArrayBuffer(4 * ranges * room) };
      this.fill = new Int32Array(memory.fill);
      for (let r = 0; r < ranges; r++) this.fill[r] = r * room;
    } else {
      this.fill = new Int32Array(memory.fill);
    }
    this.memory = memory;
    this.room = memory.room;
    this.bySlot = new Int32Array(memory.bySlot);
    this.byKey = new Uint32Array(memory.byKey);
  }

  /** Adds index `slot` holding key (lo = block, hi = volume); the key is also in the BDA. */
  add(slot: number, lo: number, hi: number): void {
    const h = hashKey(lo, hi);
    const home = (h >>> 1) % this.capacity;
    const r = home >>> BUILD_BITS;
    const at = this.fill[r];
    if (at === (r + 1) * this.room) {
      this.late.push(slot);
      return;
    }
    this.fill[r] = at + 1;
    this.bySlot[at] = slot;
    this.byKey[at] = ((home & (BUILD_SPAN - 1)) << 16) | (h >>> 16);
  }

  /** The indexes of range r: [from, to) of `bySlot`/`byKey` (RangePlacer). */
  region(r: number): { from: number; to: number; bySlot: Int32Array; byKey: Uint32Array } {
    return { from: r * this.room, to: this.fill[r], bySlot: this.bySlot, byKey: this.byKey };
  }
}

/** The table RangePlacer fills, its layout (AddressMap's) and the BDA's keys. */
export interface BuildTarget {
  table: Int32Array;
  capacity: number;
  slotBits: number;
  distMax: number;
  keyLo: Uint32Array;
  keyHi: Uint8Array;
}

/**
 * Places the indexes of one range of homes at a time (from every builder given) into the
 * table's window of that range, [r * BUILD_SPAN, (r + 1) * BUILD_SPAN): a counting sort by home
 * (in the CPU cache), then each index at the later of its home and the position after the
 * previous one (entries ascending by home with no gap inside a run are the Robin Hood layout:
 * nothing is displaced, no key read). An index whose position falls past the window goes to
 * `late` (so ranges are independent: threads place them in any order); an index of the same
 * home and hash bits as one placed before it is compared by key, and a key met twice is
 * reported in `twins` (both stay in the table until AddressMap.finishBuilt()). (Writing each
 * index straight to its position, without the sorted copy, measured slower: docs/benchmarks.md.)
 */
export class RangePlacer {
  private readonly t: BuildTarget;
  private readonly homeAt = new Int32Array(BUILD_SPAN + 1);
  /** A range's indexes and their byKey words, sorted by home (grown to the largest range). */
  private rSlot = new Int32Array(0);
  private rKey = new Uint32Array(0);

  constructor(target: BuildTarget) {
    this.t = target;
  }

  /**
   * Fills range r's window from `builders` (every position not written is EMPTY); returns the
   * entries written; pushes to `late` and `twins` (pairs: the first index of the key in the
   * table, the other).
   */
  place(r: number, builders: readonly MapBuilder[], late: number[], twins: number[]): number {
    const { table, capacity, slotBits, distMax, keyLo, keyHi } = this.t;
    const { homeAt } = this;
    const base = r * BUILD_SPAN;
    const limit = Math.min(base + BUILD_SPAN, capacity);
    table.fill(EMPTY, base, limit);
    // Counting sort by home.
    homeAt.fill(0);
    let m = 0;
    for (const b of builders) {
      const { from, to, byKey } = b.region(r);
      m += to - from;
      for (let j = from; j < to; j++) homeAt[(byKey[j] >>> 16) + 1]++;
    }
    for (let k = 0; k < BUILD_SPAN; k++) homeAt[k + 1] += homeAt[k];
    if (this.rSlot.length < m) {
      this.rSlot = new Int32Array(m);
      this.rKey = new Uint32Array(m);
    }
    const { rSlot, rKey } = this;
    for (const b of builders) {
      const { from, to, bySlot, byKey } = b.region(r);
      for (let j = from; j < to; j++) {
        const key = byKey[j];
        const at = homeAt[key >>> 16]++;
        rSlot[at] = bySlot[j];
        rKey[at] = key;
      }
    }
    let next = base;
    let placed = 0;
    let group = -1;
    let first = 0;
    for (let i = 0; i < m; i++) {
      const s = rSlot[i];
      const key = rKey[i];
      const home = base + (key >>> 16);
      const p = next > home ? next : home;
      if (p >= limit) {
        // Past the window: this index and every later one (homes only grow).
        late.push(s);
        continue;
      }
      if (key >>> 16 !== group) {
        group = key >>> 16;
        first = i;
      } else {
        for (let q = first; q < i; q++) {
          if (rKey[q] === key && keyLo[rSlot[q]] === keyLo[s] && keyHi[rSlot[q]] === keyHi[s]) {
            twins.push(rSlot[q], s);
            break;
          }
        }
      }
      table[p] = (Math.min(p - home, distMax) << slotBits) | s;
      next = p + 1;
      placed++;
    }
    return placed;
  }
}
