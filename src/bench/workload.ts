/** The request shape and generator contract shared by the SPC-1-like workload and the fio-like modes. */

/** One I/O request, in the generator's order (which is arrival order when paced). */
export interface BenchRequest {
  /** Target: the SPC-1 ASU (1, 2 or 3); the single-range modes always use 1. */
  asu: 1 | 2 | 3;
  /** SPC-1 stream kind 1..8 (see SPC1_STREAMS); 0 for the fio-like modes. */
  stream: number;
  /** SPC-1 business scaling unit 0..B-1 that issued it; 0 for the fio-like modes. */
  bsu: number;
  read: boolean;
  /** First block, in units of the workload's `blockSize`, relative to the start of the target. */
  block: number;
  /** Length in blocks (>= 1). */
  blocks: number;
  /** true when the request must go straight to the backing store (pblio: ASU3 writes). */
  bypassCache: boolean;
  /** Scheduled issue time in seconds from the start of the run; absent when the workload is unpaced. */
  at?: number;
}

export interface Workload {
  /** Bytes per block of `BenchRequest.block` / `blocks`. */
  readonly blockSize: number;
  /** Whether requests carry `at` (a runner paces to it) or not (a runner issues as fast as its depth allows). */
  readonly paced: boolean;
  /** The next request; generators are infinite. */
  next(): BenchRequest;
}
