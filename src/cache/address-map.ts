/**
 * Address map: (volume id, block number) -> BDA index.
 *
 * Memory layout: one Int32Array `table` of `capacity` entries, each -1 (empty) or the index of
 * a valid BDA slot. Nothing else is stored: the key of an entry is read back from the BDA and
 * its home position is recomputed from that key, so the map costs 4 / loadFactor bytes per
 * cache block (5.7 B at the default 0.7). capacity = ceil(slots / loadFactor) + 1, never a
 * power of two requirement: home = (hash >>> 1) % capacity (integer modulo, both operands in
 * int31 range).
 *
 * Open addressing, linear probing (i + 1, wrapping at capacity), deletion by backward shift
 * (no tombstones): after a removal, later entries of the same probe run that may legally sit
 * in the hole are moved into it, so a lookup can always stop at the first empty entry.
 */
import { BlockDescriptorArray, packHi, packLo } from './bda';

export const DEFAULT_LOAD_FACTOR = 0.7;
/** Lowest load factor a cache may use: the on-device metadata area is sized for its table. */
export const MIN_LOAD_FACTOR = 0.5;
const EMPTY = -1;

/** 32-bit hash of a packed key (murmur3 finalizer over both halves). */
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
  private readonly bda: BlockDescriptorArray;
  private entries = 0;

  /** `table` (same capacity) is adopted as is, e.g. loaded from metadata. */
  constructor(bda: BlockDescriptorArray, loadFactor = DEFAULT_LOAD_FACTOR, table?: Int32Array) {
    this.bda = bda;
    this.capacity = table?.length ?? AddressMap.capacityFor(bda.size, loadFactor);
    if (table) {
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

  /** Table position holding (volume, block), or -1. */
  private position(lo: number, hi: number): number {
    const { table, capacity, bda } = this;
    let p = this.home(lo, hi);
    for (;;) {
      const idx = table[p];
      if (idx === EMPTY) return -1;
      if (bda.keyLo[idx] === lo && bda.keyHi[idx] === hi) return p;
      p = p + 1 === capacity ? 0 : p + 1;
    }
  }

  /** BDA index of (volume, block), or -1. */
  get(volume: number, block: number): number {
    const p = this.position(packLo(block), packHi(volume, block));
    return p < 0 ? -1 : this.table[p];
  }

  /**
   * Adds BDA index `idx`, whose key is already written in the BDA. The key must not be in the
   * map (callers remove the previous slot of a key first).
   */
  add(idx: number): void {
    const { table, capacity } = this;
    let p = this.home(this.bda.keyLo[idx], this.bda.keyHi[idx]);
    while (table[p] !== EMPTY) p = p + 1 === capacity ? 0 : p + 1;
    table[p] = idx;
    this.entries++;
  }

  /**
   * Adds BDA index `idx` (its key already written in the BDA) unless the key is in the map:
   * returns -1 when added, else the index holding the key (nothing changed). One probe.
   */
  addUnlessPresent(idx: number): number {
    const { table, capacity, bda } = this;
    const lo = bda.keyLo[idx];
    const hi = bda.keyHi[idx];
    let p = this.home(lo, hi);
    for (;;) {
      const cur = table[p];
      if (cur === EMPTY) {
        table[p] = idx;
        this.entries++;
        return -1;
      }
      if (bda.keyLo[cur] === lo && bda.keyHi[cur] === hi) return cur;
      p = p + 1 === capacity ? 0 : p + 1;
    }
  }

  /** Removes the entry of BDA index `idx` (its key still in the BDA). Returns false if absent. */
  remove(idx: number): boolean {
    const { table, capacity, bda } = this;
    let hole = this.home(bda.keyLo[idx], bda.keyHi[idx]);
    for (;;) {
      const cur = table[hole];
      if (cur === EMPTY) return false;
      if (cur === idx) break;
      hole = hole + 1 === capacity ? 0 : hole + 1;
    }
    // Backward shift: pull later entries of the run whose home is not in (hole, j].
    let j = hole;
    for (;;) {
      j = j + 1 === capacity ? 0 : j + 1;
      const e = table[j];
      if (e === EMPTY) break;
      const k = this.home(bda.keyLo[e], bda.keyHi[e]);
      const stays = hole <= j ? k > hole && k <= j : k > hole || k <= j;
      if (!stays) {
        table[hole] = e;
        hole = j;
      }
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
