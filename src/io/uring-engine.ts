/**
 * IoEngine on the native IoRing (io_uring on the Node main thread).
 *
 * Each operation takes a tag: an index into `ops`, the table of pending operations, which
 * holds the promise settlers and keeps the caller's views referenced until the kernel is done
 * with them. Operations are prepared (SQE queued) at once; one flush per microtask turn hands
 * every queued SQE to the kernel with a single io_uring_enter, so requests dispatched in one
 * JS call cost one syscall. Completions come back as [tag, result] pairs, either from that
 * submit (inline completions, e.g. page-cache hits) or from the ring's onComplete (eventfd
 * wake-up on the loop).
 *
 * Short transfers are continued under the same tag; a read that reaches end of file fills the
 * rest with zeros (an exact read rejects with EIO instead). A negative result rejects with VhostError(code = errno name).
 *
 * readvThen() is a readv() with a callback instead of a promise (the pass-through read path: no
 * promise, no reaction job per read). readvChecked() is an exact readvThen() whose blocks are
 * checked against their CRC-32Cs by the ring as it reaps the completion (IoRing checked reads
 * against the ring's check table, set again only when a read checks against another CRC array:
 * no JS call for the check, no CRC array passed per read); only a read the kernel returned
 * short, and so continued, is checked here, once complete. The callbacks run from the
 * completion handler, never from the call.
 */
import { getSystemErrorMap } from 'node:util';
import { VhostError } from '../native/errors';
import { native } from '../native/binding';
import { CQE_CHECK, CQE_CHECK_NONE, CQE_CHECK_OK, CQE_RESULT, CQE_STRIDE, CQE_TAG, type NativeIoRing } from '../native/types';
import { sliceIov } from '../util/iov';
import { endOfFile } from './fs-engine';
import { blocksMatch, type IoEngine, type SyncRegion, syncRegionOf, writeAllSync } from './io-engine';

/** Views per READV/WRITEV SQE; longer scatter lists continue like a short transfer. */
const IOV_MAX = 1024;

const OP_READ = 0;
const OP_WRITE = 1;
const OP_FDATASYNC = 2;
const OP_FALLOCATE = 3;
const OP_WRITEOUT = 4;
type OpKind = typeof OP_READ | typeof OP_WRITE | typeof OP_FDATASYNC | typeof OP_FALLOCATE | typeof OP_WRITEOUT;
const OP_NAMES = ['readv', 'writev', 'fdatasync', 'fallocate', 'sync_file_range'] as const;

interface PendingOp {
  kind: OpKind;
  fd: number;
  /** READ/WRITE: views still to transfer (none empty), starting at `offset`; `left` bytes in all. */
  bufs: readonly Uint8Array[];
  left: number;
  offset: number;
  /** READ only: end of file rejects instead of reading as zeros. */
  exact: boolean;
  /** READ/WRITE: run by a kernel worker (IOSQE_ASYNC), never inline in the submit. */
  background: boolean;
  /** FALLOCATE: mode and length; WRITEOUT: length. */
  mode: number;
  length: number;
  /** Settles the op: the promise's resolve/reject, or (when set) readvThen's or readvChecked's callback. */
  resolve: () => void;
  reject: (err: Error) => void;
  then: ((err: Error | null, ok: boolean) => void) | null;
  /** readvChecked: the views asked for (bufs before any continuation), block size (0: not checked), CRC-32Cs and index of the first. */
  whole: readonly Uint8Array[];
  blockSize: number;
  crcs: Uint32Array | null;
  at: number;
}

const errnoMap = getSystemErrorMap();
// Kernel results that mean "try again": resubmitted as they are.
const EAGAIN = -11;
const EINTR = -4;

function errnoError(op: PendingOp, res: number): VhostError {
  const entry = errnoMap.get(res);
  // libuv's name; VhostError normalizes it (ENOTSUP -> EOPNOTSUPP).
  const code = entry?.[0] ?? `E${-res}`;
  const msg = entry?.[1] ?? 'unknown error';
  return new VhostError(`${OP_NAMES[op.kind]} fd ${op.fd}: ${msg}`, code);
}

/** The views of one SQE: at most IOV_MAX of them, a single one passed as such (no array for the ring to read). */
function sqeViews(bufs: readonly Uint8Array[]): Uint8Array | readonly Uint8Array[] {
  if (bufs.length === 1) return bufs[0] as Uint8Array;
  return bufs.length > IOV_MAX ? bufs.slice(0, IOV_MAX) : bufs;
}

/** Placeholder settler of an op not handed out yet. */
function unset(): void {}

/** Settles op as done; `check` is the CQE check field of its last completion. */
function succeed(op: PendingOp, check: number): void {
  if (op.then === null) return op.resolve();
  if (op.blockSize === 0) return op.then(null, true);
  // Checked by the ring unless the read was continued (then its last part alone came back).
  const ok = check !== CQE_CHECK_NONE ? check === CQE_CHECK_OK : blocksMatch(op.whole, op.blockSize, op.crcs as Uint32Array, op.at);
  op.then(null, ok);
}

