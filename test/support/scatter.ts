/**
 * Scatter lists the suites build: views of one buffer (no copies) cut where a test wants, to
 * drive readv/writev-style APIs with many segment shapes. Moving data between lists and flat
 * buffers is src/util/iov.ts.
 */

/** Views of `data` cut at the given sizes; the rest, if any, in one more view. */
export function splitAt(data: Uint8Array, sizes: readonly number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pos = 0;
  for (const s of sizes) {
    out.push(data.subarray(pos, pos + s));
    pos += s;
  }
  if (pos < data.byteLength) out.push(data.subarray(pos));
  return out;
}

/** Views of `data` of 1 to 6 512-byte sectors each (the last one may be shorter), drawn from `r`. */
export function splitRandomly(data: Uint8Array, r: () => number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < data.byteLength) {
    const n = Math.min(data.byteLength - at, 512 * (1 + Math.floor(r() * 6)));
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}
