/**
 * Log geometry and segments (on-device format: docs/cache-format.md).
 *
 * Device layout: a 4 KiB superblock at offset 0, the metadata area (metadata.ts; sized for the
 * index of this many slots), then `segments` segments of `stride` bytes from `dataOffset`.
 * A segment is a header of `headerSize` bytes (a multiple of 4 KiB) followed by
 * `blocksPerSegment` cache blocks. Slot i (= BDA index i) is block i % blocksPerSegment of
 * segment floor(i / blocksPerSegment).
 *
 * Segment header (little endian; CRC-32 = zlib/IEEE 802.3 polynomial):
 *   0  u32 magic 0x53434256 ('VBCS')      4  u16 format version (1)   6 u16 0
 *   8  u32 headerSize                      12 u32 blockSize
 *   16 u32 blocksPerSegment                20 u32 segment index
 *   24 u32 sequence low 32 bits            28 u32 sequence high bits
 *   32 16 bytes device uuid (from the superblock)
 *   48 u32 valid blocks in the segment     52..59 zero
 *   60 u32 CRC-32 of bytes [0, headerSize) computed with this field zero
 *   64 blocksPerSegment entries of 16 bytes:
 *        u32 block number bits 0..31, u32 volume id << 16 | block number bits 32..47,
 *        u32 CRC-32C of the block's data, u32 flags (bit 0: valid)
 *
 * SegmentBuffer is one RAM buffer of the log's pool: header + data, contiguous, so a segment
 * is written (and read ahead) with one I/O.
 */
import { crc32 } from 'node:zlib';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { BlockDescriptorArray } from './bda';
import { metadataAreaBytes } from './metadata';

export const SEGMENT_MAGIC = 0x53434256;
export const SEGMENT_VERSION = 2;
export const SUPERBLOCK_SIZE = 4096;
/**
 * Address alignment of segment buffers, and the largest O_DIRECT alignment the log accepts:
 * every segment offset and length is a multiple of it (superblock, metadata area and header
 * sizes are multiples of 4 KiB, block sizes powers of two >= 4 KiB).
 */
export const SEGMENT_ALIGNMENT = 4096;
const ENTRY_SIZE = 16;
const ENTRIES_AT = 64;
const CRC_AT = 60;

export interface Geometry {
  blockSize: number;
  segmentSize: number;
  blocksPerSegment: number;
  headerSize: number;
  /** headerSize + segmentSize. */
  stride: number;
  /** Bytes of the metadata area (at SUPERBLOCK_SIZE). */
  metadataBytes: number;
  /** Device offset of segment 0: SUPERBLOCK_SIZE + metadataBytes. */
  dataOffset: number;
  segments: number;
  /** segments * blocksPerSegment. */
  slots: number;
  /** Bytes of the cache device in use (superblock + metadata area + segments). */
  usedBytes: number;
}

/** Blocks per segment, header size and stride of segments of this shape; throws EINVAL. */
function segmentShape(blockSize: number, segmentSize: number): { blocksPerSegment: number; headerSize: number; stride: number } {
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
  const headerSize = Math.ceil((ENTRIES_AT + ENTRY_SIZE * blocksPerSegment) / 4096) * 4096;
  return { blocksPerSegment, headerSize, stride: headerSize + segmentSize };
}

/** Geometry for a device of `deviceBytes`; throws EINVAL on unusable parameters. */
export function computeGeometry(deviceBytes: number, blockSize: number, segmentSize: number): Geometry {
  const { blocksPerSegment, headerSize, stride } = segmentShape(blockSize, segmentSize);
  const used = (n: number) => SUPERBLOCK_SIZE + metadataAreaBytes(n * blocksPerSegment) + n * stride;
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
    headerSize,
    stride,
    metadataBytes,
    dataOffset: SUPERBLOCK_SIZE + metadataBytes,
    segments,
    slots,
    usedBytes: used(segments),
  };
}

/** Device bytes that hold exactly `segments` segments of this size (e.g. to size a cache file). */
export function deviceBytesFor(segments: number, blockSize = 4096, segmentSize = 512 * 1024): number {
  const { blocksPerSegment, stride } = segmentShape(blockSize, segmentSize);
  return SUPERBLOCK_SIZE + metadataAreaBytes(segments * blocksPerSegment) + segments * stride;
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
  private readonly view: DataView;
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
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
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

  /** Writes the header of segment `segment` from the BDA state (keys, CRC-32Cs) of its slots. */
  seal(bda: BlockDescriptorArray, seq: number, uuid: Uint8Array): void {
    const { view, g } = this;
    const first = this.segment * g.blocksPerSegment;
    this.buf.fill(0, 0, ENTRIES_AT);
    view.setUint32(0, SEGMENT_MAGIC, true);
    view.setUint16(4, SEGMENT_VERSION, true);
    view.setUint32(8, g.headerSize, true);
    view.setUint32(12, g.blockSize, true);
    view.setUint32(16, g.blocksPerSegment, true);
    view.setUint32(20, this.segment, true);
    view.setUint32(24, seq >>> 0, true);
    view.setUint32(28, Math.floor(seq / 2 ** 32), true);
    this.buf.set(uuid, 32);
    let valid = 0;
    for (let k = 0; k < g.blocksPerSegment; k++) {
      const e = ENTRIES_AT + k * ENTRY_SIZE;
      if (bda.isValid(first + k)) {
        view.setUint32(e, bda.keyLo[first + k], true);
        view.setUint32(e + 4, bda.keyHi[first + k], true);
        view.setUint32(e + 8, bda.crc[first + k], true);
        view.setUint32(e + 12, 1, true);
        valid++;
      } else {
        view.setUint32(e, 0, true);
        view.setUint32(e + 4, 0, true);
        view.setUint32(e + 8, 0, true);
        view.setUint32(e + 12, 0, true);
      }
    }
    view.setUint32(48, valid, true);
    view.setUint32(CRC_AT, crc32(this.buf.subarray(0, g.headerSize)), true);
  }

  /**
   * After a read-ahead: true when the header is intact and belongs to this segment of this
   * device. Zeroes the CRC field while checking (seal() rewrites it).
   */
  headerIntact(uuid: Uint8Array): boolean {
    const { view, g } = this;
    if (view.getUint32(0, true) !== SEGMENT_MAGIC || view.getUint16(4, true) !== SEGMENT_VERSION) return false;
    if (view.getUint32(8, true) !== g.headerSize || view.getUint32(12, true) !== g.blockSize) return false;
    if (view.getUint32(16, true) !== g.blocksPerSegment || view.getUint32(20, true) !== this.segment) return false;
    for (let i = 0; i < 16; i++) if (this.buf[32 + i] !== uuid[i]) return false;
    const stored = view.getUint32(CRC_AT, true);
    view.setUint32(CRC_AT, 0, true);
    return crc32(this.buf.subarray(0, g.headerSize)) === stored;
  }

  /**
   * After a read-ahead with an intact header: true when entry k is valid and names the key and
   * CRC-32C (the data itself is checked against the CRC by the caller, in one batch).
   */
  entryMatches(k: number, lo: number, hi: number, crc: number): boolean {
    const e = ENTRIES_AT + k * ENTRY_SIZE;
    const v = this.view;
    if ((v.getUint32(e + 12, true) & 1) === 0) return false;
    return v.getUint32(e, true) === lo && v.getUint32(e + 4, true) === hi && v.getUint32(e + 8, true) === crc;
  }
}
