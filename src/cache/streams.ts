/**
 * Sequential stream detector of one volume. Every request leaves its continuation point (the
 * block right after it) in a hashed table, with the length of the run it ends; a request that
 * starts at a remembered continuation point extends that run. Any number of interleaved streams
 * are followed this way (SPC-1 runs two sequential streams per BSU among far more random
 * requests); a random request only overwrites the one cell its continuation point hashes to, so
 * a stream survives about CELLS / (random requests between two of its requests) of them.
 * Used for admission (sequential cut-off, cached-store.ts) and read-ahead.
 *
 * Each run also carries its read-ahead mark (blocks before it were already requested by
 * read-ahead): see readAhead().
 *
 * Memory: CELLS x (continuation block, run length, read-ahead mark), the three side by side in
 * one Float64Array (a cell is CELL_STRIDE numbers, 32 bytes: a request touches the cache lines
 * of two cells, not six), 128 KiB per volume.
 */
export const CELLS = 4096;
/** Numbers per cell: continuation block (NEXT), run length (LENGTH), read-ahead mark (MARK), one unused. */
const CELL_STRIDE = 4;
const NEXT = 0;
const LENGTH = 1;
const MARK = 2;
/**
 * Shortest run (blocks, the current request included) that gets read-ahead: short runs are
 * mostly random walks that touched neighbouring blocks (SPC-1's hot spots read the blocks of an
 * 8-block leaf in turn), and read-ahead for them would never be read.
 */
export const READ_AHEAD_MIN_RUN = 16;

/** Index in `cells` of the cell of a continuation block. */
function cell(block: number): number {
  const h = Math.imul((block >>> 0) ^ Math.floor(block / 2 ** 32), 0x9e3779b1);
  return ((h ^ (h >>> 15)) >>> 0 & (CELLS - 1)) * CELL_STRIDE;
}

function emptyCells(): Float64Array {
  const cells = new Float64Array(CELLS * CELL_STRIDE);
  for (let c = 0; c < cells.length; c += CELL_STRIDE) cells[c + NEXT] = -1;
  return cells;
}

export class StreamDetector {
  private readonly cells = emptyCells();
  /** Cell (its index in `cells`) of the run the last observe() returned. */
  private current = 0;
  /** Run length the last observe() (or readAhead()) returned. */
  lastRun = 0;

  /**
   * Records a request of `count` blocks at `first`; returns the length in blocks of the run it
   * belongs to, this request included (= count for a request that starts a new run).
   */
  observe(first: number, count: number): number {
    const cells = this.cells;
    let c = cell(first);
    let len = count;
    let mark = 0;
    if (cells[c + NEXT] === first) {
      len += cells[c + LENGTH] as number;
      mark = cells[c + MARK] as number;
      cells[c + NEXT] = -1;
    }
    c = cell(first + count);
    cells[c + NEXT] = first + count;
    cells[c + LENGTH] = len;
    cells[c + MARK] = mark;
    this.current = c;
    this.lastRun = len;
    return len;
  }

  /**
   * Records a read of blocks first .. first + count - 1 and decides read-ahead: when the read
   * continues a run of READ_AHEAD_MIN_RUN blocks or more and the run is within window / 2 of what read-ahead already requested,
   * returns the first block to read ahead and moves the run's mark to the window's end
   * (first + count + window, clipped to `limit`, also left in lastEnd); else -1.
   */
  readAhead(first: number, count: number, window: number, limit: number): number {
    const end = first + count;
    const run = this.observe(first, count);
    if (run <= count || run < READ_AHEAD_MIN_RUN) return -1;
    const from = Math.max(end, this.cells[this.current + MARK] as number);
    if (from >= end + window / 2) return -1;
    const to = Math.min(end + window, limit);
    this.cells[this.current + MARK] = to;
    this.lastEnd = to;
    return from < to ? from : -1;
  }

  /** End (exclusive) of the range the last successful readAhead() returned the start of. */
  lastEnd = 0;
}
