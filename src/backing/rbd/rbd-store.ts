/**
 * BackingStore over an RBD image through librbd in the addon (native/rbd): reads, writes,
 * flushes, discards and write-zeroes go straight to librbd's asynchronous API and complete on
 * the Node loop, many in flight, no queue of ours in between.
 *
 * Identity (for the cache): the cluster fsid, pool id, image id (rbd_get_id) and snapshot id,
 * plus the size: a re-created image with the same name, another cluster, another snapshot or
 * a resize while the daemon was down never meets blocks cached for the old one. Writes made
 * by another client while the daemon was down are not detected (as for NBD).
 *
 * A clone (an image with a parent snapshot) declares `sharing` for the cache: the parent
 * snapshot (fsid, pool id, namespace, image id, snapshot id: never reused, and a snapshot never
 * changes), the overlap, the object size and which objects of the overlap the clone has its own
 * object for, as found at open (RbdParentInfo). Objects only become owned: a write, discard or
 * write-zeroes makes librbd copy up or create the object; flatten copies up all of them (the
 * next open finds no parent); a clone shrunk and grown again has a smaller overlap (found at the
 * next open; a resize while open fences). Another client's writes while the daemon was down
 * show up as owned objects at the next open, so they are never read under the parent's key.
 * A clone of a clone is keyed by its immediate parent snapshot (the chain is not followed:
 * clones of the same parent snapshot share; a grandparent's blocks are not shared with them).
 *
 * Faults: every request is bounded by backingTimeoutMs from its submission; past it, it
 * rejects with ETIMEDOUT and is cancelled natively (librbd keeps retrying with its own buffer;
 * the caller's buffers are released), so an unreachable cluster (monitors or OSDs down) behaves
 * like an NBD outage: cache hits are served, misses wait up to the timeout. librbd's errors
 * fail only their request, with the errno name as code. When librbd reports a header update
 * and the image's size changed, the store is fenced: every pending and future request fails
 * with EIO (the cached blocks no longer describe the image).
 */
import { constants as osConstants } from 'node:os';
import { VhostError } from '../../native/errors';
import { native } from '../../native/binding';
import { RBD_CQE_RESULT, RBD_CQE_STRIDE, RBD_CQE_TAG, type NativeRbdImage, type RbdImageInfo } from '../../native/types';
import { silentLogger, type Logger } from '../../util/logger';
import { iovLength } from '../../util/iov';
import { type BackingEvents, type BackingStore, makeIdentity, type SharedBlocks } from '../backing-store';
import { formatRbdSpec, parseRbdSpec, type RbdSpec } from './spec';

export interface RbdStoreOptions {
  /** Open the image read-only (a snapshot always is). */
  readOnly?: boolean;
  /** Bound on every request, and on connecting to the monitors. Default 60 000. */
  backingTimeoutMs?: number;
  logger?: Logger;
}

interface Op {
  readonly what: string;
  readonly deadline: number;
  resolve: () => void;
  reject: (e: VhostError) => void;
}

/** Tags are int32 in the completion pairs. */
const TAG_LIMIT = 2 ** 31;

let errnoNames: Map<number, string> | null = null;

function errnoError(errno: number, what: string): VhostError {
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, n] of Object.entries(osConstants.errno)) if (!errnoNames.has(n)) errnoNames.set(n, name);
  }
  const name = errnoNames.get(errno) ?? `E${errno}`;
  return new VhostError(`RBD ${what} failed: ${name}`, name);
}

/** Whether this build of the addon has the RBD backing (built against librbd). */
export function rbdAvailable(): boolean {
  return native.rbd.available;
}

export class RbdStore implements BackingStore {
  readonly kind = 'rbd';
  readonly spec: RbdSpec;
  readonly size: number;
  readonly readOnly: boolean;
  /** Cluster fsid, pool id, image id (rbd_get_id: a re-created image gets a new one), snapshot. */
  readonly location: string;
  readonly identity: string;
  /** Another client's writes are invisible to us: a warm start verifies a sample. */
  readonly changesVisible = false;
  readonly info: RbdImageInfo;
  readonly features: { flush: boolean; discard: boolean; writeZeroes: boolean };
  readonly sharing?: SharedBlocks;
  private readonly img: NativeRbdImage;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  /** Live requests by tag, in submission order (= deadline order: one timeout for all). */
  private readonly ops = new Map<number, Op>();
  private events: BackingEvents | undefined;
  private nextTag = 0;
  private sweepTimer: NodeJS.Timeout | null = null;
  private idleWaiters: Array<() => void> = [];
  private fatal: VhostError | null = null;
  private closing = false;
  private closePromise: Promise<void> | null = null;

