/**
 * Cache keys of a volume whose store reads an immutable parent (SharedBlocks, e.g. an RBD
 * clone): block b is keyed by the parent's entry in the cache's volume table when the whole
 * block lies in [0, sharedBytes) and no unit it touches is owned, by the volume otherwise.
 *
 * Why a parent key is never stale: the parent's data never changes, and a block is keyed by it
 * only while the volume reads the parent there. Units only ever become owned: own() is called
 * when a write-like operation starts (before anything is sent to the store), and a failed
 * operation leaves its units owned (the volume's key is always right; the parent's only while
 * unowned). Data read under a parent key while another block of the same unit is written is
 * still the parent's (a copy-up copies the parent's unit); a write to the block itself poisons
 * the read (CachedStore's in-flight ranges), so it inserts nothing.
 *
 * Invariant kept with the volume's keys: blocks of unowned shared units have no entry under the
 * volume's key (CachedStore drops them when it opens: volumeKeyValid()), so a unit that becomes owned exposes nothing
 * old under the volume's key.
 */
import type { SharedBlocks } from '../backing/backing-store';

export class SharedKeys {
  /** Blocks entirely inside [0, sharedBytes). */
  readonly sharedBlocks: number;
  private readonly owned: Uint8Array;
  private readonly unitBytes: number;

  /**
   * @param volume  the volume's id in the cache
   * @param parent  the parent's id in the cache (Cache.registerShared)
   */
  constructor(
    readonly volume: number,
    readonly parent: number,
    sharing: SharedBlocks,
    private readonly bs: number,
  ) {
    this.unitBytes = sharing.unitBytes;
    this.sharedBlocks = Math.floor(sharing.sharedBytes / bs);
    const units = Math.ceil(sharing.sharedBytes / sharing.unitBytes);
    this.owned = new Uint8Array(units);
    this.owned.set(sharing.owned.subarray(0, units));
  }

  /** The cache key of block b. */
  keyOf(b: number): number {
    if (b >= this.sharedBlocks) return this.volume;
    const u0 = Math.floor((b * this.bs) / this.unitBytes);
    const u1 = Math.floor(((b + 1) * this.bs - 1) / this.unitBytes);
    for (let u = u0; u <= u1; u++) if (this.owned[u] !== 0) return this.volume;
    return this.parent;
  }

  /** The key of blocks first..last when they all have one, else -1. */
  keyOfRange(first: number, last: number): number {
    const key = this.keyOf(first);
    for (let b = first + 1; b <= last; b++) if (this.keyOf(b) !== key) return -1;
    return key;
  }

  /** Calls fn(key, k, n) for each run of blocks first + k .. first + k + n - 1 with one key. */
  runs(first: number, count: number, fn: (key: number, k: number, n: number) => void): void {
    let k = 0;
    while (k < count) {
      const key = this.keyOf(first + k);
      let n = 1;
      while (k + n < count && this.keyOf(first + k + n) === key) n++;
      fn(key, k, n);
      k += n;
    }
  }

  /** Blocks first..last are about to be written: the units they touch become owned. */
  own(first: number, last: number): void {
    const u0 = Math.floor((first * this.bs) / this.unitBytes);
    const u1 = Math.min(Math.floor(((last + 1) * this.bs - 1) / this.unitBytes), this.owned.length - 1);
    for (let u = u0; u <= u1; u++) this.owned[u] = 1;
  }

  /** Whether the volume's key of block b may hold data (see the invariant in the header). */
  volumeKeyValid(b: number): boolean {
    return this.keyOf(b) === this.volume;
  }
}
