/**
 * Scatter/gather lists (an I/O vector: Uint8Array segments read or written in order as one byte
 * range), written once for every layer that moves data between a segment list and a flat buffer
 * or works on part of a list. Nothing here allocates per segment except the returned arrays;
 * views share memory with the segments they come from.
 */

/** Total bytes of the segments. */
export function iovLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}

/**
 * Views of bytes [start, start + len) of the list (no copies); without len, everything from
 * start. Empty segments, and segments wholly outside the range, are left out.
 */
export function sliceIov(bufs: readonly Uint8Array[], start: number, len = Infinity): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = len;
  for (const b of bufs) {
    if (left === 0) break;
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    const n = Math.min(left, b.byteLength - skip);
    out.push(skip === 0 && n === b.byteLength ? b : b.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

/**
 * Copies src, from byte `skip` on, into the segments in order (scatter). Segments past the end
 * of src are left as they are; a segment straddling it gets the bytes src still has.
 */
export function scatterIov(src: Uint8Array, skip: number, bufs: readonly Uint8Array[]): void {
  let at = skip;
  for (const b of bufs) {
    if (at >= src.byteLength) break;
    b.set(src.subarray(at, at + b.byteLength));
    at += b.byteLength;
  }
}

/** Copies the segments in order into dst from byte `at` (gather); dst must hold them. */
export function gatherIov(bufs: readonly Uint8Array[], dst: Uint8Array, at = 0): void {
  let pos = at;
  for (const b of bufs) {
    dst.set(b, pos);
    pos += b.byteLength;
  }
}

/** The segments as one Buffer: a view when there is one segment, else a copy. */
export function flattenIov(bufs: readonly Uint8Array[]): Buffer {
  if (bufs.length === 1) {
    const s = bufs[0] as Uint8Array;
    return Buffer.from(s.buffer, s.byteOffset, s.byteLength);
  }
  return Buffer.concat(bufs);
}

/** Zeroes bytes [start, start + len) of the list. */
export function zeroIov(bufs: readonly Uint8Array[], start: number, len: number): void {
  for (const v of sliceIov(bufs, start, len)) v.fill(0);
}
