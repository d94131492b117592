/**
 * virtio-blk driver-side formats (virtio 1.2, 5.2): the device configuration layout and the
 * request structures the ring driver writes into guest memory.
 *
 * struct virtio_blk_config (little-endian):
 *   +0  capacity u64 (512-byte sectors)   +8  size_max u32          +12 seg_max u32
 *   +16 geometry {cylinders u16, heads u8, sectors u8}              +20 blk_size u32
 *   +24 physical_block_exp u8  +25 alignment_offset u8  +26 min_io_size u16  +28 opt_io_size u32
 *   +32 writeback u8  +33 unused  +34 num_queues u16
 *   +36 max_discard_sectors u32  +40 max_discard_seg u32  +44 discard_sector_alignment u32
 *   +48 max_write_zeroes_sectors u32  +52 max_write_zeroes_seg u32  +56 write_zeroes_may_unmap u8
 *   +57 unused[3]  +60 max_secure_erase_sectors u32  +64 max_secure_erase_seg u32
 *   +68 secure_erase_sector_alignment u32   (72 bytes)
 *
 * Request: header {type u32, reserved u32, sector u64} (16 bytes, device-readable), data,
 * status u8 (device-writable). DISCARD / WRITE_ZEROES data is an array of 16-byte segments
 * {sector u64, num_sectors u32, flags u32 (bit 0 = unmap)}. GET_ID data is 20 device-writable
 * bytes (a NUL-padded string).
 */

import { BLK_CONFIG_SIZE_FULL, BLK_RANGE_F_UNMAP, BLK_RANGE_SIZE } from '../virtio-blk/spec';

export interface BlkConfig {
  /** Bytes actually returned by the device (fields past it read as 0). */
  size: number;
  capacity: bigint;
  sizeMax: number;
  segMax: number;
  geometry: { cylinders: number; heads: number; sectors: number };
  blkSize: number;
  topology: { physicalBlockExp: number; alignmentOffset: number; minIoSize: number; optIoSize: number };
  writeback: number;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  discardSectorAlignment: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: number;
  maxSecureEraseSectors: number;
  maxSecureEraseSeg: number;
  secureEraseSectorAlignment: number;
}

/** Parses a (possibly short) config image; missing fields read as 0. */
export function parseBlkConfig(data: Uint8Array): BlkConfig {
  const b = Buffer.alloc(BLK_CONFIG_SIZE_FULL);
  b.set(data.subarray(0, BLK_CONFIG_SIZE_FULL));
  return {
    size: data.length,
    capacity: b.readBigUInt64LE(0),
    sizeMax: b.readUInt32LE(8),
    segMax: b.readUInt32LE(12),
    geometry: { cylinders: b.readUInt16LE(16), heads: b[18], sectors: b[19] },
    blkSize: b.readUInt32LE(20),
    topology: {
      physicalBlockExp: b[24],
      alignmentOffset: b[25],
      minIoSize: b.readUInt16LE(26),
      optIoSize: b.readUInt32LE(28),
    },
    writeback: b[32],
    numQueues: b.readUInt16LE(34),
    maxDiscardSectors: b.readUInt32LE(36),
    maxDiscardSeg: b.readUInt32LE(40),
    discardSectorAlignment: b.readUInt32LE(44),
    maxWriteZeroesSectors: b.readUInt32LE(48),
    maxWriteZeroesSeg: b.readUInt32LE(52),
    writeZeroesMayUnmap: b[56],
    maxSecureEraseSectors: b.readUInt32LE(60),
    maxSecureEraseSeg: b.readUInt32LE(64),
    secureEraseSectorAlignment: b.readUInt32LE(68),
  };
}

/** A DISCARD / WRITE_ZEROES segment. */
export interface BlkRange {
  sector: number;
  sectors: number;
}

/** Writes a request header at `off` of `view`. */
export function writeBlkHeader(view: DataView, off: number, type: number, sector: number): void {
  view.setUint32(off, type >>> 0, true);
  view.setUint32(off + 4, 0, true);
  view.setBigUint64(off + 8, BigInt(sector), true);
}

/** Writes `ranges` as 16-byte segments at `off` of `view` (flags = unmap ? 1 : 0). */
export function writeBlkRanges(view: DataView, off: number, ranges: readonly BlkRange[], unmap: boolean): void {
  ranges.forEach((r, i) => {
    const o = off + i * BLK_RANGE_SIZE;
    view.setBigUint64(o, BigInt(r.sector), true);
    view.setUint32(o + 8, r.sectors >>> 0, true);
    view.setUint32(o + 12, unmap ? BLK_RANGE_F_UNMAP : 0, true);
  });
}
