/**
 * Log geometry and segments (on-device format version 4: docs/cache-format.md).
 *
 * Device layout: a 4 KiB superblock at offset 0, the volume table area (volume-table.ts: two
 * copies), the metadata area (metadata.ts; sized for the index of this many slots), then
 * `segments` segments of `stride` bytes from `dataOffset`. A segment is a header of
 * `headerSize` bytes (a multiple of 4 KiB) followed by `blocksPerSegment` cache blocks. Slot i
 * (= BDA index i) is block i % blocksPerSegment of segment floor(i / blocksPerSegment).
 *
 * Segment header: ceil(blocksPerSegment / ENTRIES_PER_SECTOR) self-describing sectors of
 * HEADER_SECTOR (512) bytes, then zeros up to headerSize. A sector is written whole or not at
 * all by any disk (512 B is the smallest atomic unit), so a header torn by a crash is a mix of
 * whole sectors of different writes, each recognised by its own CRC and sequence number.
 * Sector k (little endian):
 *   0  u32 magic 0x53434256 ('VBCS')       4  u16 format version (4)   6 u16 sector index k
 *   8  u32 segment index                   12 u32 blocksPerSegment     16 u32 blockSize
 *   20 u32 sequence low 32 bits            24 u32 sequence high bits
 *   28 16 bytes device uuid (superblock)   44 u32 zero
 *   48 ENTRIES_PER_SECTOR entries of 16 bytes for slots k * ENTRIES_PER_SECTOR..:
 *        u32 block number bits 0..31, u32 volume id << 16 | block number bits 32..47,
 *        u32 CRC-32C of the block's data, u32 flags (bit 0: valid, bit 1: dirty, i.e. write-back
 *        data newer than the backing store, bit 2: superseded, i.e. an older dirty copy kept
 *        named until the newer copy is durable; bits 3..31 of a superseded entry: its age,
 *        ENTRY_AGE_SHIFT, which ranks it against the other entries of its key)
 *   496 u32 durable mark low 32 bits       500 u32 durable mark high bits
 *   504 u32 zero                            508 u32 CRC-32C of bytes [0, 508)
 * Every header write (a segment write, or a header rewrite that invalidates entries, log.ts)
 * seals all sectors from the BDA with a new sequence number. The durable mark: every device
 * write sealed with a sequence number <= it had completed before an fdatasync that completed
 * before this sector was sealed (its data is on the device as written); recovery.ts reads the
 * data of dirty entries sealed above the highest mark found and checks it.
 *
 * SegmentBuffer is one RAM buffer of the log's pool: header + data, contiguous, so a segment
 * is written (and read ahead) with one I/O.
 */
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { type BlockDescriptorArray, FLAG_DIRTY, FLAG_SHADOW, FLAG_VALID } from './bda';
import { metadataAreaBytes } from './metadata';
import { VOLUME_TABLE_AREA } from './volume-table';

export const SEGMENT_MAGIC = 0x53434256;
export const SEGMENT_VERSION = 4;
export const SUPERBLOCK_SIZE = 4096;
/**
 * Address alignment of segment buffers, and the largest O_DIRECT alignment the log accepts:
 * every segment offset and length is a multiple of it (superblock, metadata area and header
 * sizes are multiples of 4 KiB, block sizes powers of two >= 4 KiB).
 */
export const SEGMENT_ALIGNMENT = 4096;
const ENTRY_SIZE = 16;
/** Header entry flags. */
export const ENTRY_VALID = 1;
export const ENTRY_DIRTY = 2;
export const ENTRY_SUPERSEDED = 4;
/**
 * Flag bits 3..31 of a superseded entry: its AGE, the entry's sequence number minus the last
 * one used before its copy was superseded (at least 1: every seal takes a new one), clamped to
 * ENTRY_AGE_MAX. The copy was its key's newest one through (sequence - age); recovery.ts ranks
 * it there (8.). 0: written by a build that did not record it (the copy loses to any other).
 */
export const ENTRY_AGE_SHIFT = 3;
const ENTRY_AGE_MAX = 2 ** (32 - ENTRY_AGE_SHIFT) - 1;
/**
 * An entry's second key word for volume id `volume` (the BDA's keyHi): the block number's bits
 * 32..47 are always zero in entries this version writes (bda.ts MAX_BLOCK_NUMBER); recovery
 * skips entries of older versions that hold keys the BDA cannot.
 */
