/**
 * virtio-blk feature bits and the device configuration space (virtio 1.2, 5.2.4), built in
 * JS and served by the native device on GET_CONFIG.
 *
 * struct virtio_blk_config layout (little endian), as far as we fill it:
 *   0 u64 capacity (512-byte sectors)   32 u8  writeback
 *   8 u32 size_max                      33 u8  unused0
 *  12 u32 seg_max                       34 u16 num_queues
 *  16 u16 cylinders, u8 heads, u8 sectors (geometry, left 0)
 *  20 u32 blk_size                      36 u32 max_discard_sectors
 *  24 u8  physical_block_exp            40 u32 max_discard_seg
 *  25 u8  alignment_offset              44 u32 discard_sector_alignment
 *  26 u16 min_io_size (blocks)          48 u32 max_write_zeroes_sectors
 *  28 u32 opt_io_size (blocks)          52 u32 max_write_zeroes_seg
 *                                       56 u8  write_zeroes_may_unmap, u8 unused1[3]
 */
import {
  BLK_CONFIG_OFFSET_WRITEBACK,
  BLK_CONFIG_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from './spec';


/** Limits we announce; the dispatcher enforces the same numbers. */
export const SIZE_MAX = 1 << 20;
export const SEG_MAX = 126;
export const MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;
export const MAX_DISCARD_SEG = 32;
export const MAX_WRITE_ZEROES_SECTORS = (1 << 30) / SECTOR_SIZE;
export const MAX_WRITE_ZEROES_SEG = 32;
/**
 * Data bytes of reads and writes a volume works on at once; further requests wait (FIFO) until
 * completions bring it under the cap. A request larger than the cap runs alone.
 */
export const MAX_INFLIGHT_BYTES = 64 << 20;

export interface BlkGeometry {
  /** Bytes; a multiple of logicalBlockSize. */
  sizeBytes: number;
  logicalBlockSize: 512 | 4096;
  /** Physical block size (bytes) for topology, >= logicalBlockSize. */
  physicalBlockSize: number;
  /** Optimal I/O size in bytes (0 = none). */
  optimalIoSize: number;
  numQueues: number;
  readOnly: boolean;
  discard: boolean;
  writeZeroes: boolean;
  writeback: boolean;
}

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** Device feature bits for GET_FEATURES (the native layer adds the transport bits). */
export function blkFeatures(g: BlkGeometry): bigint {
  let f =
    bit(VIRTIO_BLK_F_SIZE_MAX) |
    bit(VIRTIO_BLK_F_SEG_MAX) |
    bit(VIRTIO_BLK_F_BLK_SIZE) |
    bit(VIRTIO_BLK_F_TOPOLOGY) |
    bit(VIRTIO_BLK_F_FLUSH) |
    bit(VIRTIO_BLK_F_CONFIG_WCE) |
    bit(VIRTIO_BLK_F_MQ);
  if (g.readOnly) f |= bit(VIRTIO_BLK_F_RO);
  if (g.discard && !g.readOnly) f |= bit(VIRTIO_BLK_F_DISCARD);
  if (g.writeZeroes && !g.readOnly) f |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
  return f;
}

/** Serializes the config space for `g`. */
export function encodeBlkConfig(g: BlkGeometry): Buffer {
  const b = Buffer.alloc(BLK_CONFIG_SIZE);
  const lbs = g.logicalBlockSize;
  const lbsSectors = lbs / SECTOR_SIZE;
  b.writeBigUInt64LE(BigInt(Math.floor(g.sizeBytes / SECTOR_SIZE)), 0);
  b.writeUInt32LE(SIZE_MAX, 8);
  b.writeUInt32LE(SEG_MAX, 12);
  b.writeUInt32LE(lbs, 20);
  b.writeUInt8(Math.max(0, Math.log2(g.physicalBlockSize / lbs)) | 0, 24);
  b.writeUInt8(0, 25);
  b.writeUInt16LE(1, 26);
  b.writeUInt32LE(Math.floor(g.optimalIoSize / lbs), 28);
  b.writeUInt8(g.writeback ? 1 : 0, BLK_CONFIG_OFFSET_WRITEBACK);
  b.writeUInt16LE(g.numQueues, 34);
  if (g.discard && !g.readOnly) {
    b.writeUInt32LE(MAX_DISCARD_SECTORS, 36);
    b.writeUInt32LE(MAX_DISCARD_SEG, 40);
    b.writeUInt32LE(lbsSectors, 44);
  }
  if (g.writeZeroes && !g.readOnly) {
    b.writeUInt32LE(MAX_WRITE_ZEROES_SECTORS, 48);
    b.writeUInt32LE(MAX_WRITE_ZEROES_SEG, 52);
    b.writeUInt8(1, 56);
  }
  return b;
}
