/**
 * The I/O primitives every store (backing file, cache device) is built on. Two engines keep
 * this contract: io_uring (native IoRing; completions on the Node event loop, no thread
 * hand-off, page-cache hits complete inline) and the libuv threadpool (node:fs) as fallback.
 *
 * Contract: every promise settles exactly once; a failure rejects with a VhostError whose
 * code is the errno name ('EIO', 'ENOSPC', ...). The caller keeps `bufs` untouched until the
 * promise settles. Offsets and lengths are byte numbers < 2^53.
 */
export interface IoEngine {
  readonly kind: 'io_uring' | 'threadpool';
  /**
   * Fills every byte of bufs from fd at offset. Bytes past end of file read as zeros, unless
   * `exact`: then reaching end of file rejects with VhostError code 'EIO' (a cache device
   * must never turn a missing block into zeros). `background`: the engine may run it apart from
   * the requests submitted with it, so a large transfer (a cache segment) does not delay them
   * (io_uring: a kernel worker; the thread pool engine always works so).
   */
  readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact?: boolean, background?: boolean): Promise<void>;
  /**
   * readv() reporting to a callback (null or the VhostError), called exactly once and never
   * before readvThen returns (done must not throw): the hot read paths settle without a promise
   * per read.
   */
  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, exact: boolean, done: (err: Error | null) => void): void;
  /** Writes every byte of bufs to fd at offset (short writes are continued); `background` as readv. */
  writev(fd: number, bufs: readonly Uint8Array[], offset: number, background?: boolean): Promise<void>;
  fdatasync(fd: number): Promise<void>;
  /** fallocate(2), e.g. FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE or FALLOC_FL_ZERO_RANGE. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** BLKDISCARD or BLKZEROOUT on a block device. */
  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void>;
  /** Waits for nothing: operations still in flight keep their buffers referenced. */
  close(): void;
}

/** readvThen() of an engine whose reads are promises (the thread pool engine, test engines). */
export function readvThenOf(
  engine: Pick<IoEngine, 'readv'>,
  fd: number,
  bufs: readonly Uint8Array[],
  offset: number,
  exact: boolean,
  done: (err: Error | null) => void,
): void {
  engine.readv(fd, bufs, offset, exact).then(() => done(null), done);
}