export function entryKeyHi(volume: number): number {
  return volume * 0x10000;
}
/** Bytes of a header sector: written whole or not at all by a crash. */
export const HEADER_SECTOR = 512;
const SECTOR_ENTRIES_AT = 48;
const SECTOR_MARK_AT = 496;
const SECTOR_CRC_AT = HEADER_SECTOR - 4;
/** Header entries per sector. */
export const ENTRIES_PER_SECTOR = Math.floor((SECTOR_CRC_AT - SECTOR_ENTRIES_AT) / ENTRY_SIZE);
/**
 * CRC-32C of a whole sector whose last 4 bytes hold the CRC-32C of the rest (little endian):
 * the same for every content (the CRC residue), so one crc32cBlocks call checks many sectors.
 */
const SECTOR_RESIDUE = (() => {
  const s = new Uint8Array(HEADER_SECTOR);
  new DataView(s.buffer).setUint32(SECTOR_CRC_AT, native.crc32c(s.subarray(0, SECTOR_CRC_AT)), true);
  return native.crc32c(s);
})();

export interface Geometry {
  blockSize: number;
  segmentSize: number;
  blocksPerSegment: number;
  headerSize: number;
  /** headerSize + segmentSize. */
  stride: number;
  /** Header sectors holding entries (the rest of the header is zeros). */
  headerSectors: number;
  /** Device offset of the volume table area (SUPERBLOCK_SIZE) and its bytes (both copies). */
  tableOffset: number;
  tableBytes: number;
  /** Device offset of the metadata area (after the volume table area) and its bytes. */
  metadataOffset: number;
  metadataBytes: number;
  /** Device offset of segment 0: SUPERBLOCK_SIZE + tableBytes + metadataBytes. */
  dataOffset: number;
  segments: number;
  /** segments * blocksPerSegment. */
  slots: number;
  /** Bytes of the cache device in use (superblock + metadata area + segments). */
  usedBytes: number;
}

/** Blocks per segment, header size and stride of segments of this shape; throws EINVAL. */
function segmentShape(blockSize: number, segmentSize: number): { blocksPerSegment: number; headerSectors: number; headerSize: number; stride: number } {
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  if (!pow2(blockSize) || blockSize < 4096 || blockSize > 65536) {
    throw new VhostError(`cache block size ${blockSize}: must be a power of two in 4-64 KiB`, 'EINVAL');
  }
  if (!Number.isInteger(segmentSize) || segmentSize % blockSize !== 0 || segmentSize < blockSize) {
    throw new VhostError(`segment size ${segmentSize}: must be a multiple of the block size`, 'EINVAL');
  }
  const blocksPerSegment = segmentSize / blockSize;
  if (blocksPerSegment > 4096) {
    throw new VhostError(`segment size ${segmentSize}: more than 4096 blocks per segment`, 'EINVAL');
  }
  const headerSectors = Math.ceil(blocksPerSegment / ENTRIES_PER_SECTOR);
  const headerSize = Math.ceil((headerSectors * HEADER_SECTOR) / 4096) * 4096;
  return { blocksPerSegment, headerSectors, headerSize, stride: headerSize + segmentSize };
}

/** Geometry for a device of `deviceBytes`; throws EINVAL on unusable parameters. */
export function computeGeometry(deviceBytes: number, blockSize: number, segmentSize: number): Geometry {
  const { blocksPerSegment, headerSectors, headerSize, stride } = segmentShape(blockSize, segmentSize);
  const used = (n: number) => SUPERBLOCK_SIZE + VOLUME_TABLE_AREA + metadataAreaBytes(n * blocksPerSegment) + n * stride;
  // The metadata area grows by less than a segment's stride per segment: start from an upper
  // bound and step down until it all fits.
  let segments = Math.max(0, Math.floor((deviceBytes - used(0)) / stride));
  while (segments >= 2 && used(segments) > deviceBytes) segments--;
  if (segments < 2) {
    throw new VhostError(`cache device of ${deviceBytes} bytes holds fewer than 2 segments of ${stride} bytes and their metadata`, 'EINVAL');
  }
  const slots = segments * blocksPerSegment;
  if (slots > 0x7fffffff) throw new VhostError(`cache of ${slots} blocks is too large`, 'EINVAL');
  const metadataBytes = metadataAreaBytes(slots);
  return {
    blockSize,
    segmentSize,
    blocksPerSegment,
    headerSectors,
    headerSize,
    stride,
    tableOffset: SUPERBLOCK_SIZE,
    tableBytes: VOLUME_TABLE_AREA,
    metadataOffset: SUPERBLOCK_SIZE + VOLUME_TABLE_AREA,
    metadataBytes,
    dataOffset: SUPERBLOCK_SIZE + VOLUME_TABLE_AREA + metadataBytes,
    segments,
    slots,
    usedBytes: used(segments),
  };
}

