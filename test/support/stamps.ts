/**
 * Self-verifying test data shared by the suites: bytes stamped with their address and
 * generation, so a read that returns another block, another volume's block or an older write
 * is told apart from the expected one. Two forms:
 *   - text blocks (`stamp`, `stamps`): a 4 KiB block of `${vol}:${block}:${gen}:` repeated, for
 *     suites that drive a daemon or a device through a front end and name their volumes;
 *   - binary words (`stampBytes`, `stamped`, `verifyStamped`): every 8-byte word of a byte range
 *     holds [u32 LE byte address of the word (mod 2^32), u32 LE generation], for stores, caches
 *     and rings addressed by byte (any 8-byte-aligned piece names where it belongs).
 */

/** Bytes of one stamped block. */
export const STAMP_BLOCK = 4096;

/** A block filled with the text `${vol}:${block}:${gen}:` repeated (latin1). */
export function stamp(vol: string, block: number, gen: number): Buffer {
  const b = Buffer.alloc(STAMP_BLOCK);
  const tag = `${vol}:${block}:${gen}:`;
  for (let off = 0; off < STAMP_BLOCK; off += tag.length) b.write(tag, off, 'latin1');
  return b;
}

/** `blocks` consecutive stamped blocks from block `first`. */
export function stamps(vol: string, first: number, blocks: number, gen: number): Buffer {
  return Buffer.concat(Array.from({ length: blocks }, (_x, i) => stamp(vol, first + i, gen)));
}

/** Bytes of one binary stamp word: [u32 LE address, u32 LE generation]. */
export const STAMP_WORD = 8;

/** Stamps `into` as bytes [offset, offset + into.byteLength) of generation `gen` (8-byte aligned). */
export function stampBytes(into: Uint8Array, offset: number, gen: number): void {
  const dv = new DataView(into.buffer, into.byteOffset, into.byteLength);
  for (let i = 0; i + STAMP_WORD <= into.byteLength; i += STAMP_WORD) {
    dv.setUint32(i, (offset + i) >>> 0, true);
    dv.setUint32(i + 4, gen, true);
  }
}

/** A new buffer of `length` stamped bytes from `offset`. */
export function stamped(offset: number, length: number, gen: number): Buffer {
  const b = Buffer.alloc(length);
  stampBytes(b, offset, gen);
  return b;
}

/** Throws naming the first word of `buf` that is not the stamp of (offset + its position, gen). */
export function verifyStamped(buf: Uint8Array, offset: number, gen: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i + STAMP_WORD <= buf.byteLength; i += STAMP_WORD) {
    const addr = dv.getUint32(i, true);
    const g = dv.getUint32(i + 4, true);
    if (addr !== (offset + i) >>> 0 || g !== gen) {
      throw new Error(`byte ${offset + i} gen ${gen}: found byte ${addr} gen ${g}`);
    }
  }
}

/** The generation the stamp word at byte `at` of `buf` carries. */
export function stampGeneration(buf: Uint8Array, at = 0): number {
  return new DataView(buf.buffer, buf.byteOffset + at, 4 + 4).getUint32(4, true);
}
