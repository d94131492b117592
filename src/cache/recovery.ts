/**
 * Recovery: after an unclean stop (crash, kill -9, power cut: the metadata of the last clean
 * close is stale) the cache index is rebuilt from the segment headers on the device, so the
 * cache starts warm.
 *
 * THE INVARIANT (kept by log.ts, cache.ts and cached-store.ts; this file relies on it):
 *   At every instant, for every key K (volume id, block) and every header entry that may be on
 *   the device (durable, or written and not yet synced) saying "slot s holds K, valid", with a
 *   sequence number >= the volume table's floor and >= the epoch of K's volume id: either the
 *   data the guest would read for K equals what slot s holds (checked against the entry's
 *   CRC-32C), or K's backing write has not been issued yet.
 * How each way of breaking it is ruled out:
 *   1. A guest write, discard or write-zeroes (every mode, `none` included) drops K from the map
 *      and, before its backing write is issued, rewrites the headers of every segment that may
 *      still name K (Log.killFor), then fdatasync: batched, one device write set + one
 *      fdatasync per batch.
 *   2. Keys leaving the map without a write (evicted when the slot is refilled, read-ahead or
 *      device read errors, checksum drops, a block moved to another slot) are remembered with
 *      their slot (dropped.ts) until a header of their segment sealed after the drop is durable,
 *      so 1. finds them; a volume shrink or identity change drops all of its blocks through 4.
 *   3. Every device write of a segment is chained after the ones issued before it (Log
 *      onSegment): a header rewrite never lands before a segment write still in flight.
 *   4. Volume ids are reused and volumes lose all their blocks at once: the volume table
 *      (volume-table.ts) gives each id an epoch, raised (and saved, synced) whenever all of a
 *      volume's blocks are dropped, before that volume's next write is issued; entries sealed
 *      before their id's epoch are not recovered. Records are never removed, so a new id is
 *      unknown to every table on the device and its entries are skipped until its record is
 *      saved (its blocks need not wait).
 *   5. Changes behind our back while stopped: a volume is kept only if its backing identity
 *      equals the one last recorded (cache.ts registerVolume; cached-store.ts records it when
 *      the volume is quiet), else all its blocks go (4.). Never sampled for this. A store
 *      that may lose unflushed writes with its connection (NBD) loses its recovered blocks.
 *   6. Torn writes: header sectors are self-describing (CRC-32C, sequence number; segment.ts),
 *      only the sectors of a segment's highest sequence number are used (a mix is detected and
 *      that header rewritten before the cache opens); data is checked against the entry's
 *      CRC-32C on every device read (a torn block is a miss), read here only for the
 *      dirty entries above the durable mark (10.).
 *   7. A cache-device write error: nothing is sealed any more, and the writes made from then
 *      on kill nothing on the device, so before any of them is issued it must be durable that
 *      nothing sealed so far is recovered: the volume table saved with the floor above every
 *      sequence number used or, if the device refuses that, the superblock retired (zeros:
 *      the next start formats the device). Every write while the cache is disabled waits for
 *      one of them (Log.killFor, cache.ts retire); if the device refuses both for a whole round
 *      of attempts (~4 s), the writes waiting fail with EIO and are never issued, and the next
 *      write tries again. Which of the two landed does not matter: both mean "cold". The volume
 *      table's saves are group commits that never report a save whose snapshot predates the
 *      request (volume-table.ts), so "floor saved" means the raised floor is on the device.
 *
 * Write-back (dirty entries: data newer than the backing store, acknowledged once durable):
 *   8. A dirty entry is the newest data of its key unless a newer entry of the key exists:
 *      a newer write-back copy is sealed with a higher sequence number, and the older copy stays
 *      named (superseded) until the newer one is durable (log.ts SHADOW), so a crash leaves at
 *      least one of them; a write-through write or discard of a dirty block kills it like 1.
 *   9. A destage (the backing write of dirty data) is a backing write like 1.: the dropped
 *      entries of its keys are made durably invalid before it is issued, and it waits for a
 *      log commit first, so the data it writes back is durable in the log (a crash never
 *      recovers an older copy than the backing store holds); a dirty entry whose "clean" mark
 *      was lost is destaged again (the same data).
 *  10. A segment write issues its data runs and its header together (one fdatasync per group
 *      commit, log.ts), so a header may be on the device over data that is not (torn, or never
 *      written). Every header sector carries the durable mark M (every write sealed at or below
 *      M completed before an fdatasync that completed before the sector was sealed): the data
 *      of each dirty entry sealed above the highest mark found is read and checked against the
 *      entry's CRC-32C here; one that does not match is dropped (its write was never
 *      acknowledged: the commit's fdatasync had not completed) and its header rewritten, so the
 *      older copy it superseded (8.) wins, or the backing store's data. Entries at or below the
 *      mark are not read (their data was durable before the mark was). Clean entries are never
 *      read: their CRC-32C is checked on every device read (6.). A slot whose dirty entry may
 *      still be valid is never refilled (SHADOW, RESERVED). The log restarts from the mark
 *      found, so the headers rewritten at open do not vouch for data dropped here.
 *  11. Torn headers: a header is rewritten in place (group commits, clean marks, kills) while it
 *      names acknowledged dirty blocks, so a dirty entry of an intact sector of an OLDER write
 *      of the header is recovered too (with that sector's sequence number): it was the last
 *      durable state of that sector, and 8.-10. make it right unless a newer entry of the key
 *      exists, which wins. Clean entries of older sectors are not recovered (as in 6.).
 *  12. A cache-device write error (7.) with dirty blocks: the floor (or a retired superblock)
 *      would drop them, so they are destaged first (cache.ts retire); the writes waiting for
 *      7. wait for that destage too (never overtaken by it). What cannot be destaged is logged
 *      and lost at the next start (README: the data-loss window).
 *
 * Algorithm: read every segment header (batches of reads in flight, the CRC-32C of every
 * sector of a batch in one call); per segment keep the intact sectors of the highest sequence
 * number (>= floor), and the dirty entries of its older intact sectors (11.); each valid entry
 * of a known volume id, sealed at or after its epoch and inside the volume (and of a key the
 * BDA can hold, bda.ts), goes to its slot (the BDA only: no lookup per entry), is counted (per
 * segment, per volume: CacheMap adopts the counts) and, when clean, handed to the map builder
 * (address-map.ts MapBuilder: hashed once, sent to its range of homes); the dirty ones sealed
 * above the durable mark are checked against their data (10.), and those left go to the
 * builder too; then the address map is built in one pass in table order
 * (AddressMap.addBuilt), where a key found twice keeps the entry of the higher sequence
 * number, a superseded one losing to any other. Segments whose headers name entries not recovered for another reason
 * than floor or epoch (older sectors of a torn header, the loser of a duplicate, data that does
 * not match) are returned in `rewrite`: the caller rewrites them from the rebuilt index (and
 * syncs) before the cache is used, so every entry still valid on the device is in the index
 * again (the invariant's starting point). The hand restarts after the segment of the highest
 * sequence number.
 */
