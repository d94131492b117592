/**
 * Block descriptor array (BDA): one descriptor per cache block, i.e. per log slot. Slot `i`
 * lives at a fixed place in the log on the cache device (see log.ts), so the BDA index IS the
 * log address of the block.
 *
 * Memory layout (structure of arrays, N = number of slots):
 *
 *   keyLo  Uint32Array(N)  the volume block number (in cache blocks, < 2^32)
 *   keyHi  Uint8Array(N)   the volume id (< MAX_VOLUMES = 256)
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
 * 10 bytes per slot. The 40-bit key is what limits a cache: at most MAX_VOLUMES volume ids
 * (every volume name ever registered with the cache, and every shared parent, keeps its id:
 * cache.ts) and volumes of at most 2^32 cache blocks (16 TiB at the default 4 KiB cache
 * block, 256 TiB at 64 KiB); src/config checks what it can know, Cache.registerVolume the rest.
 * Segment headers on the device keep their 64-bit key (segment.ts), so the limits are RAM's
 * only. The whole index per cache block: CacheMap.ramParts() (cache-map.ts).
 * The key of an invalid slot is meaningless (but a SHADOW slot keeps its key).
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

/** Volume ids a cache can key (keyHi is one byte). */
export const MAX_VOLUMES = 0x100;
/** Largest block number a cache can key (keyLo is 32 bits). */
export const MAX_BLOCK_NUMBER = 2 ** 32 - 1;

/** Largest volume (bytes) a cache of `blockSize`-byte blocks can key. */
export function maxVolumeBytes(blockSize: number): number {
  return (MAX_BLOCK_NUMBER + 1) * blockSize;
}

/** Why a cache cannot key one more volume id (the error Cache.registerVolume and src/config give). */
export const TOO_MANY_VOLUMES = `a cache keys at most ${MAX_VOLUMES} volumes (each volume name ever registered with it, and each shared parent image, keeps its id)`;

/** Why a cache of `blockSize`-byte blocks cannot key a volume of `bytes` (or '' when it can). */
export function volumeTooLarge(bytes: number, blockSize: number): string {
  const max = maxVolumeBytes(blockSize);
  return bytes <= max ? '' : `${bytes} bytes exceed the ${max / 2 ** 40} TiB a cache of ${blockSize}-byte blocks keys per volume (2^32 blocks; a larger cache blockSize raises it)`;
}

/** The arrays' memory, shared with worker threads (recovery.ts fills a BDA on several threads). */
export interface BdaMemory {
  keyLo: SharedArrayBuffer;
  keyHi: SharedArrayBuffer;
  crc: SharedArrayBuffer;
  flags: SharedArrayBuffer;
}

export class BlockDescriptorArray {
  readonly size: number;
  readonly keyLo: Uint32Array;
  readonly keyHi: Uint8Array;
  readonly crc: Uint32Array;
  readonly flags: Uint8Array;

  /** `memory`: the arrays over shared memory ('shared': new, zeroed), else over their own. */
  constructor(size: number, memory?: BdaMemory | 'shared') {
    if (!Number.isInteger(size) || size <= 0 || size > 0x7fffffff) {
      throw new VhostError(`BDA size ${size} out of range`, 'EINVAL');
    }
    this.size = size;
    if (memory === 'shared') memory = { keyLo: new SharedArrayBuffer(4 * size), keyHi: new SharedArrayBuffer(size), crc: new SharedArrayBuffer(4 * size), flags: new SharedArrayBuffer(size) };
    this.keyLo = memory === undefined ? new Uint32Array(size) : new Uint32Array(memory.keyLo);
    this.keyHi = memory === undefined ? new Uint8Array(size) : new Uint8Array(memory.keyHi);
    this.crc = memory === undefined ? new Uint32Array(size) : new Uint32Array(memory.crc);
    this.flags = memory === undefined ? new Uint8Array(size) : new Uint8Array(memory.flags);
  }

  /** The arrays' shared memory (a BDA made with 'shared' or over a BdaMemory). */
  get memory(): BdaMemory {
    const { keyLo, keyHi, crc, flags } = this;
    if (!(keyLo.buffer instanceof SharedArrayBuffer)) throw new Error('BlockDescriptorArray: not over shared memory');
    return { keyLo: keyLo.buffer, keyHi: keyHi.buffer as SharedArrayBuffer, crc: crc.buffer as SharedArrayBuffer, flags: flags.buffer as SharedArrayBuffer };
  }

  isValid(i: number): boolean {
    return (this.flags[i] & FLAG_VALID) !== 0;
  }

  isReferenced(i: number): boolean {
    return (this.flags[i] & FLAG_REF) !== 0;
  }

  volumeOf(i: number): number {
    return this.keyHi[i];
  }

  blockOf(i: number): number {
    return this.keyLo[i];
  }

  /**
   * Makes slot i hold (volume, block), valid, reference bit clear (the caller sets crc[i]).
   * volume < MAX_VOLUMES and block <= MAX_BLOCK_NUMBER (registered volumes only: cache.ts).
   */
  set(i: number, volume: number, block: number): void {
    this.keyLo[i] = block;
    this.keyHi[i] = volume;
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
