/**
 * The I/O primitives every store (backing file, cache device) is built on. Two engines keep
 * this contract: io_uring (native IoRing; completions on the Node event loop, no thread
 * hand-off, page-cache hits complete inline) and the libuv threadpool (node:fs) as fallback.
 *
 * Contract: every promise settles exactly once; a failure rejects with a VhostError whose
 * code is the errno name ('EIO', 'ENOSPC', ...). The caller keeps `bufs` untouched until the
 * promise settles. Offsets and lengths are byte numbers < 2^53.
 */
import * as fs from 'node:fs';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { iovLength } from '../util/iov';

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
   * readv() (bytes past end of file read as zeros) reporting to a callback instead of a promise
   * (the pass-through read path, FileStore.readThen): done(null) once every byte is read,
   * done(err) with the VhostError of a failed read. done is called exactly once, never before
   * readvThen returns, and must not throw.
   */
  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void;
  /**
   * An exact readv() of whole blocks (bufs' total a multiple of blockSize) that also checks
   * block j against its CRC-32C crcs[at + j], reporting to a callback instead of a promise (the
   * cache-hit path): done(null, true) when every block matched, done(null, false) when some did
   * not (the caller finds which), done(err, false) with the VhostError of a failed read. done
   * is called exactly once, never before readvChecked returns, and must not throw. The CRCs
   * are read when the read is issued (io_uring: checked natively as the completion is reaped,
   * no JS call) or when it completes (other engines, and an io_uring read the kernel returned
   * short): callers must hold them fixed or not depend on which (Log.readDirect).
   */
  readvChecked(
    fd: number,
    bufs: readonly Uint8Array[],
    offset: number,
    blockSize: number,
    crcs: Uint32Array,
    at: number,
    done: (err: Error | null, ok: boolean) => void,
  ): void;
  /** Writes every byte of bufs to fd at offset (short writes are continued); `background` as readv. */
  writev(fd: number, bufs: readonly Uint8Array[], offset: number, background?: boolean): Promise<void>;
  /**
   * Writes every byte of `bytes` to fd at offset before returning, on the calling thread; throws
   * VhostError (errno name). Only for a few bytes into the page cache, where waiting for a
   * completion would cost more than the copy (syncRegion where it cannot map: kill-marks.ts).
   */
  writeSync(fd: number, bytes: Uint8Array, offset: number): void;
  /**
   * [offset, offset + length) of fd for writeSync()s made often (the kill marks of the cache
   * superblock): region.write(bytes, at) is writeSync(fd, bytes, offset + at), as cheap as the
   * engine can make it (io_uring engine: a shared mapping of the range of a regular file, a
   * memory copy into the page cache with no system call; else writeSync). Close it before fd.
   */
  syncRegion(fd: number, offset: number, length: number): SyncRegion;
  fdatasync(fd: number): Promise<void>;
  /**
   * Starts writing the dirty page-cache pages of [offset, offset + length) of fd to the device
   * (sync_file_range with SYNC_FILE_RANGE_WRITE; length 0: to end of file, length < 2^32) and
   * waits for none of it: a later fdatasync then has less to write. It makes nothing durable
   * (only fdatasync does) and is pointless on an O_DIRECT fd (no dirty pages). Resolves once the
   * write-out is started; io_uring runs it on a kernel worker, the threadpool engine on a libuv
   * worker. Callers may ignore a failure: the fdatasync that follows reports what matters.
   */
  startWriteout(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate(2), e.g. FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE or FALLOC_FL_ZERO_RANGE. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** BLKDISCARD or BLKZEROOUT on a block device. */
  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void>;
  /** Waits for nothing: operations still in flight keep their buffers referenced. */
  close(): void;
}

/** IoEngine.syncRegion's writer. */
export interface SyncRegion {
  /** writeSync() of bytes at `at` of the region (throws VhostError: an errno name, ERANGE outside it). */
  write(bytes: Uint8Array, at: number): void;
  /** No write any more (idempotent). */
  close(): void;
}

/** syncRegion() through the engine's own writeSync (engines that cannot map the range). */
export function syncRegionOf(engine: Pick<IoEngine, 'writeSync'>, fd: number, offset: number, length: number): SyncRegion {
  let open = true;
  return {
    write(bytes: Uint8Array, at: number): void {
      if (!open) throw new VhostError('sync region closed', 'ESHUTDOWN');
      if (at < 0 || at + bytes.byteLength > length) throw new VhostError('write outside the sync region', 'ERANGE');
      engine.writeSync(fd, bytes, offset + at);
    },
    close(): void {
      open = false;
    },
  };
}

/** Whether every whole block of bufs matches its CRC-32C crcs[at + j] (one native call). */
export function blocksMatch(bufs: readonly Uint8Array[], blockSize: number, crcs: Uint32Array, at: number): boolean {
  const blocks = iovLength(bufs) / blockSize;
  if (bad.length < blocks) bad = new Uint8Array(blocks);
  // A single view is passed as such: the native side then skips reading an array.
  return native.crc32cCheck(bufs.length === 1 ? (bufs[0] as Uint8Array) : bufs, blockSize, crcs, at, bad) === 0;
}

/** blocksMatch() scratch: which blocks did not match (not read by anyone). */
let bad = new Uint8Array(16);

/** readvThen() of an engine whose reads are promises (the thread pool engine, test engines). */
export function readvThenOf(engine: Pick<IoEngine, 'readv'>, fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
  engine.readv(fd, bufs, offset).then(() => done(null), done);
}

/** readvChecked() of an engine whose reads are promises (the thread pool engine, test engines). */
export function readvCheckedOf(
  engine: Pick<IoEngine, 'readv'>,
  fd: number,
  bufs: readonly Uint8Array[],
  offset: number,
  blockSize: number,
  crcs: Uint32Array,
  at: number,
  done: (err: Error | null, ok: boolean) => void,
): void {
  engine.readv(fd, bufs, offset, true).then(
    () => done(null, blocksMatch(bufs, blockSize, crcs, at)),
    (err: Error) => done(err, false),
  );
}

/** The VhostError (errno name) of a failed node:fs call. */
export function ioError(err: unknown, what: string): VhostError {
  const e = err as NodeJS.ErrnoException;
  return new VhostError(`${what}: ${e.message}`, e.code ?? 'EIO');
}

/** writeSync of the engines on real descriptors: pwrite until every byte is written. */
export function writeAllSync(fd: number, bytes: Uint8Array, offset: number): void {
  let done = 0;
  while (done < bytes.byteLength) {
    let n: number;
    try {
      n = fs.writeSync(fd, bytes, done, bytes.byteLength - done, offset + done);
    } catch (err) {
      throw ioError(err, `write fd ${fd}`);
    }
    if (n === 0) throw new VhostError(`write fd ${fd}: no progress`, 'EIO');
    done += n;
  }
}
