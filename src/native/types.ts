/**
 * Types of the C++ addon's exports: the contract between native/ and src/. Each native class
 * is declared here with the rules it keeps. Options are validated once, in src/config, against
 * the limits native exports (NativeLimits); the native side still validates everything that
 * comes from a front end (untrusted).
 */

/**
 * Layout of VhostDevice.requests (a Float64Array owned by native, reused for every
 * onRequests call; copy what you need before returning). Request i occupies
 * [i * REQ_STRIDE, (i + 1) * REQ_STRIDE):
 *   +0 tag       the request tag: opaque in-flight id (native: MakeTag, kTag* in
 *               native/vhost/limits.h); pass it back to complete()
 *   +1 type      VIRTIO_BLK_T_* (uint32 from the header)
 *   +2 sector    512-byte sector from the header; values >= 2^53 are clamped to 2^53
 *   +3 dataLen   total bytes of the data segments (between header and status byte)
 *   +4 firstSeg  index of the first data segment in the `segs` argument
 *   +5 segCount  number of data segments
 */
export const REQ_TAG = 0;
export const REQ_TYPE = 1;
export const REQ_SECTOR = 2;
export const REQ_DATA_LEN = 3;
export const REQ_FIRST_SEG = 4;
export const REQ_SEG_COUNT = 5;
export const REQ_STRIDE = 6;

/** Events the native device reports to its owner (logging and state changes). */
export type VhostDeviceEvent =
  | { type: 'listening'; path: string | null }
  | { type: 'connected' }
  | { type: 'disconnected'; reason: string }
  /**
   * A protocol or ring violation: the connection was dropped, the export listens again. Always
   * followed by 'disconnected' (same reason), so 'connected'/'disconnected' stay paired.
   */
  | { type: 'broken'; reason: string }
  | { type: 'queue-started'; queue: number; size: number }
  | { type: 'queue-stopped'; queue: number }
  /** SET_CONFIG from the front end: JS decides (e.g. writeback toggle) and calls setConfig(). */
  | { type: 'config-write'; offset: number; data: Uint8Array }
  /** One line for the logger; `msg` names the vhost-user message where there is one. */
  | { type: 'log'; level: 'trace' | 'debug' | 'info' | 'warn' | 'error'; msg: string; fields?: Record<string, unknown> };

export interface VhostDeviceOptions {
  /** Exactly one of socketPath and fd. */
  socketPath?: string;
  /** Mode of the created socket file (default 0o600). */
  socketMode?: number;
  /** Peer uids (SO_PEERCRED) allowed to connect; absent or empty: anyone who can reach the socket. */
  allowUids?: number[];
  /** An inherited unix stream socket: listening (accept from it) or already connected. */
  fd?: number;
  /** Answer to GET_QUEUE_NUM: the most queues a front end may use (1..limits.maxQueues). */
  maxQueues: number;
  /** Largest vring size accepted by SET_VRING_NUM (power of two in limits.minQueueSize..maxQueueSize). */
  maxQueueSize: number;
  /**
   * seg_max and size_max as announced in the config: a chain with more than maxSegments + 2
   * descriptors (header, status) or a data piece over maxSegmentSize bytes (at most 1 GiB) is
   * answered IOERR natively, as is a chain longer than its queue.
   */
  maxSegments: number;
  maxSegmentSize: number;
  /**
   * virtio-blk device feature bits chosen by JS (RO, BLK_SIZE, SEG_MAX, SIZE_MAX, TOPOLOGY,
   * MQ, FLUSH, CONFIG_WCE, DISCARD, WRITE_ZEROES). Native adds VIRTIO_F_VERSION_1,
   * VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX and VHOST_USER_F_PROTOCOL_FEATURES.
   */
  deviceFeatures: bigint;
  /** The virtio_blk_config image GET_CONFIG serves (at most 256 bytes). */
  config: Uint8Array;
  /**
   * Called once per kick per queue with every request that was available. `count` requests
   * are in `device.requests` (see REQ_*); `segs` holds the data segments as views into guest
   * memory (device-writable for IN and GET_ID, device-readable for OUT, DISCARD,
   * WRITE_ZEROES). Each view lies in a window ArrayBuffer of at most 2 GiB over the region.
   * The memory stays mapped until the request is completed, even after the front end changes
   * its memory table or disconnects (then JS writes no longer reach the guest); once no
   * request over a departed mapping is left, its windows are detached (views become empty)
   * and it is unmapped at once.
   */
  onRequests: (queue: number, count: number, segs: Uint8Array[]) => void;
  onEvent: (event: VhostDeviceEvent) => void;
}