import type { IoEngine } from '../io/io-engine';
import { AddressMap, MapBuilder } from './address-map';
import { BlockDescriptorArray, FLAG_DIRTY, FLAG_VALID, MAX_BLOCK_NUMBER, MAX_VOLUMES } from './bda';
import type { CountedIndex } from './cache-map';
import type { VolumeRecord } from './metadata';
import { native } from '../native/binding';
import { checkSectors, ENTRIES_PER_SECTOR, ENTRY_DIRTY, ENTRY_SUPERSEDED, ENTRY_VALID, entryOffset, type Geometry, HEADER_SECTOR, sectorMark, segmentOffset, slotOffset, uuidWords } from './segment';

/** The first 32-bit word of the first entry of header sector k. */
function entryWord(k: number): number {
  return entryOffset(k * ENTRIES_PER_SECTOR) >>> 2;
}

/** Segment headers (or runs of dirty blocks to check, 10.) read per batch (in flight together). */
const READ_BATCH = 256;

export interface RecoveryInput {
  engine: IoEngine;
  fd: number;
  geometry: Geometry;
  uuid: Uint8Array;
  floor: number;
  volumes: readonly VolumeRecord[];
  tableCapacity: number;
}

export interface Recovered {
  bda: BlockDescriptorArray;
  /** The address map of the entries recovered, and their counts (CacheMap adopts them as they are). */
  index: CountedIndex;
  /** First slot of the segment after the one with the highest sequence number. */
  hand: number;
  /** Highest sequence number found (0: none). */
  sequence: number;
  /** Highest durable mark found (0: none; 10.). */
  mark: number;
  /** Dirty entries above the mark whose data was read and checked, and those dropped (torn). */
  verified: number;
  torn: number;
  /** Segments whose headers must be rewritten before use (see the file comment). */
  rewrite: number[];
  /** Entries recovered, and entries seen but not recovered (floor, epoch, torn, duplicate). */
  entries: number;
  skipped: number;
  ms: number;
}

