/**
 * One thread's part of a recovery (recovery.ts: the rules, the orchestration, the merge): the
 * memory every thread of a recovery shares (RecoveryShared: the BDA, per-segment counts, the
 * ring of header batches the main thread reads, the control words, the address-map table) and
 * the scan of the header batches a thread claims (HeaderScan).
 *
 * Guarantees: a batch is scanned by exactly one thread, whole; each thread writes only the
 * BDA slots and per-segment words of the segments of its batches (so threads never write the
 * same word), and keeps everything else it finds (counts, dirty entries, the entries of older
 * sectors, superseded entries, segments to rewrite, its MapBuilder) to itself until
 * result(), which recovery.ts merges. The scan of a segment is the same on every thread (and
 * with no worker at all), so the merged state does not depend on which thread scanned what.
 */
import { type BuilderMemory, MapBuilder } from './address-map';
import { type BdaMemory, BlockDescriptorArray, FLAG_DIRTY, FLAG_VALID, MAX_BLOCK_NUMBER, MAX_VOLUMES } from './bda';
import type { VolumeRecord } from './metadata';
import { native } from '../native/binding';
import { checkSectors, ENTRIES_PER_SECTOR, ENTRY_AGE_SHIFT, ENTRY_DIRTY, ENTRY_SUPERSEDED, ENTRY_VALID, entryOffset, type Geometry, HEADER_SECTOR, sectorMark, uuidWords } from './segment';

/** Segment headers read per batch (in flight together), a thread's unit of work. */
export const READ_BATCH = 256;
/** Batches the main thread may read ahead of the scanning threads (ring slots). */
export const RING = 16;

/** Control words (Int32Array over RecoveryShared.ctl). */
export const enum Ctl {
  /** Batches read into the ring so far (in order). */
  Published = 0,
  /** Next batch to claim (Atomics.add). */
  Claimed = 1,
  /** Next range of homes to claim for placing (Atomics.add). */
  Ranges = 2,
  /** Set when the main thread gives up (an error): workers stop. */
  Abort = 3,
  /** Ctl.Done + k: batches finished in ring slot k (batch b is the floor(b / RING) + 1-th). */
  Done = 4,
}
export const CTL_WORDS = Ctl.Done + RING;

/** What every thread of one recovery shares (structured-clone safe: shared memory and plain data). */
export interface RecoveryShared {
  geometry: Geometry;
  uuid: Uint8Array;
  floor: number;
  volumes: readonly Pick<VolumeRecord, 'id' | 'epoch' | 'sizeBytes'>[];
  bda: BdaMemory;
  /** Per segment: entries recovered (u16), and the sequence number of its newest intact sectors (f64, -1: none). */
  segValid: SharedArrayBuffer;
  segSeq: SharedArrayBuffer;
  /** RING slots of READ_BATCH headers. */
  ring: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  /** The address map's table (filled range by range: address-map.ts RangePlacer). */
  table: SharedArrayBuffer;
  tableCapacity: number;
}

/** A thread's scan, handed to recovery.ts (structured-clone safe). */
export interface ScanResult {
  builder: BuilderMemory;
  /** Indexes the builder had no room for. */
  late: number[];
  entries: number;
  skipped: number;
  /** Segment of the highest sequence number found (-1: none), and that number. */
  best: number;
  bestSeq: number;
  mark: number;
  volumeBlocks: Uint32Array;
  rewrite: number[];
  /** Slots of the dirty entries recovered (not in the builder: recovery.ts checks them first). */
  dirty: number[];
  /** Pairs (slot, sequence number) of entries recovered from an older sector than their segment's newest. */
  older: number[];
  /** Pairs (slot, age: segment.ts ENTRY_AGE_SHIFT) of entries recovered from a superseded entry. */
  superseded: number[];
}

/** The first 32-bit word of the first entry of header sector k. */
function entryWord(k: number): number {
  return entryOffset(k * ENTRIES_PER_SECTOR) >>> 2;
}