export interface NativeVhostDevice {
  /** See REQ_* for the layout. */
  readonly requests: Float64Array;
  /**
   * Completes `count` requests of `queue`: completions holds pairs [tag, status].
   * Used-ring entries are written at once; the guest is notified at most once per event-loop
   * turn (EVENT_IDX honoured). Tags that are not in flight (e.g. from before a disconnect)
   * are ignored.
   */
  complete(queue: number, count: number, completions: Uint32Array): void;
  /** Replaces the config image (e.g. after a resize or a writeback toggle). */
  setConfig(config: Uint8Array): void;
  /** Requests handed to JS and not yet completed, per queue. */
  inflight(): number[];
  /** true while a front end is connected. */
  readonly connected: boolean;
  /** Stops listening, drops any connection, removes the socket file it created. */
  close(): void;
}

/**
 * Front end (driver side) primitives, used by src/frontend to drive a vhost-user back end
 * without a VM (tests and benchmarks). See native/frontend/*.cc.
 */

/**
 * `new GuestRam(size, populate?)`: a sparse memfd of `size` bytes (positive multiple of the page
 * size, at most 1 TiB); `populate` pre-faults `buffer`. `buffer` is an external ArrayBuffer over
 * the first min(size, 2 GiB) bytes (same object on every read); window() maps any other range.
 * close() closes the fd; each mapping is unmapped once JS holds no view of it.
 */
export interface NativeGuestRam {
  /** The memfd (-1 after close()). */
  readonly fd: number;
  readonly size: number;
  readonly buffer: ArrayBuffer;
  /** A new mapping of [offset, offset + length): offset page aligned, length <= 2 GiB. */
  window(offset: number, length: number): ArrayBuffer;
  close(): void;
}

/**
 * `new EventFd()`: an eventfd (non-blocking, close-on-exec) for a vring kick or call.
 * watch(cb) polls it on the Node loop: each wake-up drains the counter, then calls cb(count).
 * While watched the object stays alive and keeps the loop alive; unwatch()/close() stop that
 * (safe from inside the callback).
 */
export interface NativeEventFd {
  /** -1 after close(). */
  readonly fd: number;
  /** Adds 1 to the counter. Throws EBADF once closed. */
  signal(): void;
  /** Reads and resets the counter; 0 if it was zero. */
  drain(): number;
  /** Throws EBUSY if already watched. */
  watch(callback: (count: number) => void): void;
  unwatch(): void;
  close(): void;
}

export interface FrontendChannelOptions {
  /** Exactly one of path (connect to a listening unix socket) and fd (a connected socket, owned). */
  path?: string;
  fd?: number;
  /**
   * One complete vhost-user message (12-byte header + payload, a copy). `fds` arrived with its
   * bytes and belong to the callee (close them).
   */
  onMessage: (message: Buffer, fds: number[]) => void;
  /**
   * Runs once when the connection ends: null for a clean end between messages, else a
   * VhostError (errno name, or EPROTO for a payload over 64 KiB or an end inside a message).
   * Not called after close().
   */
  onClose: (err: Error | null) => void;
}

/**
 * `new FrontendChannel(options)`: the front end's end of a vhost-user connection. Connect
 * failures throw (ENOENT, ECONNREFUSED, ...). While open it keeps itself and the loop alive.
 */
export interface NativeFrontendChannel {
  /** -1 once closed. */
  readonly fd: number;
  readonly connected: boolean;
  /**
   * Sends `data` (any bytes: no framing is checked) with up to 8 fds (SCM_RIGHTS, duplicated
   * first, so the caller keeps its own). Written at once when the socket allows, else queued in
   * order. Throws EPIPE once closed, or the sendmsg errno.
   */
  send(data: Uint8Array, fds?: number[]): void;
  /** Closes the socket; no callback runs afterwards. Idempotent. */
  close(): void;
}

/**
 * Layout of IoRing.completions (an Int32Array owned by native, reused for every reap): entry i
 * occupies [i * CQE_STRIDE, (i + 1) * CQE_STRIDE) (native/io/io_ring.h, kCqeStride):
 *   +0 tag     the tag given to prep*()
 *   +1 result  the CQE result: bytes transferred (READV/WRITEV), 0 (FSYNC/FALLOCATE/SYNC_FILE_RANGE), or
 *              -errno on failure
 *   +2 check   of a checked read (prepReadvChecked) that transferred every
 *              byte: CQE_CHECK_OK or CQE_CHECK_BAD; CQE_CHECK_NONE otherwise
 * It holds cqEntries entries. Entries are valid until the next call into the ring (submit() or
 * the next onComplete): handle them first.
 */
