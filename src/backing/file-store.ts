/**
 * BackingStore on a raw image file or a block device, through an IoEngine.
 *
 * O_DIRECT (`direct`): the kernel wants file offsets, lengths, and every iovec's address and
 * length to be multiples of `alignment` (the device's logical block size; for a file, the file
 * system's block size). A request that is not aligned goes through an aligned bounce buffer:
 * reads cover the enclosing aligned range and copy out; writes read the partial head and tail
 * blocks, merge, and write the aligned range (read-modify-write). Every modification (write,
 * discard, zeroing) takes a lock on its aligned range, so a read-modify-write never writes
 * back stale bytes over a concurrent write to another part of the same block.
 *
 * A failed operation rejects (its request fails upstream); the store keeps working.
 */
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { createIoEngine } from '../io';
import { directAlignment, isDirectAligned, readDirectIo } from '../io/direct-io';
import { IdleWaiters } from '../util/idle-waiters';
import { gatherIov, iovLength } from '../util/iov';
import type { IoEngine } from '../io/io-engine';
import { type BackingStore, makeIdentity } from './backing-store';

/** fallocate(2) modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** Chunk of the zero-writing fallback of writeZeroes. */
const ZERO_CHUNK = 1 << 20;

const fsOpen = promisify(fs.open);
const fsClose = promisify(fs.close);
const fsFtruncate = promisify(fs.ftruncate);

function fsError(err: unknown, what: string): VhostError {
  if (err instanceof VhostError) return err;
  const e = err as NodeJS.ErrnoException;
  return new VhostError(`${what}: ${e.message}`, e.code ?? 'EIO');
}

/** EOPNOTSUPP: every engine error is a VhostError, whose code is normalized (never ENOTSUP). */
function notSupported(err: unknown): boolean {
  return (err as VhostError).code === 'EOPNOTSUPP';
}

/**
 * Bound on the granularity of file timestamps: Linux stamps ctime/mtime from the coarse clock
 * (one tick: 4 ms at HZ=250, 10 ms at HZ=100), so two changes in one tick look the same.
 */
const TIMESTAMP_SETTLE_MS = 25;

/**
 * A file's identity: where it is (device, inode), which file that inode holds (generation,
 * which ext4/XFS/btrfs change when the inode number is reused, and birth time, from statx),
 * and its change stamp (ctime and mtime in ns, size). `touch -r` can restore mtime, never ctime.
 */
function fileIdentity(st: fs.BigIntStats, generation: number | null): string {
  const gen = generation === null ? '-' : String(generation);
  return makeIdentity(`file:${st.dev}:${st.ino}:gen=${gen}:birth=${st.birthtimeNs}`, `ctime=${st.ctimeNs}:mtime=${st.mtimeNs}:size=${st.size}`);
}

function fstatBig(fd: number): Promise<fs.BigIntStats> {
  return new Promise((resolve, reject) => {
    fs.fstat(fd, { bigint: true }, (err, st) => (err ? reject(err) : resolve(st)));
  });
}

export interface FileStoreOptions {
  readOnly?: boolean;
  /** Open with O_DIRECT (bypass the host page cache). */
  direct?: boolean;
  /** When the path does not exist, create a sparse file of this many bytes (ftruncate). */
  createSize?: number;
  /** The engine to use (shared by stores); default: createIoEngine('auto'), owned and closed
   * with the store. */
  engine?: IoEngine;
}

interface HeldRange {
  start: number;
  end: number;
  released: Promise<void>;
}

/** Exclusive locks on byte ranges; a waiter retries once the conflicting holder released. */
class RangeLock {
  private readonly held: HeldRange[] = [];

  async acquire(start: number, end: number): Promise<() => void> {
    for (;;) {
      const conflict = this.held.find((h) => h.start < end && start < h.end);
      if (conflict === undefined) break;
      await conflict.released;
    }
    let release!: () => void;
    const entry: HeldRange = { start, end, released: new Promise<void>((r) => (release = r)) };
    this.held.push(entry);
    return () => {
      this.held.splice(this.held.indexOf(entry), 1);
      release();
    };
  }
}

export class FileStore implements BackingStore {
  readonly kind: 'file' | 'block';
  readonly size: number;
  readonly readOnly: boolean;
  readonly location: string;
  readonly identity: string;
  readonly changesVisible: boolean;
  readonly features: { flush: boolean; discard: boolean; writeZeroes: boolean };
  readonly direct: boolean;
  /** Alignment of offsets, lengths and buffer addresses for O_DIRECT; 1 without it. */
  readonly alignment: number;
  /** Logical block size of the device (block devices), 512 for files. */
  readonly logicalBlockSize: number;

