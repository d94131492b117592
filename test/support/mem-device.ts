/**
 * An in-memory cache device (IoEngine; the fd is ignored) that behaves like a disk with a
 * volatile write cache:
 *   - reads see every write issued so far (`image`); `fdatasync` makes them durable;
 *   - `crashImage(random)` is what a power cut leaves: the durable bytes plus, for each write
 *     since the last fdatasync (in order), nothing, all of it, or a torn prefix of it
 *     (whole 512-byte sectors), chosen by `random`; `crashImageKeeping(keep)` keeps exactly
 *     the unflushed writes `keep` picks (a crash point a test aims at);
 *   - `processCrashImage(random)` is what the death of the process leaves (the host keeps
 *     running): every completed write, and of the write in flight when the device froze
 *     (`freezeAtWrite`) nothing, all of it, or a torn prefix of it, chosen by `random`;
 *   - `freezeAtWrite = n`: the n-th write (1-based, counting `writes`) and everything after it
 *     never complete (a process stopped in the middle of a segment or metadata write); the
 *     frozen write still counts as unflushed;
 *   - `io` (held-io.ts): operations complete when the test says, capturing/applying bytes at
 *     the effect step;
 *   - `readError`/`writeError`/`syncError`: called per operation; returning true fails it with
 *     EIO (a failed fdatasync makes nothing durable);
 *   - `syncGate`: while set, an fdatasync takes effect (and resolves) only once it resolves;
 *   - `startWriteout` does nothing: like sync_file_range it makes nothing durable, so a crash
 *     image does not depend on it;
 *   - `truncate(at)`: a file cut at `at` (its bytes past `at` gone, zeros once written past):
 *     an exact read reaching past the end fails with EIO as FsEngine's does, another reads
 *     zeros there; a write past the end extends it.
 * Without `io` every operation settles one microtask after it takes effect, so a run is a pure
 * function of its inputs (no thread pool ordering).
 */
import { type IoEngine, readvCheckedOf, readvThenOf, type SyncRegion, syncRegionOf } from '../../src/io/io-engine';
import { endOfFile } from '../../src/io/fs-engine';
import { VhostError } from '../../src/native/errors';
import { gatherIov, iovLength, scatterIov } from '../../src/util/iov';
import type { HeldIo } from './held-io';

export class MemDevice implements IoEngine {
  readonly kind = 'threadpool';
  readonly image: Uint8Array;
  private durable: Uint8Array;
  private unflushed: { offset: number; data: Uint8Array }[] = [];
  /** The write in flight when the device froze, and the bytes it overwrote. */
  private frozenWrite: { offset: number; data: Uint8Array; before: Uint8Array } | null = null;
  io: HeldIo | null = null;
  freezeAtWrite = Infinity;
  frozen = false;
  /** Resolved when the device freezes. */
  readonly frozenSignal: Promise<void>;
  private onFrozen!: () => void;
  readError: ((offset: number, length: number) => boolean) | null = null;
  writeError: ((offset: number, length: number) => boolean) | null = null;
  syncError: (() => boolean) | null = null;
  syncGate: Promise<void> | null = null;
  reads = 0;
  writes = 0;
  fdatasyncs = 0;
  /** Where the file ends (truncate). */
  private end: number;

  constructor(size: number, from?: Uint8Array) {
    this.image = new Uint8Array(size);
    if (from) this.image.set(from);
    this.durable = new Uint8Array(this.image);
    this.end = size;
    this.frozenSignal = new Promise<void>((r) => (this.onFrozen = r));
  }

  private never(): Promise<void> {
    return new Promise<void>(() => {});
  }

  readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact = false): Promise<void> {
    if (this.frozen) return this.never();
    this.reads++;
    const len = iovLength(bufs);
    if (this.readError?.(offset, len)) return Promise.reject(new VhostError('injected read error', 'EIO'));
    if (exact && offset + len > this.end) return Promise.reject(endOfFile(fd, Math.max(offset, this.end)));
    const effect = () => scatterIov(this.image, offset, bufs);
    if (this.io) return this.io.hold(`device read [${offset}, ${offset + len})`, 'read', offset, len, effect);
    effect();
    return Promise.resolve();
  }

  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
    readvThenOf(this, fd, bufs, offset, done);
  }

  readvChecked(fd: number, bufs: readonly Uint8Array[], offset: number, blockSize: number, crcs: Uint32Array, at: number, done: (err: Error | null, ok: boolean) => void): void {
    readvCheckedOf(this, fd, bufs, offset, blockSize, crcs, at, done);
  }

  writev(_fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> {
    if (this.frozen) return this.never();
    this.writes++;
    const len = iovLength(bufs);
    if (this.writeError?.(offset, len)) return Promise.reject(new VhostError('injected write error', 'EIO'));
    const data = new Uint8Array(len);
    gatherIov(bufs, data);
    const effect = () => this.land(offset, data);
    if (this.writes >= this.freezeAtWrite) {
      this.frozenWrite = { offset, data, before: this.image.slice(offset, offset + len) };
      effect();
      this.freeze();
      return this.never();
    }
    if (this.io) return this.io.hold(`device write [${offset}, ${offset + len})`, 'write', offset, len, effect);
    effect();
    return Promise.resolve();
  }

  /**
   * A write that completes before it returns: counted and frozen like writev (a write at or past
   * `freezeAtWrite` is the one in flight when the process died: it may land, torn or whole, in a
   * process crash image, and throws here), never held by `io`.
   */
  writeSync(_fd: number, bytes: Uint8Array, offset: number): void {
    if (this.frozen) throw new VhostError('device frozen (the process is dead)', 'EIO');
    this.writes++;
    const len = bytes.byteLength;
    if (this.writeError?.(offset, len)) throw new VhostError('injected write error', 'EIO');
    const data = new Uint8Array(bytes);
    const before = this.image.slice(offset, offset + len);
    this.land(offset, data);
    if (this.writes >= this.freezeAtWrite) {
      this.frozenWrite = { offset, data, before };
      this.freeze();
      throw new VhostError('device frozen (the process is dead)', 'EIO');
    }
  }

  syncRegion(fd: number, offset: number, length: number): SyncRegion {
    return syncRegionOf(this, fd, offset, length);
  }

  /** A write takes effect: readable now, unflushed until the next fdatasync. */
  private land(offset: number, data: Uint8Array): void {
    this.image.set(data, offset);
    this.unflushed.push({ offset, data });
    this.end = Math.max(this.end, offset + data.byteLength);
  }

  /** The file cut at `at` (see the file comment); the cut is durable at once. */
  truncate(at: number): void {
    this.image.fill(0, at);
    this.durable.fill(0, at);
    this.unflushed = this.unflushed.filter((w) => w.offset < at).map((w) => ({ offset: w.offset, data: w.data.subarray(0, at - w.offset) }));
    this.end = Math.min(this.end, at);
  }

  /** From now on nothing completes. */
  freeze(): void {
    if (this.frozen) return;
    this.frozen = true;
    this.onFrozen();
  }

  fdatasync(): Promise<void> {
    if (this.frozen) return this.never();
    this.fdatasyncs++;
    if (this.syncError?.()) return Promise.reject(new VhostError('injected fdatasync error', 'EIO'));
    const effect = (): void => {
      this.durable = new Uint8Array(this.image);
      this.unflushed = [];
    };
    if (this.syncGate !== null) return this.syncGate.then(effect);
    effect();
    return Promise.resolve();
  }

  startWriteout(): Promise<void> {
    return this.frozen ? this.never() : Promise.resolve();
  }

  fallocate(): Promise<void> {
    return Promise.reject(new VhostError('fallocate on the test device', 'EOPNOTSUPP'));
  }

  blockRange(): Promise<void> {
    return Promise.reject(new VhostError('blockRange on the test device', 'EOPNOTSUPP'));
  }

  close(): void {}

  /** Where the file ends now: the device size unless truncate() cut it and no write reached past the cut. */
  get length(): number {
    return this.end;
  }

  /** Unflushed writes (for tests that want to know whether a crash can lose anything). */
  get unflushedWrites(): number {
    return this.unflushed.length;
  }

  /** The device content after the process died now (see the file comment). */
  processCrashImage(random: () => number): Uint8Array {
    const out = new Uint8Array(this.image);
    const w = this.frozenWrite;
    if (w === null) return out;
    const p = random();
    if (p >= 2 / 3) return out;
    const keep = p < 1 / 3 ? 0 : Math.floor(random() * (w.data.byteLength / 512)) * 512;
    out.set(w.before.subarray(keep), w.offset + keep);
    return out;
  }

  /** A power cut now that keeps, whole, exactly the unflushed writes `keep` picks (by place). */
  crashImageKeeping(keep: (offset: number, length: number) => boolean): Uint8Array {
    const out = new Uint8Array(this.durable);
    for (const w of this.unflushed) if (keep(w.offset, w.data.byteLength)) out.set(w.data, w.offset);
    return out;
  }

  /** The device content after a power cut now (see the file comment). */
  crashImage(random: () => number): Uint8Array {
    const out = new Uint8Array(this.durable);
    for (const w of this.unflushed) {
      const p = random();
      if (p < 1 / 3) continue;
      const sectors = w.data.byteLength / 512;
      const keep = p < 2 / 3 ? Math.floor(random() * sectors) * 512 : w.data.byteLength;
      out.set(w.data.subarray(0, keep), w.offset);
    }
    return out;
  }
}
