/**
 * Block descriptor array (BDA): one descriptor per cache block, i.e. per log slot. Slot `i`
 * lives at a fixed place in the log on the cache device (see log.ts), so the BDA index IS the
 * log address of the block.
 *
 * Memory layout (structure of arrays, N = number of slots):
 *
 *   keyLo  Uint32Array(N)  bits 0..31 of the volume block number
 *   keyHi  Uint32Array(N)  bits 16..31: volume id (0..65535)
 *                          bits  0..15: bits 32..47 of the volume block number
 *   crc    Uint32Array(N)  CRC-32C of the block's data, checked on every hit read from the
 *                          cache device (and on read-ahead)
 *   flags  Uint8Array(N)   bit 0 VALID (the slot holds the block named by the key)
 *                          bits 1..2   reuse counter (cache-map.ts; bit 1 = FLAG_REF)
 *                          bit 3 PREFETCHED (inserted by read-ahead, not read since)
 *                          bit 4 REUSED (hit, or re-inserted from the ghost history, since it
 *                                was inserted: which ghost kind its eviction leaves, cache-map.ts)
 *                          bit 5 DIRTY (write-back: newer than the backing store, never evicted
 *                                before it is destaged)
 *                          bit 6 SHADOW (slot not valid: it held a dirty block that a newer
 *                                write-back copy replaced, not durable yet; headers still name
 *                                it, marked superseded, and the slot is not reused)
 *                          bit 7 RESERVED (slot not valid: it held a dirty block whose header
 *                                entry may still be valid on the device; not reused until a
 *                                header sealed after the drop is durable, log.ts)
 *
 * 13 bytes per slot. With the address map (address-map.ts: one Int32 per table entry at a
 * load factor of 0.7, ~5.7 bytes per slot) and the ghost history (ghost.ts, 1 byte per slot)
 * the whole index costs ~19.8 bytes per cache block.
 * The key of an invalid slot is meaningless. Block numbers are < 2^48 (1 EiB at 4 KiB).
 */
import { VhostError } from '../native/errors';

export const FLAG_VALID = 1;
export const FLAG_REF = 2;
/** Inserted by read-ahead and not read since (bit 3; bits 1..2 are the reuse counter). */
export const FLAG_PREFETCHED = 8;
/** Hit (or re-inserted from the ghost history) since it was inserted (bit 4). */
export const FLAG_REUSED = 16;
/** Write-back data not destaged yet (bit 5). */
export const FLAG_DIRTY = 32;
/** Invalid slot whose superseded dirty entry headers keep naming (bit 6; see the file comment). */
export const FLAG_SHADOW = 64;
/** Invalid slot kept out of reuse until its dropped dirty entry is durably gone (bit 7). */
export const FLAG_RESERVED = 128;

export const MAX_VOLUMES = 0x10000;
export const MAX_BLOCK_NUMBER = 2 ** 48 - 1;
const TWO32 = 2 ** 32;

/** Packs a volume id and the high 16 bits of a block number into keyHi. */
export function packHi(volume: number, block: number): number {
  return ((volume << 16) | Math.floor(block / TWO32)) >>> 0;
}

export function packLo(block: number): number {
  return block >>> 0;
}

export class BlockDescriptorArray {
  readonly size: number;
  readonly keyLo: Uint32Array;
  readonly keyHi: Uint32Array;
  readonly crc: Uint32Array;
  readonly flags: Uint8Array;

  constructor(size: number) {
    if (!Number.isInteger(size) || size <= 0 || size > 0x7fffffff) {
      throw new VhostError(`BDA size ${size} out of range`, 'EINVAL');
    }
    this.size = size;
    this.keyLo = new Uint32Array(size);
    this.keyHi = new Uint32Array(size);
    this.crc = new Uint32Array(size);
    this.flags = new Uint8Array(size);
  }

  isValid(i: number): boolean {
    return (this.flags[i] & FLAG_VALID) !== 0;
  }

  isReferenced(i: number): boolean {
    return (this.flags[i] & FLAG_REF) !== 0;
  }

  volumeOf(i: number): number {
    return this.keyHi[i] >>> 16;
  }

  blockOf(i: number): number {
    return (this.keyHi[i] & 0xffff) * TWO32 + this.keyLo[i];
  }

  /** True when slot i is valid and holds (volume, block) given as packed halves. */
  matches(i: number, lo: number, hi: number): boolean {
    return this.keyLo[i] === lo && this.keyHi[i] === hi && (this.flags[i] & FLAG_VALID) !== 0;
  }

  /** Makes slot i hold (volume, block), valid, reference bit clear (the caller sets crc[i]). */
  set(i: number, volume: number, block: number): void {
    this.keyLo[i] = packLo(block);
    this.keyHi[i] = packHi(volume, block);
    this.flags[i] = FLAG_VALID;
  }

  clear(i: number): void {
    this.flags[i] = 0;
  }

  isDirty(i: number): boolean {
    return (this.flags[i] & FLAG_DIRTY) !== 0;
  }

  reference(i: number): void {
    this.flags[i] |= FLAG_REF;
  }

  unreference(i: number): void {
    this.flags[i] &= ~FLAG_REF;
  }

  /** Number of valid slots in [from, to). */
  countValid(from: number, to: number): number {
    let n = 0;
    for (let i = from; i < to; i++) n += this.flags[i] & FLAG_VALID;
    return n;
  }

  /** Bytes of RAM held by the arrays. */
  get byteLength(): number {
    return this.keyLo.byteLength + this.keyHi.byteLength + this.crc.byteLength + this.flags.byteLength;
  }
}