export async function recoverIndex(o: RecoveryInput): Promise<Recovered> {
  const t0 = performance.now();
  const g = o.geometry;
  const H = g.headerSize;
  const scan = new HeaderScan(o);
  const buf = new Uint8Array(READ_BATCH * H);
  const words = new Uint32Array(buf.buffer);
  const sectors = H / HEADER_SECTOR;
  const crcs = new Uint32Array(READ_BATCH * sectors);
  const views = Array.from({ length: READ_BATCH }, (_, j) => [buf.subarray(j * H, (j + 1) * H)]);
  for (let from = 0; from < g.segments; from += READ_BATCH) {
    const n = Math.min(READ_BATCH, g.segments - from);
    await readHeaders(o, views, from, n);
    // Every sector of the batch in one call (the zero sectors after the entries too).
    native.crc32cBlocks(buf.subarray(0, n * H), HEADER_SECTOR, crcs, 0);
    for (let j = 0; j < n; j++) scan.segment(from + j, words, (j * H) >>> 2, crcs, j * sectors);
  }
  await scan.verify(o.engine, o.fd);
  scan.index_();
  return {
    bda: scan.bda,
    index: { map: scan.map, segValid: scan.segValid, volumeBlocks: scan.volumeBlocks, dirty: scan.dirtyValid() },
    hand: scan.best < 0 ? 0 : ((scan.best + 1) % g.segments) * g.blocksPerSegment,
    sequence: Math.max(0, scan.bestSeq),
    mark: scan.mark,
    verified: scan.verified,
    torn: scan.torn,
    rewrite: [...scan.rewrite],
    entries: scan.entries,
    skipped: scan.skipped,
    ms: performance.now() - t0,
  };
}

/**
 * Reads the headers of segments [from, from + n) into views[0..n), all in flight together;
 * rejects with the first error once every read is done.
 */
async function readHeaders(o: RecoveryInput, views: Uint8Array[][], from: number, n: number): Promise<void> {
  const reads: Promise<void>[] = [];
  for (let j = 0; j < n; j++) reads.push(o.engine.readv(o.fd, views[j], segmentOffset(o.geometry, from + j), true));
  const failed = (await Promise.allSettled(reads)).find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}

/** The index being rebuilt, one header at a time (see the file comment). */
class HeaderScan {
  readonly bda: BlockDescriptorArray;
  readonly map: AddressMap;
  readonly rewrite = new Set<number>();
  /** Entries recovered per segment and per volume id (CacheMap's counts). */
  readonly segValid: Uint16Array;
  readonly volumeBlocks = new Uint32Array(MAX_VOLUMES);
  entries = 0;
  skipped = 0;
  best = -1;
  bestSeq = -1;
  mark = 0;
  verified = 0;
  torn = 0;
  private readonly g: Geometry;
  private readonly uuid: Uint32Array;
  private readonly floor: number;
  /** Clean entries go to the map builder as they are found; dirty ones once checked (verify). */
  private readonly builder: MapBuilder;
  /** Slots of the dirty entries recovered, ascending (some dropped by verify: flags 0). */
  private readonly dirty: number[] = [];
  /**
   * Per volume id of an entry (16 bits on the device): its epoch (Infinity: unknown id, or an
   * id the BDA cannot hold) and its size in blocks (at most what the BDA can hold).
   */
  private readonly epoch = new Float64Array(65536).fill(Infinity);
  private readonly limit = new Float64Array(65536);
  /** Per segment: the sequence number of its header's newest intact sectors (-1: none). */
  private readonly segSeq: Float64Array;
  private readonly seqs: Float64Array;
  /** Slots recovered from an older sector than their segment's newest (11.): its sequence number. */
  private readonly olderSector = new Map<number, number>();
  /** Slots recovered from a superseded entry (they lose to any other entry of their key). */
  private readonly superseded = new Set<number>();