/** Device bytes that hold exactly `segments` segments of this size (e.g. to size a cache file). */
export function deviceBytesFor(segments: number, blockSize = 4096, segmentSize = 512 * 1024): number {
  const { blocksPerSegment, stride } = segmentShape(blockSize, segmentSize);
  return SUPERBLOCK_SIZE + VOLUME_TABLE_AREA + metadataAreaBytes(segments * blocksPerSegment) + segments * stride;
}

/** Device offset of segment s (its header). */
export function segmentOffset(g: Geometry, s: number): number {
  return g.dataOffset + s * g.stride;
}

/** Device offset of slot i's data. */
export function slotOffset(g: Geometry, i: number): number {
  const s = Math.floor(i / g.blocksPerSegment);
  return g.dataOffset + s * g.stride + g.headerSize + (i - s * g.blocksPerSegment) * g.blockSize;
}

export const enum BufferState {
  /** Holds nothing useful. */
  Free,
  /** Read-ahead of `segment` in flight (`pending`). */
  Reading,
  /** The segment being filled (the hand is in it). */
  Filling,
  /** Write of `segment` in flight (`pending`). */
  Writing,
  /** Holds `segment` exactly as on the device. */
  Clean,
}

export class SegmentBuffer {
  readonly buf: Uint8Array;
  private readonly g: Geometry;
  state = BufferState.Free;
  segment = -1;
  /** Set when a block was put since the buffer started filling. */
  dirty = false;
  /** The read-ahead or write in flight (never rejects). */
  pending: Promise<void> = Promise.resolve();
  /** Use stamp for choosing which clean buffer to recycle. */
  lastUse = 0;

  constructor(g: Geometry) {
    this.g = g;
    this.buf = native.alignedBuffer(g.stride, SEGMENT_ALIGNMENT);
  }

  /** The data of block k (0 <= k < blocksPerSegment) of the segment held. */
  block(k: number): Uint8Array {
    const at = this.g.headerSize + k * this.g.blockSize;
    return this.buf.subarray(at, at + this.g.blockSize);
  }

  /** Copies `data` (one block) into block k. */
  putBlock(k: number, data: Uint8Array): void {
    this.buf.set(data, this.g.headerSize + k * this.g.blockSize);
    this.dirty = true;
  }

  /** The data of every block of the segment held (one view, for a batched CRC check). */
  get data(): Uint8Array {
    return this.buf.subarray(this.g.headerSize);
  }

  /** Forgets the per-block entries (a buffer reused for a segment holding no valid block). */
  clearEntries(): void {
    this.buf.fill(0, 0, this.g.headerSize);
  }

  /** Writes the header of segment `segment` from the BDA state (keys, CRC-32Cs) of its slots (sealHeader). */
  seal(bda: BlockDescriptorArray, seq: number, mark: number, uuid: Uint8Array, supersededAt: ReadonlyMap<number, number>): void {
    sealHeader(this.buf, this.g, this.segment, bda, seq, mark, uuid, null, supersededAt);
  }
}

/**
 * Writes into out[0, headerSize) the header of segment `seg` (every sector, sequence `seq`,
 * durable mark `mark`) from the BDA state (keys, CRC-32Cs, valid and dirty flags) of its slots;
 * SHADOW slots are named dirty and superseded, with their age (ENTRY_AGE_SHIFT) from
 * `supersededAt` (slot -> the last sequence number used before it became SHADOW; the log
 * records one for every SHADOW slot, a slot without one is sealed with age 0). `unwritten`
 * (by slot of the segment, 1 = its data is not on the device yet): those slots are sealed as
 * not valid.
 */
