/**
 * Sequential stream detector of one volume. Every request leaves its continuation point (the
 * block right after it) in a hashed table, with the length of the run it ends; a request that
 * starts at a remembered continuation point extends that run. Any number of interleaved streams
 * are followed this way (SPC-1 runs two sequential streams per BSU among far more random
 * requests); a random request only overwrites the one cell its continuation point hashes to, so
 * a stream survives about CELLS / (random requests between two of its requests) of them.
 * Used for admission (sequential cut-off) and read-ahead.
 *
 * Memory: CELLS x (continuation block, run length) in two Float64Arrays, 64 KiB per volume.
 */
export const CELLS = 4096;

function cell(block: number): number {
  const h = Math.imul((block >>> 0) ^ Math.floor(block / 2 ** 32), 0x9e3779b1);
  return (h ^ (h >>> 15)) >>> 0 & (CELLS - 1);
}

export class StreamDetector {
  private readonly next = new Float64Array(CELLS).fill(-1);
  private readonly length = new Float64Array(CELLS);

  /**
   * Records a request of `count` blocks at `first`; returns the length in blocks of the run it
   * belongs to, this request included (= count for a request that starts a new run).
   */
  observe(first: number, count: number): number {
    let c = cell(first);
    let len = count;
    if (this.next[c] === first) {
      len += this.length[c];
      this.next[c] = -1;
    }
    c = cell(first + count);
    this.next[c] = first + count;
    this.length[c] = len;
    return len;
  }
}