  private readonly fd: number;
  private readonly engine: IoEngine;
  private readonly ownsEngine: boolean;
  private readonly locks = new RangeLock();
  private inflight = 0;
  private readonly drained = new IdleWaiters();
  private closed = false;
  private zeros: Uint8Array | null = null;

  private constructor(init: {
    fd: number;
    kind: 'file' | 'block';
    size: number;
    readOnly: boolean;
    location: string;
    identity: string;
    direct: boolean;
    alignment: number;
    logicalBlockSize: number;
    engine: IoEngine;
    ownsEngine: boolean;
  }) {
    this.fd = init.fd;
    this.kind = init.kind;
    this.size = init.size;
    this.readOnly = init.readOnly;
    this.location = init.location;
    this.identity = init.identity;
    this.changesVisible = init.kind === 'file';
    this.direct = init.direct;
    this.alignment = init.alignment;
    this.logicalBlockSize = init.logicalBlockSize;
    this.engine = init.engine;
    this.ownsEngine = init.ownsEngine;
    this.features = { flush: true, discard: !init.readOnly, writeZeroes: !init.readOnly };
  }

  /**
   * Opens a raw image file or a block device. Rejects with VhostError: the open(2) errno
   * (EINVAL for O_DIRECT on a file system without it, e.g. tmpfs), or EINVAL for a path that
   * is neither a regular file nor a block device.
   */
  static async open(path: string, options: FileStoreOptions = {}): Promise<FileStore> {
    const readOnly = options.readOnly ?? false;
    const direct = options.direct ?? false;
    const c = fs.constants;
    const flags = (readOnly ? c.O_RDONLY : c.O_RDWR) | (direct ? c.O_DIRECT : 0);
    let fd: number;
    try {
      fd = await fsOpen(path, flags);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' || options.createSize === undefined || readOnly) throw fsError(err, `open ${path}`);
      fd = await FileStore.create(path, flags, options.createSize);
    }
    try {
      const st = await fstatBig(fd);
      let kind: 'file' | 'block';
      let size: number;
      let location: string;
      let identity: string;
      let logicalBlockSize: number;
      let alignment: number;
      if (st.isBlockDevice()) {
        kind = 'block';
        size = native.blockDeviceSize(fd);
        logicalBlockSize = native.logicalBlockSize(fd);
        alignment = directAlignment(fd, st);
        location = `block:${st.rdev}`;
        identity = makeIdentity(location, `size=${size}`);
      } else if (st.isFile()) {
        kind = 'file';
        size = Number(st.size);
        logicalBlockSize = 512;
        alignment = directAlignment(fd, st);
        location = `file:${st.dev}:${st.ino}`;
        identity = fileIdentity(st, native.inodeGeneration(fd));
      } else {
        throw new VhostError(`${path} is neither a regular file nor a block device`, 'EINVAL');
      }
      const engine = options.engine ?? createIoEngine('auto');
      return new FileStore({
        fd,
        kind,
        size,
        readOnly,
        location,
        identity,
        direct,
        alignment: direct ? alignment : 1,
        logicalBlockSize,
        engine,
        ownsEngine: options.engine === undefined,
      });
    } catch (err) {
      fs.closeSync(fd);
      throw fsError(err, `open ${path}`);
    }
  }

  async currentIdentity(): Promise<string> {
    if (this.kind === 'block') return this.identity;
    const st = await fstatBig(this.fd);
    // A change made later within the same timestamp tick would leave ctime as it is: wait
    // until the clock is past the tick of the last change (rare: only right after a write).
    const settleAt = Number(st.ctimeNs / 1_000_000n) + TIMESTAMP_SETTLE_MS;
    const wait = settleAt - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    return fileIdentity(st, native.inodeGeneration(this.fd));
  }

  /** Creates the file exclusively and sizes it sparse; opens the existing one after a race. */
  private static async create(path: string, flags: number, size: number): Promise<number> {
    let fd: number;
    try {
      fd = await fsOpen(path, flags | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(err, `create ${path}`);
      try {
        return await fsOpen(path, flags);
      } catch (err2) {
        throw fsError(err2, `open ${path}`);
      }
    }
    try {
      await fsFtruncate(fd, size);
    } catch (err) {
      fs.closeSync(fd);
      throw fsError(err, `ftruncate ${path}`);
    }
    return fd;
  }

  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.track(() => {
      if (!this.direct) return this.engine.readv(this.fd, bufs, offset);
      return readDirectIo(this.engine, this.fd, offset, iovLength(bufs), bufs, this.alignment);
    });
  }

  /**
   * read() reporting to a callback (BackingStore.readThen): without O_DIRECT one engine read
   * and no promise, so the pass-through read path costs what a cache hit's path does (the
   * dispatcher uses it for every read that fits under its byte cap).
   */
  readThen(offset: number, bufs: readonly Uint8Array[], done: (err: Error | null) => void): void {
    if (this.direct) {
      this.read(offset, bufs).then(() => done(null), done);
      return;
    }
    if (this.closed) return done(new VhostError('store closed', 'ESHUTDOWN'));
    this.inflight++;
    this.engine.readvThen(this.fd, bufs, offset, (err) => {
      this.untrack();
      done(err);
    });
  }

