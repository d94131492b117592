/**
 * Header entries that may still say "valid" on the cache device for keys that left the RAM map
 * (cache-map.ts drop: an eviction, an invalidation, a failed read or checksum, a block moved to
 * another slot). recovery.ts would bring such an entry back after a crash, so a write to its
 * key must first make it invalid for every recovery (log.ts rewrites the segment's header from
 * the BDA; then fdatasync where write-back data is involved: Log.killFor); this set is how the
 * write path finds them.
 *
 * An entry is added when its slot is dropped; it is *covered* by the next header of its segment
 * sealed from the BDA (which no longer names it: seal()), *written* once that header's write
 * completed (markWritten(): a process crash can no longer bring it back, a power loss still
 * can), and forgotten once an fdatasync after that succeeded (forget()). A failed header write
 * uncovers its entries again. `dirty`: the entry may say "dirty" on the device (the slot was
 * dirty when dropped): log.ts never lets a backing write of its key go before it is forgotten. Entries of a volume whose every block was dropped through its epoch
 * (volume-table.ts) may stay until then: they only cost a needless header rewrite.
 *
 * RAM: one object (~80 bytes with its map and list slots) per entry. Entries live until their
 * segment's next sealed header is durable: evictions until the segment being filled is written
 * and synced (log.ts syncs once MAX_UNSYNCED_SEGMENTS segments' worth await it), every other
 * drop until the header rewrite the log starts for it at once (background): a few segments'
 * worth of entries, e.g. ~50 KiB at 128 blocks per segment.
 */

export interface Dropped {
  slot: number;
  volume: number;
  block: number;
  /** The slot was dirty (write-back) when dropped: a durable header may name it dirty. */
  dirty: boolean;
  /** A header sealed after the drop, not naming it, was written (completed; maybe not durable). */
  written: boolean;
}

export class DroppedEntries {
  private readonly byVolume = new Map<number, Map<number, Dropped[]>>();
  /** Entries not yet covered by a sealed header, by segment. */
  private readonly bySegment = new Map<number, Dropped[]>();
  size = 0;

  constructor(private readonly blocksPerSegment: number) {}

  add(slot: number, volume: number, block: number, dirty: boolean): Dropped {
    const d: Dropped = { slot, volume, block, dirty, written: false };
    let blocks = this.byVolume.get(volume);
    if (blocks === undefined) this.byVolume.set(volume, (blocks = new Map()));
    const list = blocks.get(block);
    if (list === undefined) blocks.set(block, [d]);
    else list.push(d);
    this.uncover(Math.floor(slot / this.blocksPerSegment), [d]);
    this.size++;
    return d;
  }

  /** Calls fn with every entry of blocks first .. first + count - 1 of volume. */
  entriesOf(volume: number, first: number, count: number, fn: (d: Dropped) => void): void {
    const blocks = this.byVolume.get(volume);
    if (blocks === undefined) return;
    const add = (list: Dropped[]) => {
      for (const d of list) fn(d);
    };
    if (count <= blocks.size) {
      for (let b = first; b < first + count; b++) {
        const list = blocks.get(b);
        if (list !== undefined) add(list);
      }
      return;
    }
    for (const [b, list] of blocks) if (b >= first && b < first + count) add(list);
  }

  /** Segments holding entries no sealed header covers yet. */
  uncovered(): number[] {
    return [...this.bySegment.keys()];
  }

  /** A header of `seg` is sealed from the BDA now: the entries it covers (null: none). */
  seal(seg: number): Dropped[] | null {
    const list = this.bySegment.get(seg);
    if (list === undefined) return null;
    this.bySegment.delete(seg);
    return list;
  }

  /** The header that covered `list` was written (its write completed). */
  markWritten(list: readonly Dropped[]): void {
    for (const d of list) d.written = true;
  }

  /** The header that covered `list` was not written: they wait for another one. */
  uncover(seg: number, list: Dropped[]): void {
    const cur = this.bySegment.get(seg);
    if (cur === undefined) this.bySegment.set(seg, list.slice());
    else cur.push(...list);
  }

  /** The header that covered these entries is durable: they are gone from the device. */
  forget(list: readonly Dropped[]): void {
    for (const d of list) {
      const blocks = this.byVolume.get(d.volume);
      const same = blocks?.get(d.block);
      if (blocks === undefined || same === undefined) continue;
      const i = same.indexOf(d);
      if (i < 0) continue;
      same.splice(i, 1);
      this.size--;
      if (same.length === 0) blocks.delete(d.block);
      if (blocks.size === 0) this.byVolume.delete(d.volume);
    }
  }
}