export const CQE_TAG = 0;
export const CQE_RESULT = 1;
export const CQE_CHECK = 2;
export const CQE_STRIDE = 3;
export const CQE_CHECK_NONE = 0;
export const CQE_CHECK_OK = 1;
export const CQE_CHECK_BAD = 2;

export interface IoRingOptions {
  /** Submission queue entries (1..4096, rounded up to a power of two; default 256). The
   * completion queue gets twice as many. */
  entries?: number;
  /**
   * Completions that arrived asynchronously (eventfd wake-up on the Node loop): `count` entries
   * are in `completions`. Called inside a callback scope (microtasks run after it). A
   * submit() made while it runs (directly or from its microtasks) queues and submits but
   * reaps nothing; those completions come with the next onComplete call of the same wake-up.
   */
  onComplete: (count: number) => void;
}

/**
 * `new IoRing(options)`: an io_uring (raw syscalls, SQ/CQ rings mmapped) driven from the main
 * thread. Construction throws VhostError(errno name) where io_uring is unavailable (see
 * IoRing.probe()).
 *
 * prep*() queue one SQE each; nothing reaches the kernel before submit(), except when the SQ
 * is full (prep hands the queued SQEs to the kernel first). Tags are integers in [0, 2^31),
 * chosen by the caller (distinct among ops in flight). The views passed to prepReadv/
 * prepWritev must stay referenced by the caller until their tag completes. prep*() throw
 * EINVAL for bad arguments, ESHUTDOWN once the ring is torn down.
 *
 * While anything is in flight the ring keeps itself and the loop alive. close() refuses no
 * completion: queued SQEs are submitted, every op still completes through onComplete/submit,
 * and the ring is torn down (nothing the kernel may still write is freed before) once none is
 * left. Further prep*() calls are accepted until then (e.g. to continue a short read).
 */
export interface NativeIoRing {
  /** See CQE_* for the layout. */
  readonly completions: Int32Array;
  readonly sqEntries: number;
  readonly cqEntries: number;
  /** Ops queued or submitted whose completion has not been delivered yet. */
  readonly inflight: number;
  /** true once close() was called. */
  readonly closed: boolean;
  /**
   * IORING_OP_READV of `bufs` (one view, or an array of at most 1024: a single view passed as
   * such costs the native side no array access) from fd at offset. `background`: IOSQE_ASYNC,
   * a kernel worker runs it, never submit() itself (a large copy then cannot delay the
   * completions submit() returns).
   */
  prepReadv(fd: number, bufs: Uint8Array | readonly Uint8Array[], offset: number, tag: number, background?: boolean): void;
  /**
   * A checked prepReadv against the check table (setCheckTable): bufs must hold whole blocks,
   * and when the read transferred every byte its completion's check field says whether each
   * block j matched crcs[at + j] as copied here (a CRC-32C check run natively as the completion
   * is reaped; tags below 2^20 only). EINVAL without a check table.
   */
  prepReadvChecked(fd: number, bufs: Uint8Array | readonly Uint8Array[], offset: number, tag: number, at: number): void;
  /**
   * Makes `crcs` (one CRC-32C per block of blockSize bytes) the table later checked reads are
   * checked against (the cache's BDA CRC array); the ring keeps it referenced. Reads prepared
   * before keep the CRCs they copied.
   */
  setCheckTable(crcs: Uint32Array, blockSize: number): void;
  /** IORING_OP_WRITEV of `bufs` (at most 1024 views) to fd at offset; `background` as prepReadv. */
  prepWritev(fd: number, bufs: Uint8Array | readonly Uint8Array[], offset: number, tag: number, background?: boolean): void;
  /** IORING_OP_FSYNC with IORING_FSYNC_DATASYNC. */
  prepFdatasync(fd: number, tag: number): void;
  /** IORING_OP_FALLOCATE: fallocate(fd, mode, offset, length). */
  prepFallocate(fd: number, mode: number, offset: number, length: number, tag: number): void;
  /**
   * IORING_OP_SYNC_FILE_RANGE with SYNC_FILE_RANGE_WRITE: starts writing the dirty pages of
   * [offset, offset + length) (0: to end of file), waits for none of it; length < 2^32.
   */
  prepSyncFileRange(fd: number, offset: number, length: number, tag: number): void;
  /**
   * One io_uring_enter for every queued SQE (none when nothing is queued), then reaps every
   * completion already posted (inline completions, e.g. page-cache hits) into `completions`
   * and returns how many entries it wrote (0 inside onComplete, see IoRingOptions). Throws the
   * errno of io_uring_enter when the ring itself fails.
   */
  submit(): number;
  close(): void;
}

