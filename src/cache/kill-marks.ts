/**
 * Kill marks: how a write over a cached block (write-through, write-around, `none`) skips
 * waiting for the header rewrite that kills the block's old copy (Log.killFor, recovery.ts 1.).
 *
 * That wait guards against one crash kind only. After a host crash recovery drops every clean
 * entry (the boot id, cache.ts), so the rewrite of a clean entry's header has to complete before
 * the backing write only so that a PROCESS crash leaves no completed header write naming the old
 * copy. A mark does the same job for the cost of one small synchronous write: the segment's
 * number, written into the superblock's mark area through the page cache (which a process crash
 * keeps) before the backing write is issued: `region` (IoEngine.syncRegion over the superblock's
 * 4 KiB) is, on a cache file, a shared mapping of that page, so a mark costs a memory copy (and
 * a write-protect fault after writeback cleaned the page), not a system call. Recovery after a
 * process crash drops every clean entry of a marked segment (cache.ts dropClean), rewrites its
 * header before anything else, and only then clears the marks (Cache.open).
 *
 * In a run, a segment stays marked until a header rewrite of it sealed after its last mark has
 * completed (the killFor batch's `written`). A clear changes this mirror at once and the device
 * with the next write of the area: the next mark's, or CLEAR_DELAY_MS later (writeClears; Log
 * quiesce and close write them at once), so under load clears cost no write of their own. A mark
 * still on the device costs at most that segment's clean blocks after a crash. When every slot
 * is taken, or a write of the area fails (then marks are off for the rest of the run), mark()
 * returns false and the kill waits for its rewrite.
 *
 * Layout: MARK_SLOTS little-endian u32 at MARKS_OFFSET of the superblock's 4 KiB, each 0 (free)
 * or segment + 1. The superblock's CRC-32 is computed with the area zero (cache.ts): a build that
 * knows no marks finds a superblock with one set foreign and formats the device (cold, never
 * stale); with none set the two read the same superblock.
 */
import type { SyncRegion } from '../io/io-engine';

/** Where the mark area starts in the superblock's 4 KiB (the superblock's fields end at 88). */
export const MARKS_OFFSET = 2048;
/** Segments that can be marked at once (kills whose rewrite is in flight: a handful). */
export const MARK_SLOTS = 512;
const AREA_BYTES = MARK_SLOTS * 4;
/** Clears not carried by a mark's write within this long are written on their own. */
export const CLEAR_DELAY_MS = 10;

/** The segments marked in a superblock's 4 KiB (`raw`), in slot order. */
export function readMarks(raw: Uint8Array): number[] {
  const v = new DataView(raw.buffer, raw.byteOffset + MARKS_OFFSET, AREA_BYTES);
  const out: number[] = [];
  for (let i = 0; i < MARK_SLOTS; i++) {
    const x = v.getUint32(i * 4, true);
    if (x !== 0) out.push(x - 1);
  }
  return out;
}

/** True when byte i of a superblock lies in the mark area (not covered by its CRC-32). */
export function isMarkArea(i: number): boolean {
  return i >= MARKS_OFFSET && i < MARKS_OFFSET + AREA_BYTES;
}

export class KillMarks {
  /** The area as the next write puts it on the device. */
  private readonly area = new Uint8Array(AREA_BYTES);
  private readonly view = new DataView(this.area.buffer);
  /** Marked segment -> [slot, marks not yet cleared]. */
  private readonly marked = new Map<number, { slot: number; count: number }>();
  private readonly free: number[] = [];
  private off = false;
  /** The device still holds marks this mirror cleared. */
  private clearsPending = false;
  private clearTimer: NodeJS.Timeout | null = null;
  /** Kills that did not wait for their rewrite (a mark was set or already held). */
  kills = 0;

  /** `recovered`: the segments marked on the device now (kept until clearRecovered). */
  constructor(
    private readonly region: SyncRegion,
    recovered: readonly number[] = [],
  ) {
    for (let i = MARK_SLOTS - 1; i >= recovered.length; i--) this.free.push(i);
    recovered.forEach((seg, slot) => {
      this.view.setUint32(slot * 4, seg + 1, true);
      this.marked.set(seg, { slot, count: 1 });
    });
  }

  /** `superblock` (4 KiB, its mark area zero) with the area as this mirror holds it. */
  onto(superblock: Uint8Array): Uint8Array {
    superblock.set(this.area, MARKS_OFFSET);
    return superblock;
  }

  /** Segments marked now. */
  get size(): number {
    return this.marked.size;
  }

  /**
   * Marks `segs` on the device before returning true; false (nothing to rely on: the caller
   * waits for the rewrite) when the slots are all taken or the write failed.
   */
  mark(segs: ReadonlySet<number>): boolean {
    if (this.off) return false;
    let needed = 0;
    for (const s of segs) if (!this.marked.has(s)) needed++;
    if (needed > this.free.length) return false;
    if (needed > 0) {
      const added: number[] = [];
      for (const s of segs) {
        if (this.marked.has(s)) continue;
        const slot = this.free.pop() as number;
        this.view.setUint32(slot * 4, s + 1, true);
        this.marked.set(s, { slot, count: 0 });
        added.push(s);
      }
      try {
        this.region.write(this.area, MARKS_OFFSET);
        this.clearsPending = false;
      } catch {
        // What landed is harmless (a mark only costs clean blocks after a crash); the kill waits.
        for (const s of added) this.release(s);
        this.off = true;
        return false;
      }
    }
    for (const s of segs) (this.marked.get(s) as { count: number }).count++;
    this.kills++;
    return true;
  }

  /** One mark of each of `segs` is done with (a rewrite sealed after it completed). */
  unmark(segs: ReadonlySet<number>): void {
    for (const s of segs) {
      const m = this.marked.get(s);
      if (m === undefined) continue;
      if (--m.count > 0) continue;
      this.release(s);
      this.clearsPending = true;
    }
    if (this.clearsPending && this.clearTimer === null && !this.off) {
      this.clearTimer = setTimeout(() => this.writeClears(), CLEAR_DELAY_MS);
      this.clearTimer.unref();
    }
  }

  /** Writes the area now if the device holds marks this mirror cleared (a failure turns marks off). */
  writeClears(): void {
    if (this.clearTimer !== null) clearTimeout(this.clearTimer);
    this.clearTimer = null;
    if (!this.clearsPending || this.off) return;
    try {
      this.region.write(this.area, MARKS_OFFSET);
      this.clearsPending = false;
    } catch {
      this.off = true;
    }
  }

  /** The device is closing: no write any more, the region closed (before its descriptor); pending clears are lost, which is harmless. */
  stop(): void {
    if (this.clearTimer !== null) clearTimeout(this.clearTimer);
    this.clearTimer = null;
    this.off = true;
    this.region.close();
  }

  /**
   * The marks found at open are done with (their segments' headers were rewritten and synced):
   * the area is written without them. Throws the write's error (the caller's open fails).
   */
  clearRecovered(segs: readonly number[]): void {
    if (segs.length === 0) return;
    for (const s of segs) this.release(s);
    this.region.write(this.area, MARKS_OFFSET);
  }

  private release(seg: number): void {
    const m = this.marked.get(seg);
    if (m === undefined) return;
    this.marked.delete(seg);
    this.view.setUint32(m.slot * 4, 0, true);
    this.free.push(m.slot);
  }
}
