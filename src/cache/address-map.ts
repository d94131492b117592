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
   * displacement field below the 32 - slotBits bits available (tests: saturation).
   */
  constructor(bda: BlockDescriptorArray, loadFactor = DEFAULT_LOAD_FACTOR, table?: Int32Array | number, distBits = 32) {
    this.bda = bda;
    this.capacity = typeof table === 'number' ? table : (table?.length ?? AddressMap.capacityFor(bda.size, loadFactor));
    this.slotBits = 32 - Math.clz32(bda.size);
    this.slotMask = 2 ** this.slotBits - 1;
    this.distMax = 2 ** Math.min(distBits, 32 - this.slotBits) - 1;
    if (table instanceof Int32Array) {
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
   * Places every slot added to `b` (built over this map) into this EMPTY map, in one pass in
   * table order (MapBuilder.place); a key met twice: `pick(a, b)` (a: the index in the map, b:
   * the other) returns the index that stays, the other is left out of the map (the caller
   * clears it). Indexes whose range overflowed or that would run past the end of the table
   * (rare) are then added one by one, wrapping.
   */
  addBuilt(b: MapBuilder, pick: (a: number, b: number) => number): void {
    if (this.entries !== 0) throw new Error('AddressMap.addBuilt: the map is not empty');
    this.entries = b.place(pick);
    for (const s of b.late) {
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

/**
 * Many keys added to an EMPTY map at once (recovery.ts), at the cost of a few sequential
 * passes: add() hashes each key once and sends (slot, home, hash bits) to the region of its
 * range of BUILD_SPAN homes (regions sized for the expected count of a range plus 8 standard
 * deviations; an index over its region's room waits in `late`); AddressMap.addBuilt() then
 * sorts each range by home (counting sort, in the CPU cache) and places each index at the
 * later of its home and the position after the previous one: entries ascending by home with
 * no gap inside a run are the Robin Hood layout, so nothing is displaced and no key is read,
 * except to compare two indexes of the same home and the same hash bits (a key met twice).
 * RAM: 8 bytes per index the builder is sized for, plus ~1 MiB for the range being placed.
 */
export class MapBuilder {
  /** Indexes placed one by one after the pass (range region full, or past the table's end). */
  readonly late: number[] = [];
  private readonly map: AddressMap;
  private readonly bda: BlockDescriptorArray;
  private readonly capacity: number;
  /** Indexes a range's region holds. */
  private readonly room: number;
  /** Per range r: the next free position of its region [r * room, (r + 1) * room). */
  private readonly fill: Int32Array;
  private readonly bySlot: Int32Array;
  /** (home - its range's first home) << 16 | the hash's high 16 bits (equal home and bits: compare keys). */
  private readonly byKey: Uint32Array;

  /** For `map` (over `bda`), room for `most` add() calls. */
  constructor(map: AddressMap, bda: BlockDescriptorArray, most: number) {
    this.map = map;
    this.bda = bda;
    this.capacity = map.capacity;
    const ranges = Math.ceil(this.capacity / BUILD_SPAN);
    const mean = (most * Math.min(BUILD_SPAN, this.capacity)) / this.capacity;
    this.room = Math.max(1, Math.min(most, Math.ceil(mean + 8 * Math.sqrt(mean) + 32)));
    this.fill = new Int32Array(ranges);
    for (let r = 0; r < ranges; r++) this.fill[r] = r * this.room;
    this.bySlot = new Int32Array(ranges * this.room);
    this.byKey = new Uint32Array(ranges * this.room);
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

  /** The pass of AddressMap.addBuilt(): returns the entries placed (the rest are in `late`). */
  place(pick: (a: number, b: number) => number): number {
    const { table, slotBits, distMax } = this.map;
    const { keyLo, keyHi } = this.bda;
    const { capacity, room, fill, bySlot, byKey } = this;
    const homeAt = new Int32Array(BUILD_SPAN + 1);
    const rSlot = new Int32Array(room);
    const rKey = new Uint32Array(room);
    /** Table position of each sorted index (-1: not placed). */
    const rPos = new Int32Array(room);
    let next = 0;
    let placed = 0;
    for (let r = 0; r < fill.length; r++) {
      const from = r * room;
      const m = fill[r] - from;
      if (m === 0) continue;
      sortByHome(bySlot, byKey, from, m, homeAt, rSlot, rKey);
      const base = r * BUILD_SPAN;
      let group = -1;
      let first = 0;
      for (let i = 0; i < m; i++) {
        const s = rSlot[i];
        const key = rKey[i];
        const home = base + (key >>> 16);
        if (key >>> 16 !== group) {
          group = key >>> 16;
          first = i;
        } else {
          let twin = -1;
          for (let q = first; q < i && twin < 0; q++) {
            if (rKey[q] === key && rPos[q] >= 0 && keyLo[rSlot[q]] === keyLo[s] && keyHi[rSlot[q]] === keyHi[s]) twin = q;
          }
          if (twin >= 0) {
            rPos[i] = -1;
            if (pick(rSlot[twin], s) === s) {
              const p = rPos[twin];
              table[p] = (Math.min(p - home, distMax) << slotBits) | s;
              rSlot[twin] = s;
            }
            continue;
          }
        }
        const p = next > home ? next : home;
        if (p >= capacity) {
          // Past the end: this index and every later one (homes only grow) wrap, one by one.
          rPos[i] = -1;
          this.late.push(s);
          continue;
        }
        table[p] = (Math.min(p - home, distMax) << slotBits) | s;
        rPos[i] = p;
        next = p + 1;
        placed++;
      }
    }
    return placed;
  }
}

/** Counting sort by home of the m indexes of a range at bySlot/byKey[from..]: into rSlot/rKey. */
function sortByHome(bySlot: Int32Array, byKey: Uint32Array, from: number, m: number, homeAt: Int32Array, rSlot: Int32Array, rKey: Uint32Array): void {
  homeAt.fill(0);
  const to = from + m;
  for (let j = from; j < to; j++) homeAt[(byKey[j] >>> 16) + 1]++;
  for (let k = 0; k < BUILD_SPAN; k++) homeAt[k + 1] += homeAt[k];
  for (let j = from; j < to; j++) {
    const key = byKey[j];
    const at = homeAt[key >>> 16]++;
    rSlot[at] = bySlot[j];
    rKey[at] = key;
  }
}