export function sealHeader(
  out: Uint8Array,
  g: Geometry,
  seg: number,
  bda: BlockDescriptorArray,
  seq: number,
  mark: number,
  uuid: Uint8Array,
  unwritten: Uint8Array | null,
  supersededAt: ReadonlyMap<number, number>,
): void {
  const view = new DataView(out.buffer, out.byteOffset, g.headerSize);
  out.fill(0, 0, g.headerSize);
  const first = seg * g.blocksPerSegment;
  for (let k = 0; k < g.headerSectors; k++) {
    const at = k * HEADER_SECTOR;
    view.setUint32(at, SEGMENT_MAGIC, true);
    view.setUint16(at + 4, SEGMENT_VERSION, true);
    view.setUint16(at + 6, k, true);
    view.setUint32(at + 8, seg, true);
    view.setUint32(at + 12, g.blocksPerSegment, true);
    view.setUint32(at + 16, g.blockSize, true);
    view.setUint32(at + 20, seq >>> 0, true);
    view.setUint32(at + 24, Math.floor(seq / 2 ** 32), true);
    out.set(uuid, at + 28);
    view.setUint32(at + SECTOR_MARK_AT, mark >>> 0, true);
    view.setUint32(at + SECTOR_MARK_AT + 4, Math.floor(mark / 2 ** 32), true);
    const from = k * ENTRIES_PER_SECTOR;
    const to = Math.min(g.blocksPerSegment, from + ENTRIES_PER_SECTOR);
    for (let j = from; j < to; j++) {
      const i = first + j;
      const f = bda.flags[i];
      if ((f & (FLAG_VALID | FLAG_SHADOW)) === 0 || (unwritten !== null && unwritten[j] !== 0)) continue;
      const e = at + SECTOR_ENTRIES_AT + (j - from) * ENTRY_SIZE;
      view.setUint32(e, bda.keyLo[i], true);
      view.setUint32(e + 4, entryKeyHi(bda.keyHi[i]), true);
      view.setUint32(e + 8, bda.crc[i], true);
      const shadow = (f & FLAG_SHADOW) !== 0;
      const flags = shadow
        ? ENTRY_VALID | ENTRY_DIRTY | ENTRY_SUPERSEDED | (Math.min(ENTRY_AGE_MAX, seq - (supersededAt.get(i) ?? seq)) << ENTRY_AGE_SHIFT)
        : ENTRY_VALID | ((f & FLAG_DIRTY) !== 0 ? ENTRY_DIRTY : 0);
      view.setUint32(e + 12, flags >>> 0, true);
    }
    view.setUint32(at + SECTOR_CRC_AT, native.crc32c(out.subarray(at, at + SECTOR_CRC_AT)), true);
  }
}

/**
 * Checks the sectors of a header read from the device (h = its headerSize bytes, 4-byte
 * aligned) of segment `seg`: seqs[k] = sector k's sequence number when it is intact (CRC), of
 * this format, geometry, segment and device, else -1. `crcs`: scratch of at least headerSectors.
 */
export function checkHeaderSectors(h: Uint8Array, g: Geometry, seg: number, uuid: Uint8Array, seqs: Float64Array, crcs: Uint32Array): void {
  native.crc32cBlocks(h.subarray(0, g.headerSectors * HEADER_SECTOR), HEADER_SECTOR, crcs, 0);
  const words = new Uint32Array(h.buffer, h.byteOffset, g.headerSize >>> 2);
  checkSectors(words, 0, crcs, 0, g, seg, uuidWords(uuid), seqs);
}

/** The device uuid as the 4 words a header sector holds it in (checkSectors). */
export function uuidWords(uuid: Uint8Array): Uint32Array {
  return new Uint32Array(uuid.slice(0, 16).buffer);
}

/** Words of a header sector. */
const SECTOR_WORDS = HEADER_SECTOR >>> 2;

/**
 * checkHeaderSectors on 32-bit words (little endian host, metadata.ts): the header starts at
 * word `at` of `words`, crcs[crcAt + k] is the CRC-32C of its whole sector k (crc32cBlocks over
 * many headers at once: recovery.ts), `uuid` from uuidWords().
 */
export function checkSectors(words: Uint32Array, at: number, crcs: Uint32Array, crcAt: number, g: Geometry, seg: number, uuid: Uint32Array, seqs: Float64Array): void {
  const { blocksPerSegment, blockSize } = g;
  for (let k = 0, w = at; k < g.headerSectors; k++, w += SECTOR_WORDS) {
    seqs[k] = -1;
    if (crcs[crcAt + k] !== SECTOR_RESIDUE || words[w] !== SEGMENT_MAGIC || words[w + 1] !== (SEGMENT_VERSION | (k << 16)) >>> 0) continue;
    if (words[w + 2] !== seg || words[w + 3] !== blocksPerSegment || words[w + 4] !== blockSize) continue;
    if (words[w + 7] !== uuid[0] || words[w + 8] !== uuid[1] || words[w + 9] !== uuid[2] || words[w + 10] !== uuid[3]) continue;
    seqs[k] = words[w + 5] + words[w + 6] * 2 ** 32;
  }
}

/** The durable mark of sector k of the header at word `at` of `words` (little endian). */
export function sectorMark(words: Uint32Array, at: number, k: number): number {
  const w = at + ((k * HEADER_SECTOR + SECTOR_MARK_AT) >>> 2);
  return words[w] + words[w + 1] * 2 ** 32;
}

/** Byte offset in a header of slot k's entry (k < blocksPerSegment). */
export function entryOffset(k: number): number {
  const sector = Math.floor(k / ENTRIES_PER_SECTOR);
  return sector * HEADER_SECTOR + SECTOR_ENTRIES_AT + (k - sector * ENTRIES_PER_SECTOR) * ENTRY_SIZE;
}

/** The header sector holding slot k's entry. */
export function entrySector(k: number): number {
  return Math.floor(k / ENTRIES_PER_SECTOR);
}
