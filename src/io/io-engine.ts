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
   * must never turn a missing block into zeros).
   */
  readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact?: boolean): Promise<void>;
  /** Writes every byte of bufs to fd at offset (short writes are continued). */
  writev(fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void>;
  fdatasync(fd: number): Promise<void>;
  /** fallocate(2), e.g. FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE or FALLOC_FL_ZERO_RANGE. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** BLKDISCARD or BLKZEROOUT on a block device. */
  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void>;
  /** Waits for nothing: operations still in flight keep their buffers referenced. */
  close(): void;
}