export interface IoUringProbe {
  /** true when IoRing can be constructed here with READV, WRITEV, FSYNC, FALLOCATE, SYNC_FILE_RANGE. */
  supported: boolean;
  /** When not supported: errno name (EPERM when the kernel forbids io_uring, ENOSYS ...). */
  code?: string;
  reason?: string;
}

export interface NativeIoRingClass {
  new (options: IoRingOptions): NativeIoRing;
  /** Sets up and tears down a small ring; never throws. */
  probe(): IoUringProbe;
}

/** Limits of the native back end (native/vhost/limits.h), defined once there. */
export interface NativeLimits {
  readonly maxQueues: number;
  readonly minQueueSize: number;
  readonly maxQueueSize: number;
  readonly maxSocketMode: number;
  readonly maxConfigSize: number;
}

/** Where RbdImage.open() finds the image (see src/backing/rbd/spec.ts for the text form). */
export interface RbdOpenOptions {
  pool: string;
  image: string;
  /** Opens this snapshot (read-only). */
  snap?: string;
  /** ceph.conf path; default: librados' search ($CEPH_CONF, /etc/ceph/ceph.conf ...). */
  conf?: string;
  /** Client name without "client." (default admin). */
  id?: string;
  readOnly: boolean;
  /** librados client_mount_timeout: how long connecting may wait for a monitor. */
  mountTimeoutSec: number;
}

export interface RbdImageInfo {
  size: number;
  /** rbd_get_id: unique per image, a re-created image with the same name gets a new one. */
  imageId: string;
  /** The snapshot's id (rbd_snap_get_id) when a snapshot is open, else null. */
  snapId: number | null;
  poolId: number;
  /** The cluster's fsid. */
  fsid: string;
  /** Bytes per RADOS object (a clone's unit of copy-up). */
  objectSize: number;
  /** librbd's own cache setting as the image was opened with it ('false': we set it off). */
  librbdCache: string;
  /** A clone's parent snapshot, or null. */
  parent: RbdParentInfo | null;
}

/** A clone's parent as librbd reports it at open (rbd_get_parent, rbd_get_overlap). */
export interface RbdParentInfo {
  poolId: number;
  /** Pool namespace of the parent ('' for none). */
  namespace: string;
  imageId: string;
  snapId: number;
  /** Bytes from 0 that read the parent where the clone has no object of its own. */
  overlap: number;
  /**
   * One byte per object inside the overlap: 1 when the clone has data of its own there (an
   * extent rbd_diff_iterate2 reports without the parent), 0 when it still reads the parent.
   */
  owned: Uint8Array;
}

/**
 * Layout of RbdImage.completions (an Int32Array owned by native, rewritten before every
 * onComplete call): pair i is [tag, result], result 0 or -errno.
 */
export const RBD_CQE_TAG = 0;
export const RBD_CQE_RESULT = 1;
export const RBD_CQE_STRIDE = 2;

/**
 * `new RbdImage(onComplete)` then `open(options)`: one RBD image through librbd, completions
 * delivered on the Node loop (eventfd registered with rbd_set_image_notification, drained with
 * rbd_poll_io_events). onComplete(count, headerChanged) gets `count` pairs in `completions`;
 * headerChanged is true when librbd saw the image header change (resize, snapshot ...) since
 * the last call. open() rejects with the errno name as code and a message naming what is
 * missing (pool, image, snapshot, keyring, monitors).
 *
 * I/O calls take a tag (integer in [0, 2^31), distinct among requests in flight) and throw
 * EINVAL for bad arguments, ESHUTDOWN when not open. The views passed to read/write are used
 * synchronously (write) or when the request completes on the loop (read), never after
 * cancel(tag): librbd itself only sees request-owned buffers. close() cancels what is still
 * live and resolves with the number of requests librbd still held and that were abandoned with
 * the image (a hung cluster), or undefined after a clean rbd_close.
 */
export interface NativeRbdImage {
  readonly completions: Int32Array;
  /** Requests librbd holds (including cancelled ones). */
  readonly pending: number;
  open(options: RbdOpenOptions): Promise<RbdImageInfo>;
  read(tag: number, offset: number, bufs: readonly Uint8Array[]): void;
  write(tag: number, offset: number, bufs: readonly Uint8Array[]): void;
  flush(tag: number): void;
  discard(tag: number, offset: number, length: number): void;
  /** unmap false: the range stays allocated (RBD_WRITE_ZEROES_FLAG_THICK_PROVISION). */
  writeZeroes(tag: number, offset: number, length: number, unmap: boolean): void;
  /** Forgets tag (its views are released now); false when it was not in flight. */
  cancel(tag: number): boolean;
  /** The size librbd knows now (it follows header updates). */
  currentSize(): number;
  close(): Promise<number | undefined>;
}