/** The index being rebuilt, one header at a time, on one thread (recovery.ts has the rules). */
export class HeaderScan {
  private readonly g: Geometry;
  private readonly uuid: Uint32Array;
  private readonly floor: number;
  private readonly bda: BlockDescriptorArray;
  private readonly segValid: Uint16Array;
  private readonly segSeq: Float64Array;
  private readonly ring: Uint8Array;
  private readonly crcs: Uint32Array;
  /** Clean entries go to the map builder as they are found; dirty ones once checked (recovery.ts). */
  private readonly builder: MapBuilder;
  /**
   * Per volume id of an entry (16 bits on the device): its epoch (Infinity: unknown id, or an
   * id the BDA cannot hold) and its size in blocks (at most what the BDA can hold).
   */
  private readonly epoch = new Float64Array(65536).fill(Infinity);
  private readonly limit = new Float64Array(65536);
  private readonly seqs: Float64Array;
  private readonly volumeBlocks = new Uint32Array(MAX_VOLUMES);
  private readonly rewrite = new Set<number>();
  private readonly dirty: number[] = [];
  private readonly older: number[] = [];
  private readonly superseded: number[] = [];
  private entries = 0;
  private skipped = 0;
  private best = -1;
  private bestSeq = -1;
  private mark = 0;

  constructor(s: RecoveryShared) {
    const g = (this.g = s.geometry);
    this.uuid = uuidWords(s.uuid);
    this.floor = s.floor;
    this.bda = new BlockDescriptorArray(g.slots, s.bda);
    this.segValid = new Uint16Array(s.segValid);
    this.segSeq = new Float64Array(s.segSeq);
    this.ring = new Uint8Array(s.ring);
    this.crcs = new Uint32Array((READ_BATCH * g.headerSize) / HEADER_SECTOR);
    this.builder = new MapBuilder(s.tableCapacity, g.slots);
    for (const v of s.volumes) {
      if (v.id >= MAX_VOLUMES) continue;
      this.epoch[v.id] = v.epoch;
      this.limit[v.id] = Math.min(MAX_BLOCK_NUMBER + 1, v.sizeBytes === 0 ? Infinity : Math.ceil(v.sizeBytes / g.blockSize));
    }
    this.seqs = new Float64Array(g.headerSectors);
  }

  /** Scans batch b (segments [b * READ_BATCH, ...)), read into ring slot k. */
  batch(b: number, k: number): void {
    const g = this.g;
    const H = g.headerSize;
    const from = b * READ_BATCH;
    const n = Math.min(READ_BATCH, g.segments - from);
    const at = k * READ_BATCH * H;
    // Every sector of the batch in one call (the zero sectors after the entries too).
    native.crc32cBlocks(this.ring.subarray(at, at + n * H), HEADER_SECTOR, this.crcs, 0);
    const words = new Uint32Array(this.ring.buffer, at, (n * H) >>> 2);
    const sectors = H / HEADER_SECTOR;
    for (let j = 0; j < n; j++) this.segment(from + j, words, (j * H) >>> 2, j * sectors);
  }

  /** The header of segment `seg`, at word `at` of `words`; crcs[crcAt + k]: the CRC-32C of its sector k. */
  private segment(seg: number, words: Uint32Array, at: number, crcAt: number): void {
    const { g, seqs, floor } = this;
    checkSectors(words, at, this.crcs, crcAt, g, seg, this.uuid, seqs);
    let top = -1;
    for (let k = 0; k < g.headerSectors; k++) if (seqs[k] >= floor && seqs[k] > top) top = seqs[k];
    this.segSeq[seg] = top;
    if (top < 0) return;
    // Entries are 16-byte aligned, little endian (the host's order: metadata.ts refuses others).
    for (let k = 0; k < g.headerSectors; k++) if (seqs[k] >= floor) this.mark = Math.max(this.mark, sectorMark(words, at, k));
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
      // recovered (recovery.ts 11.), and the header is rewritten.
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
        if (older) this.older.push(slot, sector);
        if ((ef & ENTRY_SUPERSEDED) !== 0) this.superseded.push(slot, ef >>> ENTRY_AGE_SHIFT);
      }
    }
    this.segValid[seg] = entries;
    this.entries += entries;
    this.skipped += skipped;
  }

  result(): ScanResult {
    const { builder, entries, skipped, best, bestSeq, mark, volumeBlocks, dirty, older, superseded } = this;
    return { builder: builder.memory, late: builder.late, entries, skipped, best, bestSeq, mark, volumeBlocks, rewrite: [...this.rewrite], dirty, older, superseded };
  }
}
