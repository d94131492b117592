/**
 * A sparse, read-only cache device for recovery (IoEngine; the fd is ignored): the segment
 * headers in one buffer (one ArrayBuffer, not one per header: 131,072 of them made each V8
 * mark-compact take 0.1-0.2 s, a cost of the simulation) and the data of the blocks given to
 * setBlock(); every other block reads as zeros. A read is a segment's header (or a prefix of it)
 * or a run of whole blocks of one segment; anything else fails (EINVAL), as do writes. Reads
 * are copies, done at once and reported a microtask later, so recovery's own cost is what a
 * bench measures (bench/recovery.ts; a real device adds reading segments * headerSize bytes).
 */
import { type IoEngine, readvCheckedOf, readvThenOf, type SyncRegion, syncRegionOf } from '../../src/io/io-engine';
import { VhostError } from '../../src/native/errors';
import type { Geometry } from '../../src/cache/segment';

export class HeaderDevice implements IoEngine {
  readonly kind = 'threadpool';
  private readonly headers: Uint8Array;
  private readonly blocks = new Map<number, Uint8Array>();

  constructor(private readonly g: Geometry) {
    this.headers = new Uint8Array(g.segments * g.headerSize);
  }

  /** Segment s's header (to fill in place). */
  header(s: number): Uint8Array {
    return this.headers.subarray(s * this.g.headerSize, (s + 1) * this.g.headerSize);
  }

  /** The data of slot `slot` (one block). */
  setBlock(slot: number, data: Uint8Array): void {
    this.blocks.set(slot, data);
  }

  readv(_fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> {
    const { g } = this;
    const s = Math.floor((offset - g.dataOffset) / g.stride);
    const at = offset - g.dataOffset - s * g.stride;
    const buf = bufs[0];
    if (bufs.length !== 1 || s < 0 || s >= g.segments) return this.refuse(offset);
    if (at === 0 && buf.byteLength <= g.headerSize) {
      buf.set(this.headers.subarray(s * g.headerSize, s * g.headerSize + buf.byteLength));
      return Promise.resolve();
    }
    const k = (at - g.headerSize) / g.blockSize;
    const n = buf.byteLength / g.blockSize;
    if (!Number.isInteger(k) || !Number.isInteger(n) || k < 0 || k + n > g.blocksPerSegment) return this.refuse(offset);
    for (let i = 0; i < n; i++) {
      const data = this.blocks.get(s * g.blocksPerSegment + k + i);
      if (data === undefined) buf.fill(0, i * g.blockSize, (i + 1) * g.blockSize);
      else buf.set(data, i * g.blockSize);
    }
    return Promise.resolve();
  }

  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
    readvThenOf(this, fd, bufs, offset, done);
  }

  readvChecked(fd: number, bufs: readonly Uint8Array[], offset: number, blockSize: number, crcs: Uint32Array, at: number, done: (err: Error | null, ok: boolean) => void): void {
    readvCheckedOf(this, fd, bufs, offset, blockSize, crcs, at, done);
  }

  private refuse(offset: number): Promise<void> {
    return Promise.reject(new VhostError(`HeaderDevice: no read of that shape at ${offset}`, 'EINVAL'));
  }

  writev(): Promise<void> {
    return Promise.reject(new VhostError('read-only device', 'EROFS'));
  }

  writeSync(): void {
    throw new VhostError('read-only device', 'EROFS');
  }

  syncRegion(fd: number, offset: number, length: number): SyncRegion {
    return syncRegionOf(this, fd, offset, length);
  }

  fdatasync(): Promise<void> {
    return Promise.resolve();
  }

  /** Nothing is ever dirty. */
  startWriteout(): Promise<void> {
    return Promise.resolve();
  }

  fallocate(): Promise<void> {
    return Promise.reject(new VhostError('HeaderDevice', 'EOPNOTSUPP'));
  }

  blockRange(): Promise<void> {
    return Promise.reject(new VhostError('HeaderDevice', 'EOPNOTSUPP'));
  }

  close(): void {}
}