export interface NativeRbd {
  /** false when the addon was built without librbd's headers. */
  available: boolean;
  RbdImage?: new (onComplete: (count: number, headerChanged: boolean) => void) => NativeRbdImage;
  /** Cluster connections open now: one per client name, configuration and mount timeout, shared by its images. */
  connections?: () => number;
}

/**
 * A range of a regular file mapped shared (native/io/mapped_file.h): write() copies bytes into
 * the page cache with no system call; EIO when the file shrank under the mapping (the bytes are
 * lost), ERANGE outside the range, ESHUTDOWN after close().
 */
export interface NativeMappedFile {
  write(bytes: Uint8Array, at: number): void;
  close(): void;
}

export interface NativeAddon {
  limits: NativeLimits;
  IoRing: NativeIoRingClass;
  /** Maps [offset, offset + length) of the regular file open as fd; throws EINVAL otherwise. */
  MappedFile: new (fd: number, offset: number, length: number) => NativeMappedFile;
  rbd: NativeRbd;
  /** BLKGETSIZE64: size in bytes of the block device open as fd. Throws ENOTTY for a file. */
  blockDeviceSize(fd: number): number;
  /** FS_IOC_GETVERSION: the inode generation of the file open as fd (changes when an inode
   * number is reused); null when the file system has none. */
  inodeGeneration(fd: number): number | null;
  /** flock(LOCK_EX | LOCK_NB); throws EAGAIN (EWOULDBLOCK) while another process holds it. */
  lockExclusive(fd: number): void;
  /** flock(LOCK_UN): releases the lock now, whoever else still holds a reference to the file. */
  unlock(fd: number): void;
  /** One datagram to a unix datagram socket (sd_notify), non-blocking; '@name' is abstract. */
  sendUnixDatagram(path: string, data: Uint8Array): void;
  /** BLKSSZGET: logical block size of the block device open as fd. */
  logicalBlockSize(fd: number): number;
  /** BLKDISCARD / BLKZEROOUT of [offset, offset + length) on a libuv worker thread. */
  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void>;
  /** fallocate(2) on a libuv worker thread (the threadpool engine's fallocate). */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** sync_file_range(SYNC_FILE_RANGE_WRITE) on a libuv worker thread (the threadpool engine's
   * startWriteout); length < 2^32, 0: to end of file. */
  startWriteout(fd: number, offset: number, length: number): Promise<void>;
  /** A zeroed view of `size` bytes at a memory address that is a multiple of `align` (power of
   * two <= 65536), e.g. an O_DIRECT bounce buffer. */
  alignedBuffer(size: number, align: number): Uint8Array;
  /** true when every view's address and length are multiples of `align` (O_DIRECT iovecs). */
  isDirectIoAligned(bufs: readonly Uint8Array[], align: number): boolean;
  /** CRC-32C (Castagnoli) of data; seed = the CRC of the bytes before it (0 to start). */
  crc32c(data: Uint8Array, seed?: number): number;
  /** out[at + j] = CRC-32C of block j of data (floor(data.length / blockSize) blocks). */
  crc32cBlocks(data: Uint8Array, blockSize: number, out: Uint32Array, at: number): void;
  /** Reads bufs (one view or a scatter list) as consecutive whole blocks; bad[j] = 1 when block j's CRC-32C differs from
   * crcs[at + j], else 0. Returns the number of mismatches. */
  crc32cCheck(bufs: Uint8Array | readonly Uint8Array[], blockSize: number, crcs: Uint32Array, at: number, bad: Uint8Array): number;
  /** True when the CPU's crc32 instruction (SSE4.2) computes CRC-32C, false for the table fallback. */
  crc32cHardware: boolean;
  /** True when runs of 256 bytes or more are folded with AVX-512 VPCLMULQDQ (faster than the crc32 instruction). */
  crc32cFolding: boolean;
  setErrorClass(ctor: new (message: string, code: string) => Error): void;
  VhostDevice: new (options: VhostDeviceOptions) => NativeVhostDevice;
  GuestRam: new (size: number, populate?: boolean) => NativeGuestRam;
  /** Test-only options: `blocking` omits EFD_NONBLOCK, `full` starts the counter at its maximum. */
  EventFd: new (options?: { blocking?: boolean; full?: boolean }) => NativeEventFd;
  FrontendChannel: new (options: FrontendChannelOptions) => NativeFrontendChannel;
}