  constructor(o: RecoveryInput) {
    this.g = o.geometry;
    this.uuid = uuidWords(o.uuid);
    this.floor = o.floor;
    this.bda = new BlockDescriptorArray(this.g.slots);
    this.map = new AddressMap(this.bda, undefined, o.tableCapacity);
    this.builder = new MapBuilder(this.map, this.bda, this.g.slots);
    for (const v of o.volumes) {
      if (v.id >= MAX_VOLUMES) continue;
      this.epoch[v.id] = v.epoch;
      this.limit[v.id] = Math.min(MAX_BLOCK_NUMBER + 1, v.sizeBytes === 0 ? Infinity : Math.ceil(v.sizeBytes / this.g.blockSize));
    }
    this.segValid = new Uint16Array(this.g.segments);
    this.segSeq = new Float64Array(this.g.segments).fill(-1);
    this.seqs = new Float64Array(this.g.headerSectors);
  }

  /**
   * The header of segment `seg`, at word `at` of `words`; crcs[crcAt + k]: the CRC-32C of its
   * sector k.
   */
  segment(seg: number, words: Uint32Array, at: number, crcs: Uint32Array, crcAt: number): void {
    const { g, seqs, floor } = this;
    checkSectors(words, at, crcs, crcAt, g, seg, this.uuid, seqs);
    let top = -1;
    for (let k = 0; k < g.headerSectors; k++) if (seqs[k] >= floor && seqs[k] > top) top = seqs[k];
    if (top < 0) return;
    // Entries are 16-byte aligned, little endian (the host's order: metadata.ts refuses others).
    for (let k = 0; k < g.headerSectors; k++) if (seqs[k] >= floor) this.mark = Math.max(this.mark, sectorMark(words, at, k));
    this.segSeq[seg] = top;
    if (top > this.bestSeq) {
      this.bestSeq = top;
      this.best = seg;
    }
    const { keyLo, keyHi, crc, flags } = this.bda;
    const { epoch, limit, builder, volumeBlocks } = this;
    const bps = g.blocksPerSegment;
    let slot = seg * bps;
    let entries = 0;
    let skipped = 0;
    for (let k = 0; k < g.headerSectors; k++) {
      const sector = seqs[k];
      if (sector < floor) {
        slot += Math.min(ENTRIES_PER_SECTOR, bps - k * ENTRIES_PER_SECTOR);
        continue;
      }
      // An intact sector of an older write of this header (torn): only its dirty entries are
      // recovered (11.), and the header is rewritten.
      const older = sector !== top;
      const end = at + entryWord(k) + 4 * Math.min(ENTRIES_PER_SECTOR, bps - k * ENTRIES_PER_SECTOR);
      for (let e = at + entryWord(k); e < end; e += 4, slot++) {
        const ef = words[e + 3];
        if ((ef & ENTRY_VALID) === 0) continue;
        if (older) {
          this.rewrite.add(seg);
          if ((ef & ENTRY_DIRTY) === 0) {
            skipped++;
            continue;
          }
        }
        const lo = words[e];
        const hi = words[e + 1];
        const id = hi >>> 16;
        // Before its id's epoch (or an unknown id), past the volume's end or a block number
        // of 2^32 or more (bda.ts): not recovered.
        if (sector < epoch[id] || (hi & 0xffff) !== 0 || lo >= limit[id]) {
          skipped++;
          continue;
        }
        keyLo[slot] = lo;
        keyHi[slot] = id;
        crc[slot] = words[e + 2];
        volumeBlocks[id]++;
        entries++;
        if ((ef & ENTRY_DIRTY) === 0) {
          flags[slot] = FLAG_VALID;
          builder.add(slot, lo, id);
        } else {
          flags[slot] = FLAG_VALID | FLAG_DIRTY;
          this.dirty.push(slot);
        }
        if (older) this.olderSector.set(slot, sector);
        if ((ef & ENTRY_SUPERSEDED) !== 0) this.superseded.add(slot);
      }
    }
    this.segValid[seg] = entries;
    this.entries += entries;
    this.skipped += skipped;
  }