  private constructor(spec: RbdSpec, img: NativeRbdImage, info: RbdImageInfo, readOnly: boolean, timeoutMs: number, log: Logger) {
    this.spec = spec;
    this.img = img;
    this.info = info;
    this.size = info.size;
    this.readOnly = readOnly;
    this.timeoutMs = timeoutMs;
    this.log = log;
    this.location = `rbd:${info.fsid}:${info.poolId}:${info.imageId}@${info.snapId ?? 'head'}`;
    this.identity = makeIdentity(this.location, `size=${info.size}`);
    this.features = { flush: true, discard: !readOnly, writeZeroes: !readOnly };
    const p = info.parent;
    if (p !== null && p.overlap > 0 && info.objectSize > 0) {
      this.sharing = {
        parent: `rbd-parent:${info.fsid}:${p.poolId}/${p.namespace}:${p.imageId}@${p.snapId}`,
        sharedBytes: p.overlap,
        unitBytes: info.objectSize,
        owned: p.owned,
      };
    }
  }

  /**
   * Parses the spec, connects and opens the image. Rejects with EOPNOTSUPP when the addon was
   * built without librbd, EINVAL for a malformed spec, and librados/librbd's errno (ENOENT for a
   * missing pool, image, snapshot or keyring, ETIMEDOUT when no monitor answers or the open
   * takes longer than backingTimeoutMs ...).
   */
  static async open(spec: string | RbdSpec, options: RbdStoreOptions = {}): Promise<RbdStore> {
    const s = typeof spec === 'string' ? parseRbdSpec(spec) : spec;
    const ctor = native.rbd.RbdImage;
    if (!native.rbd.available || !ctor) {
      throw new VhostError(
        `${formatRbdSpec(s)}: the RBD backing is not available (the addon was built without librbd; install librbd-dev and rebuild)`,
        'EOPNOTSUPP',
      );
    }
    const timeoutMs = options.backingTimeoutMs ?? 60_000;
    const log = (options.logger ?? silentLogger).child({ rbd: `${s.pool}/${s.image}${s.snap !== undefined ? `@${s.snap}` : ''}` });
    let store: RbdStore | null = null;
    const img = new ctor((count, changed) => store?.onComplete(count, changed));
    const readOnly = options.readOnly === true || s.snap !== undefined;
    const opening = img.open({
      pool: s.pool,
      image: s.image,
      ...(s.snap !== undefined ? { snap: s.snap } : {}),
      ...(s.conf !== undefined ? { conf: s.conf } : {}),
      ...(s.id !== undefined ? { id: s.id } : {}),
      readOnly,
      mountTimeoutSec: Math.max(1, Math.ceil(timeoutMs / 1000)),
    });
    // librados bounds the monitor connection (client_mount_timeout); reading the image header
    // waits for the OSDs without a bound, so the whole open is bounded here. An open that
    // finishes after its caller gave up closes the image again.
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        opening.then(() => img.close(), () => undefined).catch(() => undefined);
        reject(new VhostError(`${formatRbdSpec(s)}: opening the image timed out after ${timeoutMs} ms (cluster unreachable?)`, 'ETIMEDOUT'));
      }, timeoutMs);
    });
    let info: RbdImageInfo;
    try {
      info = await Promise.race([opening, expired]);
    } finally {
      clearTimeout(timer);
    }
    store = new RbdStore(s, img, info, readOnly, timeoutMs, log);
    const parent = info.parent && { ...info.parent, owned: info.parent.owned.reduce((a, b) => a + b, 0) };
    log.info({ size: info.size, imageId: info.imageId, snapId: info.snapId, poolId: info.poolId, readOnly, parent }, 'RBD image opened');
    return store;
  }

  /** Requests librbd still holds, including those given up on (timed out). */
  get pendingInLibrbd(): number {
    return this.img.pending;
  }

  async read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    const len = iovLength(bufs);
    this.checkRange('read', offset, len);
    if (len === 0) return;
    return this.submit('read', (tag) => this.img.read(tag, offset, bufs));
  }

  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    this.checkWritable('write');
    const len = iovLength(bufs);
    this.checkRange('write', offset, len);
    if (len === 0) return;
    return this.submit('write', (tag) => this.img.write(tag, offset, bufs));
  }

  async flush(): Promise<void> {
    this.checkUsable();
    return this.submit('flush', (tag) => this.img.flush(tag));
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('discard');
    this.checkRange('discard', offset, length);
    if (length === 0) return;
    return this.submit('discard', (tag) => this.img.discard(tag, offset, length));
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    this.checkWritable('write zeroes');
    this.checkRange('write zeroes', offset, length);
    if (length === 0) return;
    return this.submit('write zeroes', (tag) => this.img.writeZeroes(tag, offset, length, unmap));
  }

  /**
   * Lets pending requests finish (each bounded by backingTimeoutMs), then closes the image.
   * New requests reject with ESHUTDOWN.
   */
  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  // ---- internals ----------------------------------------------------------------------

  private async doClose(): Promise<void> {
    this.closing = true;
    if (this.ops.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const abandoned = await this.img.close();
    if (abandoned !== undefined) {
      this.log.warn({ abandoned }, 'RBD image abandoned with requests the cluster never answered');
    } else {
      this.log.info('RBD image closed');
    }
  }

  private checkUsable(): void {
    if (this.fatal) throw this.fatal;
    if (this.closing) throw new VhostError('RBD store is closed', 'ESHUTDOWN');
  }

  private checkWritable(what: string): void {
    this.checkUsable();
    if (this.readOnly) throw new VhostError(`RBD ${what}: the image is open read-only`, 'EROFS');
  }

  private checkRange(what: string, offset: number, len: number): void {
    this.checkUsable();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(len) || offset < 0 || len < 0) {
      throw new VhostError(`RBD ${what}: bad range [${offset}, +${len})`, 'EINVAL');
    }
    if (offset + len > this.size) {
      throw new VhostError(`RBD ${what}: [${offset}, +${len}) is beyond the image size ${this.size}`, 'EINVAL');
    }
  }

  private submit(what: string, start: (tag: number) => void): Promise<void> {
    let tag = this.nextTag;
    while (this.ops.has(tag)) tag = (tag + 1) % TAG_LIMIT;
    this.nextTag = (tag + 1) % TAG_LIMIT;
    return new Promise<void>((resolve, reject) => {
      start(tag);
      this.ops.set(tag, { what, deadline: performance.now() + this.timeoutMs, resolve, reject });
      this.sweepTimer ??= setTimeout(() => this.sweep(), this.timeoutMs);
    });
  }

  private onComplete(count: number, headerChanged: boolean): void {
    if (headerChanged) this.checkSize();
    const c = this.img.completions;
    for (let i = 0; i < count; i++) {
      const tag = c[i * RBD_CQE_STRIDE + RBD_CQE_TAG];
      const result = c[i * RBD_CQE_STRIDE + RBD_CQE_RESULT];
      const op = this.ops.get(tag);
      if (!op) continue; // fenced meanwhile
      this.ops.delete(tag);
      if (result < 0) {
        const err = errnoError(-result, op.what);
        this.log.debug({ err: err.message, code: err.code }, 'RBD request failed');
        op.reject(err);
      } else {
        op.resolve();
      }
    }
    this.afterSettle();
  }

  /** A header update: a size that differs from the one opened fences the store. */
  private checkSize(): void {
    if (this.fatal) return;
    let now: number;
    try {
      now = this.img.currentSize();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'RBD image size unknown after a header update');
      return;
    }
    if (now === this.size) return;
    this.fence(
      new VhostError(
        `RBD image ${this.spec.pool}/${this.spec.image} changed size from ${this.size} to ${now}; refusing to use it (cached data would not match)`,
        'EIO',
      ),
    );
  }

  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }

  watch(events: BackingEvents): void {
    this.events = events;
  }

  private fence(err: VhostError): void {
    this.fatal = err;
    this.events?.fenced();
    this.log.error({ err: err.message }, 'RBD store fenced');
    const ops = [...this.ops];
    this.ops.clear();
    for (const [tag, op] of ops) {
      this.img.cancel(tag);
      op.reject(err);
    }
    this.afterSettle();
  }

  /** The timer: expires requests past their deadline, re-arms for the oldest left. */
  private sweep(): void {
    this.sweepTimer = null;
    const now = performance.now();
    for (const [tag, op] of this.ops) {
      if (op.deadline > now) break;
      this.ops.delete(tag);
      this.img.cancel(tag);
      this.log.warn({ what: op.what, pendingInLibrbd: this.img.pending }, 'RBD request timed out');
      op.reject(new VhostError(`RBD ${op.what} timed out after ${this.timeoutMs} ms (cluster unreachable?)`, 'ETIMEDOUT'));
    }
    this.afterSettle();
  }

  private afterSettle(): void {
    const head = this.ops.values().next();
    if (head.done) {
      if (this.sweepTimer) clearTimeout(this.sweepTimer);
      this.sweepTimer = null;
      if (this.idleWaiters.length > 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
      }
    } else if (!this.sweepTimer) {
      this.sweepTimer = setTimeout(() => this.sweep(), Math.max(1, Math.ceil(head.value.deadline - performance.now())));
    }
  }
}

