/**
 * Cache map: the BDA (which key sits in which log slot), the address map (key -> slot) and the
 * CLOCK hand, which is also the log write position: a new block always goes to the slot the
 * hand stops at, so blocks are written in log order and segments fill sequentially.
 *
 * CLOCK: a hit sets the slot's REF bit. To insert, the hand scans from its position: an
 * invalid slot is taken; a valid slot with REF set is spared (REF cleared, hand moves on),
 * unless its volume is at or over its cap (such blocks get no second chance); any other valid
 * slot is evicted. The scan terminates within two passes.
 *
 * Per-volume caps are hard: while a volume holds `cap` blocks, its next insert evicts one of its
 * own blocks (the first one at or after the hand, whatever its REF bit); slots of other volumes
 * passed on the way are left untouched.
 *
 * Insertion is split in two steps because the log may have to read the victim's segment
 * before the slot can be overwritten (see log.ts): findVictim() moves the hand to the victim
 * (clearing REF bits of spared slots), assign() evicts it, stores the new key and moves the
 * hand past it. Nothing else may move the hand in between.
 */
import { AddressMap, DEFAULT_LOAD_FACTOR } from './address-map';
import { BlockDescriptorArray, FLAG_REF, FLAG_VALID, MAX_VOLUMES } from './bda';
import { newCounters, type VolumeCounters } from './stats';

export class CacheMap {
  readonly bda: BlockDescriptorArray;
  readonly map: AddressMap;
  readonly slots: number;
  /** Next slot the hand looks at. */
  hand = 0;
  wraps = 0;
  /** Blocks currently cached per volume id. */
  readonly volumeBlocks = new Uint32Array(MAX_VOLUMES);
  /** Per-volume cap in blocks; 0 = no cap. */
  readonly volumeCap = new Float64Array(MAX_VOLUMES);
  private readonly counters: (VolumeCounters | undefined)[] = [];

  constructor(slots: number, loadFactor = DEFAULT_LOAD_FACTOR, bda?: BlockDescriptorArray, table?: Int32Array) {
    this.bda = bda ?? new BlockDescriptorArray(slots);
    this.slots = this.bda.size;
    this.map = new AddressMap(this.bda, loadFactor, table);
    if (bda) {
      for (let i = 0; i < this.slots; i++) {
        if (this.bda.isValid(i)) this.volumeBlocks[this.bda.volumeOf(i)]++;
      }
    }
  }

  /** Counters of a volume id (created on first use). */
  stats(volume: number): VolumeCounters {
    let c = this.counters[volume];
    if (!c) {
      c = newCounters();
      this.counters[volume] = c;
    }
    return c;
  }

  /** Slot of (volume, block) and sets its REF bit, or -1. Does not count statistics. */
  lookup(volume: number, block: number): number {
    const idx = this.map.get(volume, block);
    if (idx >= 0) this.bda.flags[idx] |= FLAG_REF;
    return idx;
  }

  /** Slot of (volume, block) without touching REF, or -1. */
  peek(volume: number, block: number): number {
    return this.map.get(volume, block);
  }

  private atCap(volume: number): boolean {
    const cap = this.volumeCap[volume];
    return cap > 0 && this.volumeBlocks[volume] >= cap;
  }

  private step(i: number): number {
    if (i + 1 < this.slots) return i + 1;
    this.wraps++;
    return 0;
  }

  /**
   * Moves the hand to the slot the next block of `volume` must go to and returns it. Spared
   * slots have their REF bit cleared. The slot is not changed: call assign() with it.
   */
  findVictim(volume: number): number {
    const { bda, slots } = this;
    const flags = bda.flags;
    let i = this.hand;
    if (this.atCap(volume)) {
      for (let n = 0; n < slots; n++) {
        if ((flags[i] & FLAG_VALID) !== 0 && bda.volumeOf(i) === volume) {
          this.hand = i;
          return i;
        }
        i = this.step(i);
      }
      i = this.hand;
    }
    for (;;) {
      const f = flags[i];
      if ((f & FLAG_VALID) === 0) break;
      if ((f & FLAG_REF) === 0 || this.atCap(bda.volumeOf(i))) break;
      flags[i] = f & ~FLAG_REF;
      i = this.step(i);
    }
    this.hand = i;
    return i;
  }

  /**
   * Puts (volume, block) into `slot` (normally the one findVictim returned): evicts what the
   * slot held, drops any other slot holding the same key, moves the hand past the slot.
   */
  assign(slot: number, volume: number, block: number): void {
    const { bda } = this;
    if (bda.isValid(slot)) {
      this.stats(bda.volumeOf(slot)).evictions++;
      this.drop(slot);
    }
    const old = this.map.get(volume, block);
    if (old >= 0) this.drop(old);
    bda.set(slot, volume, block);
    this.map.add(slot);
    this.volumeBlocks[volume]++;
    this.stats(volume).insertions++;
    if (slot === this.hand) this.hand = this.step(slot);
  }

  /** Invalidates a valid slot (no statistics). */
  drop(slot: number): void {
    const { bda } = this;
    if (!bda.isValid(slot)) return;
    this.map.remove(slot);
    this.volumeBlocks[bda.volumeOf(slot)]--;
    bda.clear(slot);
  }

  /** Invalidates (volume, block) if cached; counts an invalidation. Returns true on a hit. */
  invalidate(volume: number, block: number): boolean {
    return this.invalidateRange(volume, block, 1) === 1;
  }

  /**
   * Invalidates blocks [first, first + count) of a volume; returns how many were cached.
   * Large ranges scan the BDA instead of probing the map block by block.
   */
  invalidateRange(volume: number, first: number, count: number): number {
    const c = this.stats(volume);
    c.invalidations += count;
    if (this.volumeBlocks[volume] === 0) return 0;
    let hits = 0;
    if (count > this.slots / 4) {
      const { bda } = this;
      const end = first + count;
      for (let i = 0; i < this.slots; i++) {
        if (!bda.isValid(i) || bda.volumeOf(i) !== volume) continue;
        const b = bda.blockOf(i);
        if (b >= first && b < end) {
          this.drop(i);
          hits++;
        }
      }
    } else {
      for (let b = first; b < first + count; b++) {
        const idx = this.map.get(volume, b);
        if (idx >= 0) {
          this.drop(idx);
          hits++;
        }
      }
    }
    c.invalidateHits += hits;
    return hits;
  }

  /** Drops every block of a volume (its identity changed). Returns how many. */
  dropVolume(volume: number): number {
    if (this.volumeBlocks[volume] === 0) return 0;
    let n = 0;
    for (let i = 0; i < this.slots; i++) {
      if (this.bda.isValid(i) && this.bda.volumeOf(i) === volume) {
        this.drop(i);
        n++;
      }
    }
    return n;
  }

  /** Drops every valid slot in [from, to) (their data on the cache device is lost). */
  dropSlots(from: number, to: number): number {
    let n = 0;
    for (let i = from; i < to; i++) {
      if (this.bda.isValid(i)) {
        this.drop(i);
        n++;
      }
    }
    return n;
  }

  get byteLength(): number {
    return this.bda.byteLength + this.map.byteLength;
  }
}