  /** The sequence number of the entry recovered in `slot` (its sector's). */
  private sealedAt(slot: number): number {
    return this.olderSector.get(slot) ?? this.segSeq[Math.floor(slot / this.g.blocksPerSegment)];
  }

  /** Leaves out the entry recovered in `slot` (flags 0, counts); its header is rewritten. */
  private drop(slot: number): void {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    this.bda.flags[slot] = 0;
    this.segValid[seg]--;
    this.volumeBlocks[this.bda.keyHi[slot]]--;
    this.entries--;
    this.skipped++;
    this.rewrite.add(seg);
  }

  /**
   * Reads the data of every dirty entry sealed above the durable mark (runs of adjacent slots,
   * READ_BATCH reads in flight) and drops those whose CRC-32C does not match (10.); then adds
   * the dirty entries left to the map builder.
   */
  async verify(engine: IoEngine, fd: number): Promise<void> {
    const { g, bda, mark } = this;
    const bps = g.blocksPerSegment;
    const bs = g.blockSize;
    const runs: number[] = [];
    for (const slot of this.dirty) {
      if (this.sealedAt(slot) <= mark) continue;
      if (runs.length > 0 && runs[runs.length - 2] + runs[runs.length - 1] === slot && slot % bps !== 0) runs[runs.length - 1]++;
      else runs.push(slot, 1);
    }
    const bad = new Uint8Array(bps);
    for (let r = 0; r < runs.length; r += 2 * READ_BATCH) {
      const batch = runs.slice(r, r + 2 * READ_BATCH);
      const bufs: Uint8Array[] = [];
      for (let j = 0; j < batch.length; j += 2) bufs.push(new Uint8Array(batch[j + 1] * bs));
      await Promise.all(bufs.map((b, j) => engine.readv(fd, [b], slotOffset(g, batch[2 * j]), true)));
      for (let j = 0; j < bufs.length; j++) {
        const first = batch[2 * j];
        const n = batch[2 * j + 1];
        this.verified += n;
        if (native.crc32cCheck(bufs[j], bs, bda.crc, first, bad) === 0) continue;
        for (let i = 0; i < n; i++) {
          if (bad[i] === 0) continue;
          this.drop(first + i);
          this.olderSector.delete(first + i);
          this.superseded.delete(first + i);
          this.torn++;
        }
      }
    }
    for (const slot of this.dirty) if ((bda.flags[slot] & FLAG_VALID) !== 0) this.builder.add(slot, bda.keyLo[slot], bda.keyHi[slot]);
  }

  /**
   * Builds the address map of the entries found (AddressMap.addBuilt: one pass in table order,
   * no key read unless two entries share a home and hash bits); a key found twice keeps the
   * entry of the newer header, a superseded one losing to any other, and the other header is
   * rewritten.
   */
  index_(): void {
    // The rank of an entry among those of its key: its sequence number; a superseded one loses
    // to any other (sequence numbers are below 2^52).
    const rank = (slot: number): number => this.sealedAt(slot) - (this.superseded.has(slot) ? 2 ** 52 : 0);
    this.map.addBuilt(this.builder, (a, b) => {
      const [keep, drop] = rank(a) >= rank(b) ? [a, b] : [b, a];
      this.drop(drop);
      return keep;
    });
  }

  /** The dirty slots still recovered, ascending. */
  dirtyValid(): number[] {
    return this.dirty.filter((slot) => (this.bda.flags[slot] & FLAG_VALID) !== 0);
  }
}