  write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      const len = iovLength(bufs);
      if (!this.direct) return this.engine.writev(this.fd, bufs, offset);
      const release = await this.lockAligned(offset, len);
      try {
        if (this.isAligned(offset, len, bufs)) return await this.engine.writev(this.fd, bufs, offset);
        return await this.bounceWrite(offset, len, bufs);
      } finally {
        release();
      }
    });
  }

  flush(): Promise<void> {
    return this.track(() => this.engine.fdatasync(this.fd));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      const release = await this.lockAligned(offset, length);
      try {
        if (this.kind === 'block') return await this.engine.blockRange(this.fd, 'discard', offset, length);
        await this.engine.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      } catch (err) {
        // Discard is a hint: a file system without hole punching keeps the data.
        if (!notSupported(err)) throw err;
      } finally {
        release();
      }
    });
  }

  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      if (length === 0) return;
      const release = await this.lockAligned(offset, length);
      try {
        if (this.kind === 'block') return await this.engine.blockRange(this.fd, 'zeroout', offset, length);
        const mode = unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        try {
          await this.engine.fallocate(this.fd, mode, offset, length);
        } catch (err) {
          if (!notSupported(err)) throw err;
          await this.writeZeroChunks(offset, length);
        }
      } finally {
        release();
      }
    });
  }

  /** Waits for the operations in flight, then closes the fd (and the engine if owned). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight > 0) await this.drained.wait();
    try {
      await fsClose(this.fd);
    } catch (err) {
      throw fsError(err, 'close');
    } finally {
      if (this.ownsEngine) this.engine.close();
    }
  }

  /** Counts the operation in flight so close() never closes the fd under it. */
  private async track(fn: () => Promise<void>): Promise<void> {
    if (this.closed) throw new VhostError('store closed', 'ESHUTDOWN');
    this.inflight++;
    try {
      await fn();
    } finally {
      this.untrack();
    }
  }

  private untrack(): void {
    if (--this.inflight === 0) this.drained.wake();
  }

  private checkWritable(): void {
    if (this.readOnly) throw new VhostError('store is read-only', 'EROFS');
  }

  private isAligned(offset: number, len: number, bufs: readonly Uint8Array[]): boolean {
    return !this.direct || isDirectAligned(offset, len, bufs, this.alignment);
  }

  /** Without O_DIRECT nothing needs a lock: the kernel orders byte ranges itself. */
  private lockAligned(offset: number, len: number): Promise<() => void> {
    if (!this.direct) return Promise.resolve(() => {});
    const a = this.alignment;
    return this.locks.acquire(Math.floor(offset / a) * a, Math.ceil((offset + len) / a) * a);
  }

  /** Read-modify-write of the enclosing aligned range; the caller holds its lock. */
  private async bounceWrite(offset: number, len: number, bufs: readonly Uint8Array[]): Promise<void> {
    const a = this.alignment;
    const start = Math.floor(offset / a) * a;
    const end = Math.ceil((offset + len) / a) * a;
    const bounce = native.alignedBuffer(end - start, a);
    const reads: Promise<void>[] = [];
    if (offset !== start) reads.push(this.engine.readv(this.fd, [bounce.subarray(0, a)], start));
    if (offset + len !== end && (end - start > a || offset === start)) {
      reads.push(this.engine.readv(this.fd, [bounce.subarray(end - start - a)], end - a));
    }
    await Promise.all(reads);
    gatherIov(bufs, bounce, offset - start);
    await this.engine.writev(this.fd, [bounce], start);
    // A file whose size is not a multiple of the alignment grew by the tail of the last
    // block: cut it back (nothing past `size` is ours).
    if (this.kind === 'file' && end > this.size) {
      try {
        await fsFtruncate(this.fd, this.size);
      } catch (err) {
        throw fsError(err, 'ftruncate');
      }
    }
  }

  private async writeZeroChunks(offset: number, length: number): Promise<void> {
    if (this.zeros === null) this.zeros = native.alignedBuffer(ZERO_CHUNK, 4096);
    const zeros = this.zeros;
    for (let pos = offset; pos < offset + length; ) {
      const n = Math.min(ZERO_CHUNK, offset + length - pos);
      const bufs = [zeros.subarray(0, n)];
      // The caller holds the lock on the whole range: write (or read-modify-write) directly.
      if (this.isAligned(pos, n, bufs)) {
        await this.engine.writev(this.fd, bufs, pos);
      } else {
        await this.bounceWrite(pos, n, bufs);
      }
      pos += n;
    }
  }
}