function fail(op: PendingOp, err: Error): void {
  if (op.then !== null) op.then(err, false);
  else op.reject(err);
}

export interface UringEngineOptions {
  /** Submission queue entries (default 256); the completion queue gets twice as many. */
  entries?: number;
}

export class UringEngine implements IoEngine {
  readonly kind = 'io_uring' as const;
  private readonly ring: NativeIoRing;
  /** Pending operations by tag; free tags are reused (LIFO keeps the table small). */
  private readonly ops: (PendingOp | undefined)[] = [];
  private readonly freeTags: number[] = [];
  private flushQueued = false;
  private closed = false;
  /** The ring's check table (setCheckTable) and its block size. */
  private checkCrcs: Uint32Array | null = null;
  private checkBlockSize = 0;
  /**
   * Counters for tests and benchmarks: io_uring_enter calls made by flushes, and completions
   * delivered inline (by those submits) or asynchronously (eventfd wake-ups).
   */
  readonly stats = { submits: 0, inline: 0, async: 0 };
  private readonly flushFn = (): void => this.flush();

  /** Throws VhostError (errno name) when io_uring cannot be set up here. */
  constructor(options: UringEngineOptions = {}) {
    this.ring = new native.IoRing({
      entries: options.entries ?? 256,
      onComplete: (count) => {
        this.stats.async += count;
        this.handle(count);
      },
    });
  }

  /** Operations not settled yet. */
  get pending(): number {
    return this.ops.length - this.freeTags.length;
  }

  readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact = false, background = false): Promise<void> {
    return this.start(OP_READ, fd, bufs, offset, 0, 0, exact, background);
  }

  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
    this.readThen(fd, bufs, offset, false, 0, null, 0, done);
  }

  readvChecked(
    fd: number,
    bufs: readonly Uint8Array[],
    offset: number,
    blockSize: number,
    crcs: Uint32Array,
    at: number,
    done: (err: Error | null, ok: boolean) => void,
  ): void {
    this.readThen(fd, bufs, offset, true, blockSize, crcs, at, done);
  }

  writev(fd: number, bufs: readonly Uint8Array[], offset: number, background = false): Promise<void> {
    return this.start(OP_WRITE, fd, bufs, offset, 0, 0, false, background);
  }

  /** A pwrite on the calling thread (no ring: a worker's wake-up costs more than a small page-cache copy). */
  writeSync(fd: number, bytes: Uint8Array, offset: number): void {
    if (this.closed) throw new VhostError('io engine closed', 'ESHUTDOWN');
    writeAllSync(fd, bytes, offset);
  }

  /**
   * A regular file's range is mapped (native MappedFile: a write is a memory copy into the page
   * cache); anything else (a block device, a range the file does not hold) goes through writeSync.
   */
  syncRegion(fd: number, offset: number, length: number): SyncRegion {
    if (this.closed) throw new VhostError('io engine closed', 'ESHUTDOWN');
    try {
      // Its write() and close() are the region's (ERANGE, ESHUTDOWN and EIO checked natively).
      return new native.MappedFile(fd, offset, length);
    } catch {
      return syncRegionOf(this, fd, offset, length);
    }
  }

  fdatasync(fd: number): Promise<void> {
    return this.start(OP_FDATASYNC, fd, [], 0, 0, 0);
  }

  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    return this.start(OP_FALLOCATE, fd, [], offset, mode, length);
  }

  startWriteout(fd: number, offset: number, length: number): Promise<void> {
    return this.start(OP_WRITEOUT, fd, [], offset, 0, length);
  }

  /** BLKDISCARD/BLKZEROOUT are rare and block in the ioctl: a worker thread runs them. */
  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void> {
    if (this.closed) return Promise.reject(new VhostError('io engine closed', 'ESHUTDOWN'));
    return native.blockRange(fd, op, offset, length);
  }

  /**
   * Submits what is queued and closes the ring: operations in flight still settle (the ring
   * lives until the last one completes); new calls reject with ESHUTDOWN.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.flushQueued) this.flush();
    this.ring.close();
  }

  /** A read settled through `done` (readvThen; readvChecked when blockSize is not 0). */
  private readThen(
    fd: number,
    bufs: readonly Uint8Array[],
    offset: number,
    exact: boolean,
    blockSize: number,
    crcs: Uint32Array | null,
    at: number,
    done: (err: Error | null, ok: boolean) => void,
  ): void {
    const op = this.newOp(OP_READ, fd, bufs, offset, 0, 0, exact, false);
    if (op === null) {
      queueMicrotask(() => done(null, true));
      return;
    }
    if (op instanceof Error) {
      queueMicrotask(() => done(op, false));
      return;
    }
    op.then = done;
    op.blockSize = blockSize;
    op.crcs = crcs;
    op.at = at;
    this.enqueue(op);
  }

  private start(
    kind: OpKind,
    fd: number,
    bufs: readonly Uint8Array[],
    offset: number,
    mode: number,
    length: number,
    exact = false,
    background = false,
  ): Promise<void> {
    const op = this.newOp(kind, fd, bufs, offset, mode, length, exact, background);
    if (op === null) return Promise.resolve();
    if (op instanceof Error) return Promise.reject(op);
    return new Promise<void>((resolve, reject) => {
      op.resolve = resolve;
      op.reject = reject;
      this.enqueue(op);
    });
  }

  /** The op of a call (settlers unset), null when it transfers nothing, or the error of a closed engine. */
  private newOp(
    kind: OpKind,
    fd: number,
    bufs: readonly Uint8Array[],
    offset: number,
    mode: number,
    length: number,
    exact: boolean,
    background: boolean,
  ): PendingOp | VhostError | null {
    if (this.closed) return new VhostError('io engine closed', 'ESHUTDOWN');
    let rest: readonly Uint8Array[] = [];
    let left = 0;
    if (kind === OP_READ || kind === OP_WRITE) {
      // The caller's list as it is unless it holds empty views (the common case costs no copy).
      let empty = false;
      for (const b of bufs) {
        left += b.byteLength;
        if (b.byteLength === 0) empty = true;
      }
      if (left === 0) return null;
      rest = empty ? sliceIov(bufs, 0) : bufs;
    }
    return { kind, fd, bufs: rest, left, offset, exact, background, mode, length, resolve: unset, reject: unset, then: null, whole: rest, blockSize: 0, crcs: null, at: 0 };
  }

  private enqueue(op: PendingOp): void {
    const tag = this.freeTags.pop() ?? this.ops.length;
    this.ops[tag] = op;
    this.queue(tag, op);
  }

  /** Queues the SQE of `op` (again, for a continuation) and schedules the flush. */
  private queue(tag: number, op: PendingOp): void {
    try {
      switch (op.kind) {
        case OP_READ:
          // The ring checks a checked read's blocks unless it is a continuation (succeed()).
          if (op.blockSize !== 0 && op.bufs === op.whole && op.bufs.length <= IOV_MAX) {
            // The ring's check table: set when a read checks against another one (rare).
            if (op.crcs !== this.checkCrcs || op.blockSize !== this.checkBlockSize) {
              this.ring.setCheckTable(op.crcs as Uint32Array, op.blockSize);
              this.checkCrcs = op.crcs;
              this.checkBlockSize = op.blockSize;
            }
            this.ring.prepReadvChecked(op.fd, sqeViews(op.bufs), op.offset, tag, op.at);
          } else this.ring.prepReadv(op.fd, sqeViews(op.bufs), op.offset, tag, op.background);
          break;
        case OP_WRITE:
          this.ring.prepWritev(op.fd, sqeViews(op.bufs), op.offset, tag, op.background);
          break;
        case OP_FDATASYNC:
          this.ring.prepFdatasync(op.fd, tag);
          break;
        case OP_FALLOCATE:
          this.ring.prepFallocate(op.fd, op.mode, op.offset, op.length, tag);
          break;
        case OP_WRITEOUT:
          this.ring.prepSyncFileRange(op.fd, op.offset, op.length, tag);
          break;
      }
    } catch (err) {
      this.release(tag);
      fail(op, err instanceof VhostError ? err : new VhostError(String(err), 'EINVAL'));
      return;
    }
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushFn);
    }
  }

  private flush(): void {
    if (!this.flushQueued) return;
    this.flushQueued = false;
    this.stats.submits++;
    const count = this.ring.submit();
    if (count > 0) {
      this.stats.inline += count;
      this.handle(count);
    }
  }

  /** Handles `count` [tag, result] pairs of ring.completions. */
  private handle(count: number): void {
    const c = this.ring.completions;
    for (let i = 0; i < count; i++) {
      const base = i * CQE_STRIDE;
      this.complete(c[base + CQE_TAG], c[base + CQE_RESULT], c[base + CQE_CHECK]);
    }
  }

  private complete(tag: number, res: number, check: number): void {
    const op = this.ops[tag];
    if (op === undefined) return;
    if (res < 0) {
      if (res === EAGAIN || res === EINTR) {
        this.queue(tag, op);
        return;
      }
      this.release(tag);
      fail(op, errnoError(op, res));
      return;
    }
    if (op.kind === OP_READ || op.kind === OP_WRITE) {
      if (res === 0) {
        this.release(tag);
        if (op.kind === OP_WRITE) {
          fail(op, new VhostError(`writev fd ${op.fd}: no progress`, 'EIO'));
          return;
        }
        if (op.exact) {
          fail(op, endOfFile(op.fd, op.offset));
          return;
        }
        // End of file: what is left reads as zeros.
        for (const b of op.bufs) b.fill(0);
        succeed(op, CQE_CHECK_NONE);
        return;
      }
      if (res < op.left) {
        // A short transfer: go on with the rest.
        op.bufs = sliceIov(op.bufs, res);
        op.offset += res;
        op.left -= res;
        this.queue(tag, op);
        return;
      }
    }
    this.release(tag);
    succeed(op, check);
  }

  private release(tag: number): void {
    this.ops[tag] = undefined;
    this.freeTags.push(tag);
  }
}
