/**
 * Reusable private buffers, so that a stream of requests needing one each (cache misses) does
 * not allocate an ArrayBuffer per request: that external-memory churn made V8 run several
 * mark-compacts a second (docs/benchmarks.md, issue 16, fourth pass).
 *
 * take(length) hands out a Lease: a buffer of exactly `length` bytes (contents unspecified) and
 * a count of its users, 1 at first. Each further user calls hold(); every user calls release()
 * exactly once when it no longer reads or writes the buffer. When the count reaches zero the
 * buffer goes back to the pool in a later check phase (setImmediate), never at once: promise
 * reactions queued before the last release (e.g. copies out of the buffer by code that got
 * hold of a view of it) have all run by then. Releasing more often than taken + held throws.
 *
 * Bounded: buffers longer than `maxLength` are never pooled, and at most `maxBytes` of free
 * buffers are kept (the rest is left to the garbage collector).
 */

export class Lease {
  private users = 1;

  constructor(
    readonly buf: Buffer,
    private readonly pool: BufferPool,
  ) {}

  /** One more user. */
  hold(): void {
    if (this.users === 0) throw new Error('buffer lease used after its release');
    this.users++;
  }

  /** One user less; the last one gives the buffer back (in a later check phase). */
  release(): void {
    if (this.users === 0) throw new Error('buffer lease released twice');
    if (--this.users === 0) setImmediate(() => this.pool.put(this.buf));
  }
}

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private freeBytes = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly maxLength: number,
  ) {}

  /** A lease of a buffer of `length` bytes (a pooled one when there is one). */
  take(length: number): Lease {
    const list = this.free.get(length);
    const buf = list?.pop();
    if (buf !== undefined) {
      this.freeBytes -= length;
      return new Lease(buf, this);
    }
    return new Lease(Buffer.allocUnsafe(length), this);
  }

  /** Bytes of free buffers held. */
  get pooledBytes(): number {
    return this.freeBytes;
  }

  /** Called by Lease.release() only. */
  put(buf: Buffer): void {
    const length = buf.byteLength;
    if (length > this.maxLength || this.freeBytes + length > this.maxBytes) return;
    let list = this.free.get(length);
    if (list === undefined) {
      list = [];
      this.free.set(length, list);
    }
    list.push(buf);
    this.freeBytes += length;
  }
}
