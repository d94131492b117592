/**
 * A BackingStore served through the shared Cache.
 *
 * Modes:
 *   writethrough (default)  writes go to the backing store, then their whole cache blocks are
 *                           inserted; read misses insert.
 *   writearound, readonly   writes only invalidate; read misses insert. (Same cache behaviour:
 *                           'readonly' names the intent of a cache for read-mostly volumes.)
 *   none                    reads pass through; writes still invalidate, so a later cached
 *                           run never serves blocks made stale while caching was off.
 *   writeback               writes go to the cache only, as dirty blocks, and are acknowledged
 *                           once durable there (Cache.insertDirty + commit: group commit);
 *                           destage.ts writes them back in the background. Reads see them (cache
 *                           hits; a dirty block the cache device cannot return fails the read,
 *                           never falls back to the older backing store).
 *
 * Write-back rules (on top of the ones below):
 *   - write-back writes and discards/write-zeroes of a volume take their block range in FIFO
 *     order (RangeLocks): a write covering part of a block merges it with the block's current
 *     data (the cache's copy, dirty or clean, else the backing store's) into a whole dirty block;
 *   - a discard or write-zeroes first destages the dirty blocks it touches (its partial blocks
 *     keep their other bytes), then goes the write-through way (invalidate durably, then the
 *     backing store);
 *   - bytes past the last whole block of the volume are written to the backing store directly;
 *     a guest flush then flushes the backing store too, else it completes at once (every
 *     acknowledged write-back write is durable in the log already);
 *   - writes wait while the volume is at its dirty limit (Destager.room), at most
 *     backingTimeoutMs; a write the cache cannot take (cache-device write error, closing) is
 *     written through instead (its blocks invalidated durably first);
 *   - close() destages everything first with `flushOnStop`.
 *
 * Mode switches at run time (setMode), and a volume opened in another mode with dirty blocks
 * in the cache (from a write-back run), which is a switch out of write-back at open:
 *   - out of write-back: the new mode applies at once to new requests; the dirty blocks (and
 *     those of the write-back writes still in flight) are destaged in the background, and
 *     setMode resolves once none is left (Destager.drain: it rejects after backingTimeoutMs of
 *     failures, the blocks staying dirty, served and destaged). Meanwhile every write, discard
 *     and write-zeroes takes its range lock (after the write-back ones in flight: FIFO) and
 *     first destages the dirty blocks it touches (Destager.destageRange), so a block's dirty
 *     data reaches the backing store before a newer write of it and is never lost under a
 *     partial write; reads see dirty blocks as hits (mode none reads them from the cache too,
 *     inserting nothing, while any is left);
 *   - into write-back: at once. Outside write-back, a write-like operation that starts while no
 *     block is dirty and no range is locked takes no lock (`unlocked`); the write-back writes
 *     and discards first wait for those in flight at the switch (`entered`), so no backing
 *     write of the old mode is in flight under a block that is merged or destaged. The next
 *     guest flush flushes the backing store (the old mode's writes are not flushed yet);
 *   - between the other modes nothing is invalidated: their cached blocks all match the
 *     backing store, and writes in every mode invalidate what they overlap.
 *
 * Consistency (no stale data, ever):
 *   - every write, discard and write-zeroes invalidates every cache block it overlaps (whole or
 *     partial) synchronously when it starts, and issues its backing write only once no segment
 *     header on the cache device that a recovery could trust names those blocks any more
 *     (Cache.invalidate: its header rewrite written, and synced when write-back data is
 *     involved, so no crash of either kind brings them back; recovery.ts, docs/cache-format.md
 *     "Crash kinds") — at once when none did; when that cannot be
 *     made durable (a cache device refusing every write after a write error) it fails with EIO
 *     and is never issued;
 *   - every operation is registered in `ops` for its block range until it is completely done,
 *     including its cache insertion. A write-like operation starting marks every overlapping
 *     registered operation `poisoned`; an operation starting while an overlapping write-like
 *     one is registered is poisoned from the start. A poisoned operation inserts nothing, so a
 *     read miss never inserts data older than a write it raced with, and of two racing writes
 *     neither inserts (the backing store's final content is then unknown to us);
 *   - a read whose blocks are all cached is served straight into the guest's buffers
 *     (Cache.readHit: RAM hits copied, device hits read into them); if a cache-device read of
 *     it fails or its segment is rewritten meanwhile, the whole read is served again by the
 *     path below, which overwrites every byte. It registers no operation: it inserts nothing;
 *   - read misses are read from the backing store into a private buffer, then copied to the
 *     guest; writes that insert copy the guest data once and write the backing store and the
 *     cache from that copy, so a guest changing its buffers mid-I/O cannot make them differ.
 *     A write-back write of whole blocks in one view takes no copy: the log copies the blocks
 *     into its segment buffer and computes their CRC-32Cs from that copy (so they match), and
 *     what goes to the backing store instead (the cache could not take it) is invalidated in
 *     the cache first. A miss's buffer is pooled (MISS_BUFFERS) and goes back only once nothing writes into it
 *     or reads from it any more: its backing reads and joins settled, the misses that joined
 *     its reads have copied their blocks, its insertions settled (readThrough);
 *   - only whole blocks inside the volume are cached; a trailing partial block passes through.
 *
 * Shared parent blocks: a store with `sharing` (an RBD clone) has its blocks keyed through
 * SharedKeys (shared-keys.ts, which states why a parent key is never stale): blocks it still
 * reads from its parent are looked up and inserted under the parent's entry, shared by every
 * clone of that parent; write-like operations make their units owned when they start, and
 * invalidate the volume's key only (the parent's blocks stay right for everyone). Fences,
 * failures and sample verification concern the volume's own blocks only.
 *
 * Backing reads in flight are joined, not repeated (pending-reads.ts): every backing read of
 * cacheable blocks (misses and read-ahead) registers its blocks while in flight, in the
 * volume's registry or, for parent-keyed blocks, the parent's (shared by its clones); a miss
 * of a registered block waits for that read and takes its data (readsJoined) instead of
 * reading the block again, and only the reader inserts it; a read-ahead skips registered
 * blocks. A reader's data is handed out only when no write-like operation overlapping it
 * started before it completed (its operation is not poisoned), and a write-like operation
 * forgets the registered entries of the volume's blocks it covers when it starts, so a read
 * starting after a write never takes data read before it.
 *
 * Read-ahead (prefetch hooks, below read()): a read that continues a sequential stream (see
 * streams.ts) makes the next `readAhead` blocks be read from the backing store in one read
 * and inserted, once the stream is within readAhead / 2 of what was already requested. The
 * read-ahead is an operation like a read miss: registered in `ops` for its range before the
 * backing read, poisoned by any write-like operation overlapping it, inserting nothing then.
 * Its blocks are marked prefetched (accuracy in the stats: prefetchHits / prefetched).
 *
 * Sequential cut-off (admission, bcache's sequential_cutoff): with `sequentialCutoff` set, a
 * read whose stream (streams.ts) has grown past it inserts none of its misses and starts no
 * read-ahead, and a writethrough write whose write stream has grown past it inserts nothing
 * (it only invalidates, as in writearound): one-touch streams do not flush the hot set.
 * Refused blocks are counted (admissionsRefused).
 *
 * Failures: cache-device read errors fall back to the backing store (Cache.readBlocks reports
 * misses); cache write errors disable insertion (Cache.disabled). The guest only sees errors
 * of the backing store, but one: a write fails with EIO, unissued, while a disabled cache
 * device refuses to record that nothing on it is recoverable (Cache.invalidate; see above).
 *
 * Backing store failures and changes (no stale data after them either):
 *   - a write-like operation that fails (an error or a timeout: the store may still apply it
 *     later) leaves its blocks UNSETTLED: their cached copies are dropped and they stay
 *     registered as a write in flight, so nothing overlapping them is inserted, until a later
 *     write-like operation covering them succeeds or a flush started after the failure does.
 *     This assumes the store applies such a late operation, if ever, before that later write
 *     or flush completes, or before it is closed (true of files; an NBD server that still
 *     applies a request from a dropped connection after a later flush is not covered);
 *   - a store reporting `writesMayBeLost` (an NBD connection lost with unflushed writes) makes
 *     us drop every block written since the last successful flush (all of the volume's blocks
 *     when more than MAX_UNFLUSHED_RANGES ranges were written) and poison every operation in
 *     flight;
 *   - a `fenced` store (an NBD export whose size changed) loses all of the volume's blocks and
 *     is served nothing from the cache again;
 *   - when the last flush failed (the final one at close included), close() drops the
 *     volume's blocks, so the metadata saved after it holds none of them;
 *   - close() records the backing store's identity taken after the final flush, and so does a
 *     volume whose identity shows changes (files) once its writes have been quiet for
 *     IDENTITY_QUIET_MS (for a start after a crash); the next registration compares it with
 *     the identity at open (Cache.registerVolume) and drops the blocks on any difference. For stores whose changes are invisible (block devices, NBD),
 *     open() first verifies a sample of the cached blocks against the backing store and drops
 *     all of them on a mismatch, unless the operator declared exclusive ownership.
 */
import { performance } from 'node:perf_hooks';
import type { CacheMode } from '../config/config';
import { VhostError } from '../native/errors';
import { InFlightRanges, type Op, RangeLocks } from './in-flight';
import { DEFAULT_DIRTY_LIMIT, DEFAULT_HIGH_WATERMARK, DEFAULT_LOW_WATERMARK, Destager } from './destage';
import { silentLogger, type Logger } from '../util/logger';
import { StreamDetector } from './streams';
import type { BackingStore } from '../backing/backing-store';
import { type Cache, PREFETCHED, READ_MISS } from './cache';
import { parentReads, PendingReads } from './pending-reads';
import { SharedKeys } from './shared-keys';
import { gatherIov, iovLength, scatterIov, sliceIov } from '../util/iov';
import { BufferPool, type Lease } from '../util/buffer-pool';

/** Cached blocks read back and compared at a warm start of a store with invisible changes. */
export const VERIFY_SAMPLE_BLOCKS = 1024;
/** Reads of the sample in flight at once. */
const VERIFY_PARALLEL = 32;
/** Failed operations' ranges held one by one before they are merged (see failed()). */
export const MAX_UNSETTLED = 256;
/** Ranges written since the last flush that are tracked one by one (see the header). */
export const MAX_UNFLUSHED_RANGES = 4096;
/** Free miss buffers kept for reuse (all volumes of the process), and the longest one pooled. */
export const MISS_POOL_BYTES = 16 << 20;
export const MISS_POOL_MAX_LENGTH = 1 << 20;
/** The private buffers of readThrough (see there for who holds one and until when); exported for tests. */
export const MISS_BUFFERS = new BufferPool(MISS_POOL_BYTES, MISS_POOL_MAX_LENGTH);

const NO_VIEWS: readonly Uint8Array[] = [];

/** Placeholder callback of a free HitRead. */
function unsettledRead(): void {}

/**
 * A readThen() that Cache.readHit serves from the device, in flight: what its callback needs
 * (the read again for a miss, the key and blocks to count). Records are reused from a free
 * list, so a device hit allocates no closure (issue 16).
 */
class HitRead {
  offset = 0;
  len = 0;
  bufs: readonly Uint8Array[] = NO_VIEWS;
  admit = false;
  key = 0;
  count = 0;
  done: (err: Error | null) => void = unsettledRead;
  /** readHit's callback, bound to this record once (newHitRead). */
  settle: (ok: boolean) => void = unsettledRead;
}

/** `shared` of a run of readThrough that also holds its buffer until called (once). */
function holding(lease: Lease, shared: () => void): () => void {
  lease.hold();
  return () => {
    shared();
    lease.release();
  };
}

export type { CacheMode };

export interface CachedStoreOptions {
  backing: BackingStore;
  cache: Cache;
  /** Volume name: the key of its blocks across restarts. */
  name: string;
  mode?: CacheMode;
  /** Cap on this volume's cache use in bytes. */
  maxBytes?: number;
  /** Sequential read-ahead window in cache blocks (0 = off; default DEFAULT_READ_AHEAD_BLOCKS). */
  readAhead?: number;
  /** Sequential cut-off in bytes (0 = off, the default): streams longer than this are not cached. */
  sequentialCutoff?: number;
  /** The operator guarantees nothing else writes the backing store: open() verifies no sample. */
  exclusive?: boolean;
  /** Key the blocks a clone reads from its parent by the parent (default true; see the header). */
  shareParent?: boolean;
  /** Write-back: dirty blocks beyond which writes wait (default DEFAULT_DIRTY_LIMIT of the cap or cache). */
  dirtyLimitBlocks?: number;
  /** Write-back watermarks, shares of the dirty limit (defaults DEFAULT_HIGH/LOW_WATERMARK). */
  highWatermark?: number;
  lowWatermark?: number;
  /** How long write-back writes wait for room and a drain waits through failures (default 60 s). */
  backingTimeoutMs?: number;
  /** close() destages every dirty block first. */
  flushOnStop?: boolean;
  /** Longest a yielding destage waits for the guest to go idle (default destage.ts YIELD_MAX_MS). */
  yieldMaxMs?: number;
  /** How long a volume must be quiet before a round below the high watermark, and the longest wait for it (destage.ts QUIET_MS, ROUND_WAIT_MAX_MS). */
  quietMs?: number;
  roundWaitMaxMs?: number;
  /**
   * open() discards the write-back blocks the cache holds for another backing object of this
   * volume's name (Cache.discardOrphanedDirty) instead of being refused with EBUSY.
   */
  discardDirty?: boolean;
  logger?: Logger;
}

/** What open() found by comparing a sample of the cached blocks with the backing store. */
export interface SampleVerification {
  /** Blocks compared. */
  checked: number;
  /** Blocks that differed (or could not be read from the backing store); > 0 drops all. */
  mismatched: number;
  /** Blocks dropped as a result. */
  dropped: number;
  ms: number;
}

/** A failed write-like operation's range, held registered as a write until settled. */
interface Unsettled {
  hold: Op;
  /** Value of the store's event clock when it failed. */
  at: number;
}

/** Forgets nothing (an empty read registers no block). */
const NOTHING = (): void => undefined;

/** Quiet time after a volume's last write before its backing identity is recorded again. */
export const IDENTITY_QUIET_MS = 200;

/** Read-ahead window by default: 32 blocks (128 KiB at 4 KiB). */
export const DEFAULT_READ_AHEAD_BLOCKS = 32;

export class CachedStore implements BackingStore {
  readonly kind = 'cached';
  readonly size: number;
  readonly readOnly: boolean;
  readonly location: string;
  readonly identity: string;
  readonly changesVisible: boolean;
  readonly features: BackingStore['features'];
  readonly volume: number;
  private readonly backing: BackingStore;
  private readonly cache: Cache;
  private readonly bs: number;
  /** Blocks entirely inside the volume (the only ones cached). */
  private readonly cacheable: number;
  private readonly ops = new InFlightRanges();
  /** Operations begun so far (destaging waits for a quiet volume: Destager untilQuiet). */
  private opsStarted = 0;
  private readonly inserting = new Set<Promise<unknown>>();
  private readonly readAhead: number;
  private readonly streams = new StreamDetector();
  /** readThen()'s device hits not in flight (HitRead). */
  private readonly hitFree: HitRead[] = [];
  /** Keys of a store with a shared parent (null: every block is keyed by the volume). */
  private readonly keys: SharedKeys | null = null;
  /** Backing reads of parent-keyed blocks in flight, shared with the parent's other clones. */
  private readonly parentReads: PendingReads | null = null;
  /** Backing reads of blocks keyed by the volume in flight. */
  private readonly ownReads = new PendingReads();
  /** Sequential cut-off in blocks (0 = off). */
  private readonly cutoff: number;
  /** Write streams, followed only when the cut-off is on. */
  private readonly writeStreams: StreamDetector | null;
  /** Orders failures, write completions and flush starts (see Unsettled, unflushed). */
  private clock = 0;
  private unsettled: Unsettled[] = [];
  /** Block ranges [first, last, clock] written successfully since the last successful flush. */
  private unflushed: number[][] = [];
  /** Clock of the last time `unflushed` overflowed (0: not since the last flush). */
  private unflushedOverflowAt = 0;
  private readonly trackUnflushed: boolean;
  private fenced = false;
  private flushFailed = false;
  /** Write-like operations in flight, and started so far (identity recording, see the header). */
  private writing = 0;
  private writesStarted = 0;
  private identityTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Set by open() when it verified a sample. */
  verification: SampleVerification | null = null;
  /** Write-back blocks of another backing object open() discarded (`discardDirty`). */
  discardedDirty = 0;
  /** Writes back this volume's dirty blocks (write-back mode, or left by an earlier write-back run). */
  readonly destager: Destager;
  private readonly locks = new RangeLocks();
  private currentMode: CacheMode;
  /** Name of the volume (messages). */
  private readonly name: string;
  private readonly log: Logger;
  /** A switch out of write-back destaging (see the header). */
  private switching: Promise<void> | null = null;
  /** Write-like operations in flight that took no range lock, and who waits for none to be. */
  private unlocked = 0;
  private unlockedIdle: (() => void)[] = [];
  /** Write-back writes wait for this: the unlocked operations in flight when write-back was entered. */
  private entered: Promise<void> | null = null;
  /** Backing writes issued directly by write-back writes, and that many when last flushed. */
  private directWrites = 0;
  private directFlushed = 0;
  private readonly flushOnStop: boolean;
  private readonly removeDrainer: () => void;

  /**
   * Registers the volume in the cache and, for a store whose changes are invisible (block
   * device, NBD) that is not declared exclusive, verifies a sample of its cached blocks.
   */
  static async open(o: CachedStoreOptions): Promise<CachedStore> {
    const discarded = o.discardDirty === true ? await o.cache.discardOrphanedDirty(o.name, o.backing.identity, o.backing.size) : 0;
    const s = new CachedStore(o);
    s.discardedDirty = discarded;
    // verifySample never rejects: cache read errors are misses, backing read errors mismatches.
    if (!o.backing.changesVisible && o.exclusive !== true) s.verification = await s.verifySample(VERIFY_SAMPLE_BLOCKS);
    return s;
  }

  constructor(o: CachedStoreOptions) {
    this.backing = o.backing;
    this.cache = o.cache;
    this.currentMode = o.mode ?? 'writethrough';
    this.name = o.name;
    this.log = o.logger ?? silentLogger;
    this.size = o.backing.size;
    this.readOnly = o.backing.readOnly;
    this.location = o.backing.location;
    this.identity = o.backing.identity;
    this.changesVisible = o.backing.changesVisible;
    this.features = o.backing.features;
    this.bs = o.cache.blockSize;
    this.cacheable = Math.floor(this.size / this.bs);
    this.readAhead = o.readAhead ?? DEFAULT_READ_AHEAD_BLOCKS;
    this.cutoff = Math.ceil((o.sequentialCutoff ?? 0) / this.bs);
    this.writeStreams = this.cutoff > 0 ? new StreamDetector() : null;
    this.volume = o.cache.registerVolume(o.name, o.backing.identity, o.backing.size, {
      maxBytes: o.maxBytes,
      unflushedWritesMayBeLost: o.backing.watch !== undefined,
    });
    const sharing = o.backing.sharing;
    if (sharing !== undefined && o.shareParent !== false && sharing.sharedBytes >= this.bs) {
      try {
        this.keys = new SharedKeys(this.volume, o.cache.registerShared(sharing.parent), sharing, this.bs);
      } catch (err) {
        o.cache.unregisterVolume(this.volume, '');
        throw err;
      }
      this.dropUnownedVolumeKeys(this.keys);
      this.parentReads = parentReads(o.cache, this.keys.parent);
    }
    this.trackUnflushed = o.backing.watch !== undefined;
    o.backing.watch?.({ fenced: () => this.onFenced(), writesMayBeLost: () => this.onWritesMayBeLost() });
    const cap = o.maxBytes !== undefined && o.maxBytes > 0 ? Math.floor(o.maxBytes / this.bs) : o.cache.map.slots;
    const limit = Math.max(1, o.dirtyLimitBlocks ?? Math.floor(DEFAULT_DIRTY_LIMIT * cap));
    this.destager = new Destager({
      cache: o.cache,
      volume: this.volume,
      backing: o.backing,
      limit,
      high: Math.max(1, Math.floor(limit * (o.highWatermark ?? DEFAULT_HIGH_WATERMARK))),
      low: Math.floor(limit * (o.lowWatermark ?? DEFAULT_LOW_WATERMARK)),
      timeoutMs: o.backingTimeoutMs ?? 60_000,
      busy: () => this.busy,
      started: () => this.opsStarted,
      ...(o.yieldMaxMs !== undefined ? { yieldMaxMs: o.yieldMaxMs } : {}),
      ...(o.quietMs !== undefined ? { quietMs: o.quietMs } : {}),
      ...(o.roundWaitMaxMs !== undefined ? { roundWaitMaxMs: o.roundWaitMaxMs } : {}),
      logger: this.log,
    });
    this.flushOnStop = o.flushOnStop === true;
    this.removeDrainer = o.cache.addDrainer(() => this.destager.drain());
    if (this.destager.dirty > 0) {
      if (this.mode === 'writeback') this.destager.kick();
      else {
        this.leaveWriteback().catch((err: Error) =>
          this.log.error({ volume: o.name, dirty: this.destager.dirty, err: err.message }, 'cache: write-back blocks left by an earlier run not all destaged yet (served from the cache, destaging goes on)'),
        );
      }
    }
  }

  get mode(): CacheMode {
    return this.currentMode;
  }

  /** Guest requests in flight that may reach the backing store (destaging yields to them). */
  private get busy(): boolean {
    return this.ops.size > 0 || this.writing > 0;
  }

  /**
   * Switches the cache mode (see the header). Out of write-back it resolves once no block is
   * dirty; a second switch while one is destaging is refused (EBUSY).
   */
  async setMode(mode: CacheMode): Promise<void> {
    if (this.closed) throw new VhostError(`volume ${this.name} is closed`, 'ESHUTDOWN');
    if (this.switching !== null) {
      throw new VhostError(`volume ${this.name}: a switch out of write-back is still destaging ${this.destager.dirty} blocks; try again once it is done`, 'EBUSY');
    }
    const from = this.currentMode;
    this.currentMode = mode;
    if (mode === 'writeback') {
      if (from === 'writeback') return;
      // The old mode's writes are not flushed on the backing store yet: the next guest flush does it.
      this.directWrites++;
      if (this.unlocked > 0) {
        const entered = new Promise<void>((resolve) => this.unlockedIdle.push(resolve));
        this.entered = entered;
        void entered.then(() => {
          if (this.entered === entered) this.entered = null;
        });
      }
      this.destager.kick();
      return;
    }
    if (this.destager.dirty === 0 && this.locks.idle) return;
    try {
      await this.leaveWriteback();
    } catch (err) {
      throw new VhostError(
        `volume ${this.name}: now in mode ${mode}, but ${this.destager.dirty} write-back blocks are not written back yet (they stay in the cache, are served and keep being destaged): ${(err as Error).message}`,
        (err as VhostError).code ?? 'EIO',
      );
    }
  }

  /** Destages every dirty block, those of the write-back writes in flight included. */
  private leaveWriteback(): Promise<void> {
    const p = (async (): Promise<void> => {
      await this.locks.released();
      await this.destager.drain();
    })();
    this.switching = p;
    const done = (): void => {
      if (this.switching === p) this.switching = null;
    };
    p.then(done, done);
    return p;
  }

  /**
   * The range lock of a write-like operation on blocks first..last (see the header): in
   * write-back (after `entered`) always; otherwise while blocks are dirty or ranges locked,
   * destaging the dirty blocks of the range first when `destage`; else none (counted in
   * `unlocked`, returned at once: no wait on the common path). Returns its release.
   */
  private takeRange(first: number, last: number, destage: boolean): (() => void) | Promise<() => void> {
    if (this.currentMode !== 'writeback' && this.destager.dirty === 0 && this.locks.idle) {
      this.unlocked++;
      return this.unlockedEnd;
    }
    return this.lockRange(first, last, destage);
  }

  private async lockRange(first: number, last: number, destage: boolean): Promise<() => void> {
    let release: () => void;
    if (this.currentMode === 'writeback') {
      // Its range is taken (FIFO) before the wait, so no later write of another mode goes unlocked.
      const taking = this.locks.take(first, last);
      if (this.entered !== null) await this.entered;
      release = await taking;
    } else release = await this.locks.take(first, last);
    if (destage && this.destager.dirty > 0) {
      try {
        await this.destager.destageRange(first, last);
      } catch (err) {
        release();
        throw err;
      }
    }
    return release;
  }

  private readonly unlockedEnd = (): void => {
    if (--this.unlocked > 0) return;
    const idle = this.unlockedIdle;
    this.unlockedIdle = [];
    for (const resolve of idle) resolve();
  };

  /** Writes back every dirty block of the volume (the flush command); see Destager.drain. */
  flushCache(): Promise<void> {
    return this.destager.drain();
  }

  /**
   * Compares up to n of the volume's cached blocks (drawn at random) with the backing store;
   * any difference, or a backing read error, drops all of the volume's blocks.
   */
  private async verifySample(n: number): Promise<SampleVerification> {
    const t0 = performance.now();
    const bda = this.cache.map.bda;
    // Reservoir sampling over the slots holding this volume's blocks.
    const sample: number[] = [];
    let seen = 0;
    for (let slot = 0; slot < bda.size; slot++) {
      // Dirty blocks are newer than the backing store by design: not compared.
      if (!bda.isValid(slot) || bda.isDirty(slot) || bda.volumeOf(slot) !== this.volume) continue;
      seen++;
      if (sample.length < n) sample.push(bda.blockOf(slot));
      else {
        const j = Math.floor(Math.random() * seen);
        if (j < n) sample[j] = bda.blockOf(slot);
      }
    }
    sample.sort((a, b) => a - b);
    const bs = this.bs;
    let checked = 0;
    let mismatched = 0;
    const one = async (block: number, cached: Uint8Array, stored: Uint8Array, hit: Uint8Array): Promise<void> => {
      if ((await this.cache.readBlocks(this.volume, block, 1, cached, hit)) !== 1) return;
      checked++;
      try {
        await this.backing.read(block * bs, [stored]);
      } catch {
        mismatched++;
        return;
      }
      if (Buffer.compare(cached, stored) !== 0) mismatched++;
    };
    const bufs = Array.from({ length: Math.min(VERIFY_PARALLEL, sample.length) }, () => ({
      cached: new Uint8Array(bs),
      stored: new Uint8Array(bs),
      hit: new Uint8Array(1),
    }));
    let next = 0;
    // The sample's cache reads are not guest reads: the volume's hit counters stay as they were.
    const c = this.cache.map.stats(this.volume);
    const counted = { reads: c.reads, readHits: c.readHits, ramHits: c.ramHits, storageHits: c.storageHits };
    await Promise.all(
      bufs.map(async (b) => {
        while (next < sample.length && mismatched === 0) await one(sample[next++], b.cached, b.stored, b.hit);
      }),
    );
    Object.assign(c, counted);
    const dropped = mismatched > 0 ? this.cache.dropVolume(this.volume) : 0;
    return { checked, mismatched, dropped, ms: performance.now() - t0 };
  }

  /** Drops the volume's blocks in units that read the parent (SharedKeys' invariant). */
  private dropUnownedVolumeKeys(keys: SharedKeys): void {
    const map = this.cache.map;
    const bda = map.bda;
    for (let slot = 0; slot < bda.size; slot++) {
      if (bda.isValid(slot) && bda.volumeOf(slot) === this.volume && !keys.volumeKeyValid(bda.blockOf(slot))) map.drop(slot);
    }
  }

  private unregister(identity: string): void {
    this.cache.unregisterVolume(this.volume, identity);
    if (this.keys !== null) this.cache.unregisterShared(this.keys.parent);
  }

  /** Calls fn(key, k, n) for each run of blocks first + k .. first + k + n - 1 with one cache key. */
  private keyRuns(first: number, count: number, fn: (key: number, k: number, n: number) => void): void {
    if (this.keys === null) fn(this.volume, 0, count);
    else this.keys.runs(first, count, fn);
  }

  /** Lookups of `n` blocks under the parent's key, `hits` found: counted in the volume's entry. */
  private countShared(key: number, n: number, hits: number): void {
    if (key === this.volume) return;
    const c = this.cache.map.stats(this.volume);
    c.sharedReads += n;
    c.sharedHits += hits;
  }

  private onFenced(): void {
    this.fenced = true;
    this.ops.poisonAll();
    this.ownReads.clear();
    this.cache.dropVolume(this.volume);
  }

  private onWritesMayBeLost(): void {
    this.ops.poisonAll();
    this.ownReads.clear();
    if (this.unflushedOverflowAt > 0) this.cache.dropVolume(this.volume);
    else for (const [first, last] of this.unflushed) this.invalidateLater(first, last);
  }

  /**
   * A write-like operation on bytes [offset, offset + len) (blocks first..last) succeeded: it
   * settles the failures on the blocks it covers whole.
   */
  private written(offset: number, len: number, first: number, last: number): void {
    const at = ++this.clock;
    if (this.unsettled.length > 0) {
      const wholeFirst = Math.ceil(offset / this.bs);
      const wholeLast = Math.floor((offset + len) / this.bs) - 1;
      const left: Unsettled[] = [];
      for (const u of this.unsettled) {
        const { first: f, last: l } = u.hold;
        if (l < wholeFirst || f > wholeLast) {
          left.push(u);
          continue;
        }
        this.end(u.hold);
        // What the write did not cover stays unsettled.
        if (f < wholeFirst) left.push({ hold: this.begin(f, wholeFirst - 1, true), at: u.at });
        if (l > wholeLast) left.push({ hold: this.begin(wholeLast + 1, l, true), at: u.at });
      }
      this.unsettled = left;
    }
    if (!this.trackUnflushed) return;
    if (this.unflushed.length >= MAX_UNFLUSHED_RANGES) {
      this.unflushed = [];
      this.unflushedOverflowAt = at;
    }
    this.unflushed.push([first, last, at]);
  }

  /**
   * A write-like operation on blocks first..last failed: they stay unsettled. Past
   * MAX_UNSETTLED failures (a long outage) they are merged into one hold over their span.
   */
  private failed(first: number, last: number): void {
    this.invalidateLater(first, last);
    const at = ++this.clock;
    if (this.unsettled.length >= MAX_UNSETTLED) {
      for (const u of this.unsettled) {
        first = Math.min(first, u.hold.first);
        last = Math.max(last, u.hold.last);
        this.end(u.hold);
      }
      this.unsettled = [];
    }
    this.unsettled.push({ hold: this.begin(first, last, true), at });
  }

  currentIdentity(): Promise<string> {
    return this.backing.currentIdentity();
  }

  /** Registers an operation on blocks first..last; a write-like one forgets their reads in flight. */
  private begin(first: number, last: number, write: boolean): Op {
    if (write) this.ownReads.forget(first, last);
    this.opsStarted++;
    return this.ops.begin(first, last, write);
  }

  private end(op: Op): void {
    this.ops.end(op);
    if (!this.busy) this.destager.guestIdle();
  }

  /**
   * Inserts blocks first.. of data (private) under `key` unless op gets poisoned; ends op and
   * calls `done` when done. `readMiss`: a read's misses, each placed only if the map's
   * admission takes it (cache-map.ts); a write's blocks are always placed.
   */
  private insertThenEnd(op: Op, key: number, first: number, data: Uint8Array, count: number, done?: () => void, readMiss = false): void {
    if (count <= 0 || op.poisoned || this.fenced || this.cache.disabled) {
      this.end(op);
      done?.();
      return;
    }
    const p = this.cache.insert(key, first, data, count, () => !op.poisoned, readMiss ? READ_MISS : undefined).finally(() => {
      this.end(op);
      done?.();
      this.inserting.delete(p);
    });
    this.inserting.add(p);
  }

  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return new Promise<void>((resolve, reject) => this.readThen(offset, bufs, (err) => (err === null ? resolve() : reject(err))));
  }

  /**
   * read() with a callback (BackingStore.readThen): a device hit settles from its read's
   * completion, a RAM hit at once.
   */
  readThen(offset: number, bufs: readonly Uint8Array[], done: (err: Error | null) => void): void {
    const len = iovLength(bufs);
    if (len === 0) return done(null);
    let admit = false;
    let served: boolean | null = false;
    let key = -1;
    let count = 0;
    try {
      // Mode none reads the backing store, but the dirty blocks left by write-back from the cache.
      const caching = (this.mode !== 'none' || this.destager.dirty > 0) && !this.fenced;
      admit = caching && this.mode !== 'none' ? this.observeRead(offset, len) : false;
      if (caching && offset + len <= this.cacheable * this.bs) {
        const first = Math.floor(offset / this.bs);
        count = Math.floor((offset + len - 1) / this.bs) - first + 1;
        // A read whose blocks have more than one key goes the way of a miss.
        key = this.keys === null ? this.volume : this.keys.keyOfRange(first, first + count - 1);
        if (key >= 0) {
          const r = this.hitFree.pop() ?? this.newHitRead();
          r.offset = offset;
          r.len = len;
          r.bufs = bufs;
          r.admit = admit;
          r.key = key;
          r.count = count;
          r.done = done;
          served = this.cache.readHit(key, offset, len, bufs, r.settle);
          // Settled now (a RAM hit, or a miss): the record's callback will not run.
          if (served !== null) this.freeHitRead(r);
        }
      }
    } catch (err) {
      return done(err as Error);
    }
    if (served === null) return;
    if (served) {
      this.countShared(key, count, count);
      return done(null);
    }
    this.readMiss(offset, len, bufs, admit, done);
  }

  /** A reusable record of readThen's device hit, its callback bound once (no closure per read). */
  private newHitRead(): HitRead {
    const r = new HitRead();
    r.settle = (ok) => this.hitReadSettled(r, ok);
    return r;
  }

  private freeHitRead(r: HitRead): void {
    r.bufs = NO_VIEWS;
    r.done = unsettledRead;
    this.hitFree.push(r);
  }

  /** readHit's device read of r settled: served, or (not ok) read the way of a miss. */
  private hitReadSettled(r: HitRead, ok: boolean): void {
    const { offset, len, bufs, admit, key, count, done } = r;
    // Back to the free list before `done`, which may start the next read with it.
    this.freeHitRead(r);
    if (!ok) return this.readMiss(offset, len, bufs, admit, done);
    this.countShared(key, count, count);
    done(null);
  }

  private readMiss(offset: number, len: number, bufs: readonly Uint8Array[], admit: boolean, done: (err: Error | null) => void): void {
    this.readThrough(offset, len, bufs, admit).then(() => done(null), done);
  }

  // ---- Prefetch hooks (read-ahead) and admission (sequential cut-off) ----

  /**
   * Records a read in the stream detector; starts a read-ahead when a stream needs one.
   * Returns false when the read's stream is past the sequential cut-off (insert nothing).
   */
  private observeRead(offset: number, len: number): boolean {
    if (this.readAhead === 0 && this.cutoff === 0) return true;
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const end = Math.floor((offset + len - 1) / bs) + 1;
    let from = -1;
    if (this.readAhead > 0) from = this.streams.readAhead(first, end - first, this.readAhead, this.cacheable);
    else this.streams.observe(first, end - first);
    if (this.cutoff > 0 && this.streams.lastRun > this.cutoff) return false;
    if (from >= 0 && !this.cache.disabled) this.prefetchFrom(from);
    return true;
  }

  /** A writethrough write of blocks first..last: false when its stream is past the cut-off. */
  private admitWrite(first: number, last: number): boolean {
    if (this.writeStreams === null || this.writeStreams.observe(first, last - first + 1) <= this.cutoff) return true;
    this.cache.map.stats(this.volume).admissionsRefused += last - first + 1;
    return false;
  }

  /**
   * Starts the read-ahead the stream detector asked for (from `from` to its lastEnd): one
   * backing read per run of blocks neither cached nor being read.
   */
  private prefetchFrom(from: number): void {
    const to = this.streams.lastEnd;
    const needed = (b: number): boolean => {
      const key = this.keyOf(b);
      return this.cache.map.peek(key, b) < 0 && this.readsOf(key).get(b) === undefined;
    };
    for (let b = from; b < to; ) {
      if (!needed(b)) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < to && needed(e)) e++;
      this.prefetch(b, e - b);
      b = e;
    }
  }

  /**
   * Reads blocks first .. first + count - 1 from the backing store and inserts them as
   * prefetched, under an operation registered before the read (so a racing write poisons it).
   * Errors are dropped: read-ahead is only a guess.
   */
  private prefetch(first: number, count: number): void {
    const bs = this.bs;
    const op = this.begin(first, first + count - 1, false);
    const data: Uint8Array = Buffer.allocUnsafe(count * bs);
    const read = this.backing.read(first * bs, [data]);
    const shared = this.shareRead(op, read, first, count, data);
    const p = read.then(
      async () => {
        if (op.poisoned || this.cache.disabled) return;
        const inserts: Promise<number>[] = [];
        this.keyRuns(first, count, (key, k, n) => {
          inserts.push(this.cache.insert(key, first + k, data.subarray(k * bs, (k + n) * bs), n, () => !op.poisoned, PREFETCHED));
        });
        await Promise.all(inserts);
      },
      () => undefined,
    );
    const done = p.finally(() => {
      this.end(op);
      shared();
      this.inserting.delete(done);
    });
    this.inserting.add(done);
  }

  /**
   * A read not (entirely) served by Cache.readHit: hits and misses gathered in a private
   * buffer, misses read from the backing store and inserted, then copied to the guest.
   */
  private async readThrough(offset: number, len: number, bufs: readonly Uint8Array[], admit: boolean): Promise<void> {
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + len - 1) / bs);
    if ((this.mode === 'none' && this.destager.dirty === 0) || this.fenced || first >= this.cacheable) {
      await this.backing.read(offset, bufs);
      return;
    }
    const count = last - first + 1;
    const op = this.begin(first, last, false);
    // Every byte that reaches the guest or the cache is written first: hits by readBlocks,
    // the rest (misses, failed hits) by the backing store reads below. The buffer is pooled:
    // this call holds it until nothing it started writes into it any more (`writers`, all
    // settled), and each backing read's run until that run's `shared` is called (its blocks'
    // insertion settled or given up; other misses may copy out of it until then).
    const lease = MISS_BUFFERS.take(count * bs);
    const tmp = lease.buf;
    const hit = new Uint8Array(count);
    const writers: Promise<unknown>[] = [];
    let settled = false;
    try {
      const cached = Math.min(count, this.cacheable - first);
      const lookups: Promise<number>[] = [];
      this.keyRuns(first, cached, (key, k, n) => {
        const found = this.cache.readBlocks(key, first + k, n, tmp.subarray(k * bs, (k + n) * bs), hit.subarray(k, k + n));
        lookups.push(
          key === this.volume
            ? found
            : found.then((h) => {
                this.countShared(key, n, h);
                return h;
              }),
        );
      });
      writers.push(...lookups);
      let hits = 0;
      for (const h of await Promise.all(lookups)) hits += h;
      if (hits === count) {
        settled = true;
        scatterIov(tmp, offset - first * bs, bufs);
        return;
      }
      // Misses another read is fetching right now: its data, not another read.
      const joined = this.joinReads(first, cached, tmp, hit);
      writers.push(...joined);
      // Missing runs [k, e] (the uncacheable tail counts as missing), clipped to the volume end.
      const reads: Promise<void>[] = [];
      const runs: [k: number, e: number, shared: () => void][] = [];
      const readRuns = (): void => {
        for (let k = 0; k < count; ) {
          if (hit[k]) {
            k++;
            continue;
          }
          let e = k;
          while (e + 1 < count && !hit[e + 1]) e++;
          const start = (first + k) * bs;
          const end = Math.min((first + e + 1) * bs, this.size);
          const read = this.backing.read(start, [tmp.subarray(k * bs, k * bs + (end - start))]);
          reads.push(read);
          writers.push(read);
          runs.push([k, e, holding(lease, this.shareRead(op, read, first + k, Math.min(e, cached - 1) - k + 1, tmp.subarray(k * bs)))]);
          hit.fill(1, k, e + 1);
          k = e + 1;
        }
      };
      readRuns();
      try {
        await Promise.all(reads);
        if (joined.length > 0) {
          // A joined block whose reader failed or was poisoned (hit 0 again) is read here.
          await Promise.all(joined);
          reads.length = 0;
          readRuns();
          await Promise.all(reads);
        }
      } catch (err) {
        for (const [, , shared] of runs) shared();
        throw err;
      }
      settled = true;
      scatterIov(tmp, offset - first * bs, bufs);
      for (const [k0, e, shared] of runs) {
        const n0 = Math.min(e, cached - 1) - k0 + 1;
        if (n0 <= 0) {
          shared();
          continue;
        }
        if (!admit) {
          if (this.mode !== 'none') this.cache.map.stats(this.volume).admissionsRefused += n0;
          shared();
          continue;
        }
        // Each run of one key keeps its range registered until inserted; it inherits op's poisoning.
        // `left` holds one count while the runs start: an insertion given up at once (a poisoned
        // run) calls done() from insertThenEnd, and shared() must run once, after the last run.
        let left = 1;
        const done = (): void => {
          if (--left === 0) shared();
        };
        this.keyRuns(first + k0, n0, (key, j, n) => {
          const k = k0 + j;
          const runOp = this.begin(first + k, first + k + n - 1, false);
          runOp.poisoned ||= op.poisoned;
          left++;
          this.insertThenEnd(runOp, key, first + k, tmp.subarray(k * bs, (k + n) * bs), n, done, true);
        });
        done();
      }
    } finally {
      this.end(op);
      // On an error some reads or joins may still be writing into tmp: wait for them.
      if (settled) lease.release();
      else void Promise.allSettled(writers).then(() => lease.release());
    }
  }

  /** The cache key of block b. */
  private keyOf(b: number): number {
    return this.keys === null ? this.volume : this.keys.keyOf(b);
  }

  /** The registry of backing reads in flight of blocks keyed by `key`. */
  private readsOf(key: number): PendingReads {
    return key === this.volume || this.parentReads === null ? this.ownReads : this.parentReads;
  }

  /**
   * Marks (hit[k] = 1) the misses among blocks first .. first + cached - 1 that another read is
   * fetching now, and returns promises that copy each one's data into tmp when it arrives, or
   * set hit[k] back to 0 when that read fails or was poisoned.
   */
  private joinReads(first: number, cached: number, tmp: Uint8Array, hit: Uint8Array): Promise<void>[] {
    const out: Promise<void>[] = [];
    const bs = this.bs;
    let n = 0;
    for (let k = 0; k < cached; k++) {
      if (hit[k]) continue;
      const p = this.readsOf(this.keyOf(first + k)).get(first + k);
      if (p === undefined) continue;
      hit[k] = 1;
      n++;
      out.push(
        p.then((d) => {
          if (d === null) hit[k] = 0;
          else tmp.set(d, k * bs);
        }),
      );
    }
    if (n > 0) this.cache.map.stats(this.volume).readsJoined += n;
    return out;
  }

  /**
   * Registers the blocks of a backing read of n blocks from `first` (into `into`) as in flight
   * (each in its key's registry) so that other misses join it; returns the function that
   * forgets them.
   */
  private shareRead(op: Op, read: Promise<void>, first: number, n: number, into: Uint8Array): () => void {
    if (n <= 0) return NOTHING;
    const data = read.then(
      () => (op.poisoned ? null : into),
      () => null,
    );
    const bs = this.bs;
    if (this.keys === null) {
      const mine = this.ownReads.start(first, n, data, bs);
      return () => this.ownReads.end(first, mine);
    }
    const ends: (() => void)[] = [];
    this.keys.runs(first, n, (key, j, m) => {
      const reads = this.readsOf(key);
      const mine = reads.start(first + j, m, data.then((d) => (d === null ? null : d.subarray(j * bs, (j + m) * bs))), bs);
      ends.push(() => reads.end(first + j, mine));
    });
    return () => {
      for (const end of ends) end();
    };
  }

  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    const len = iovLength(bufs);
    if (len === 0) {
      await this.backing.write(offset, bufs);
      return;
    }
    if (this.mode === 'writeback' && !this.fenced) return this.writeBack(offset, bufs, len);
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + len - 1) / bs);
    const taken = this.takeRange(first, last, true);
    const release = typeof taken === 'function' ? taken : await taken;
    try {
      await this.writeOther(offset, bufs, len, first, last);
    } finally {
      release();
    }
  }

  /** A write outside write-back (its range lock, if any, taken). */
  private async writeOther(offset: number, bufs: readonly Uint8Array[], len: number, first: number, last: number): Promise<void> {
    const op = this.begin(first, last, true);
    this.keys?.own(first, last);
    this.writeStarted();
    try {
      const killing = this.invalidate(first, last);
      // The data written to the backing store and inserted: one private copy taken now.
      const copy = this.mode === 'writethrough' ? new Uint8Array(len) : null;
      if (copy !== null) gatherIov(bufs, copy);
      if (killing !== null) {
        try {
          await killing;
        } catch (err) {
          // Not made durably invalid: the write is not issued (Cache.invalidate).
          this.end(op);
          throw err;
        }
      }
      if (copy === null || this.cache.disabled || !this.admitWrite(first, last)) {
        try {
          await this.backing.write(offset, bufs);
          this.written(offset, len, first, last);
        } catch (err) {
          this.failed(first, last);
          throw err;
        } finally {
          this.end(op);
        }
        return;
      }
      await this.writeThrough(op, offset, copy, first, last);
    } finally {
      this.writeEnded();
    }
  }

  /** A write-back write (see the header). */
  private async writeBack(offset: number, bufs: readonly Uint8Array[], len: number): Promise<void> {
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + len - 1) / bs);
    const release = await this.takeRange(first, last, false);
    const op = this.begin(first, last, true);
    this.keys?.own(first, last);
    this.writeStarted();
    const end = offset + len;
    const tailFrom = this.cacheable * bs;
    let tailFailed = false;
    try {
      // Bytes past the last whole block: written directly.
      let direct: Promise<void> | null = null;
      if (end > tailFrom) {
        const from = Math.max(offset, tailFrom);
        const tail = new Uint8Array(end - from);
        gatherIov(sliceIov(bufs, from - offset), tail);
        direct = this.backing.write(from, [tail]).catch((err: Error) => {
          tailFailed = true;
          throw err;
        });
      }
      const cacheLast = Math.min(last, this.cacheable - 1);
      if (first <= cacheLast) await this.writeBackBlocks(offset, bufs, first, cacheLast);
      if (direct !== null) {
        await direct;
        this.directWrites++;
        this.written(tailFrom, end - tailFrom, this.cacheable, last);
      }
    } catch (err) {
      if (tailFailed) this.failed(this.cacheable, last);
      throw err;
    } finally {
      this.end(op);
      release();
      this.writeEnded();
      this.destager.kick();
    }
  }

  /** The whole blocks first..last of a write-back write (partial ones merged), dirty in the cache. */
  private async writeBackBlocks(offset: number, bufs: readonly Uint8Array[], first: number, last: number): Promise<void> {
    const bs = this.bs;
    const n = last - first + 1;
    let data: Uint8Array;
    if (offset === first * bs && bufs.length === 1 && bufs[0].byteLength >= n * bs) {
      // Whole blocks in one view (a guest's page-sized write): inserted from it, no private
      // copy (the log copies it into its segment and sums that copy; the request is in flight
      // until the commit, so the view stays valid).
      data = bufs[0].subarray(0, n * bs);
    } else {
      data = new Uint8Array(n * bs);
      const from = Math.max(offset, first * bs);
      const to = Math.min(offset + iovLength(bufs), (last + 1) * bs);
      if (from > first * bs) await this.currentBlock(first, data.subarray(0, bs));
      if (to < (last + 1) * bs && (last !== first || from === first * bs)) await this.currentBlock(last, data.subarray((n - 1) * bs));
      gatherIov(sliceIov(bufs, from - offset, to - from), data, from - first * bs);
    }
    await this.destager.room(n);
    const inserted = await this.cache.insertDirty(this.volume, first, data, n);
    if (inserted === n && (await this.cache.commit())) return;
    // The cache cannot take it (write error, closing): written through, its blocks invalid first.
    const killing = this.invalidate(first, last);
    if (killing !== null) await killing;
    try {
      await this.backing.write(first * bs, [data]);
    } catch (err) {
      this.failed(first, last);
      throw err;
    }
    this.written(first * bs, n * bs, first, last);
    this.directWrites++;
  }

  /** Block b's current data into `into`: the cache's copy, else the backing store's. */
  private async currentBlock(b: number, into: Uint8Array): Promise<void> {
    if ((await this.cache.readBlocks(this.volume, b, 1, into, new Uint8Array(1))) === 1) return;
    await this.backing.read(b * this.bs, [into]);
  }

  /** The backing write of a writethrough write (its blocks already invalid), then insertion. */
  private async writeThrough(op: Op, offset: number, copy: Uint8Array, first: number, last: number): Promise<void> {
    const bs = this.bs;
    const len = copy.byteLength;
    try {
      await this.backing.write(offset, [copy]);
    } catch (err) {
      this.failed(first, last);
      this.end(op);
      throw err;
    }
    this.written(offset, len, first, last);
    // The backing store now holds this data: from here op only guards the insertion (a later
    // write poisons it; it no longer poisons later operations).
    op.write = false;
    // Whole blocks covered by the write and inside the volume.
    const fullFirst = Math.ceil(offset / bs);
    const fullEnd = Math.min(Math.floor((offset + len) / bs), this.cacheable);
    const at = fullFirst * bs - offset;
    // Owned since the write started: keyed by the volume.
    this.insertThenEnd(op, this.volume, fullFirst, copy.subarray(at, at + (fullEnd - fullFirst) * bs), fullEnd - fullFirst);
  }

  /**
   * Invalidates blocks first..last: null, or a promise of their durable invalidation, which
   * rejects (EIO) when that cannot be made durable: the write must then not be issued
   * (Cache.invalidate).
   */
  private invalidate(first: number, last: number): Promise<void> | null {
    if (first >= this.cacheable) return null;
    return this.cache.invalidate(this.volume, first, Math.min(last, this.cacheable - 1) - first + 1);
  }

  /** Invalidates blocks first..last after a write that may have landed (nothing waits for it). */
  private invalidateLater(first: number, last: number): void {
    this.invalidate(first, last)?.catch(() => undefined);
  }

  private writeStarted(): void {
    this.writing++;
    this.writesStarted++;
  }

  /** Once writes are quiet for IDENTITY_QUIET_MS, a store whose identity shows changes records it. */
  private writeEnded(): void {
    if (--this.writing > 0) return;
    if (!this.busy) this.destager.guestIdle();
    if (!this.changesVisible || this.closed) return;
    if (this.identityTimer !== null) clearTimeout(this.identityTimer);
    this.identityTimer = setTimeout(() => void this.recordIdentity(), IDENTITY_QUIET_MS);
    this.identityTimer.unref();
  }

  private async recordIdentity(): Promise<void> {
    this.identityTimer = null;
    const started = this.writesStarted;
    let identity: string;
    try {
      identity = await this.backing.currentIdentity();
    } catch {
      return;
    }
    if (this.writing === 0 && this.writesStarted === started && !this.closed) this.cache.recordIdentity(this.volume, identity);
  }

  /** Discard and write-zeroes: invalidate when starting, then the backing store. */
  private async zap(offset: number, length: number, fn: () => Promise<void>): Promise<void> {
    if (length === 0) return fn();
    const first = Math.floor(offset / this.bs);
    const last = Math.floor((offset + length - 1) / this.bs);
    // Dirty blocks it touches go to the backing store first (their other bytes stay).
    const taken = this.takeRange(first, last, true);
    const release = typeof taken === 'function' ? taken : await taken;
    const op = this.begin(first, last, true);
    this.keys?.own(first, last);
    this.writeStarted();
    try {
      const killing = this.invalidate(first, last);
      if (killing !== null) await killing;
      await fn();
      this.written(offset, length, first, last);
    } catch (err) {
      this.failed(first, last);
      throw err;
    } finally {
      this.end(op);
      release();
      this.writeEnded();
    }
  }

  discard(offset: number, length: number): Promise<void> {
    return this.zap(offset, length, () => this.backing.discard(offset, length));
  }

  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.zap(offset, length, () => this.backing.writeZeroes(offset, length, unmap));
  }

  /** A successful flush settles the failures before it and forgets the writes before it. */
  async flush(): Promise<void> {
    if (this.mode === 'writeback') {
      // Every acknowledged write-back write is durable in the log already.
      const t = performance.now();
      const direct = this.directWrites;
      if (direct !== this.directFlushed || this.unsettled.length > 0 || this.flushFailed) {
        await this.flushBacking();
        this.directFlushed = direct;
      }
      const c = this.cache.map.stats(this.volume);
      c.flushes++;
      c.flushUs += (performance.now() - t) * 1000;
      return;
    }
    await this.flushBacking();
  }

  private async flushBacking(): Promise<void> {
    const mark = this.clock;
    try {
      await this.backing.flush();
    } catch (err) {
      this.flushFailed = true;
      throw err;
    }
    this.flushFailed = false;
    if (this.unsettled.length > 0) {
      this.unsettled = this.unsettled.filter((u) => {
        if (u.at > mark) return true;
        this.end(u.hold);
        return false;
      });
    }
    if (this.unflushed.length > 0) this.unflushed = this.unflushed.filter((w) => w[2] > mark);
    if (this.unflushedOverflowAt <= mark) this.unflushedOverflowAt = 0;
  }

  /** Waits until this volume has no insertion or read-ahead pending. */
  async drain(): Promise<void> {
    while (this.inserting.size > 0) await Promise.all([...this.inserting]);
  }

  /**
   * Waits for this volume's pending insertions; drops its blocks if the last flush failed (or
   * the store was fenced); leaves the cache recording the backing store's identity as it is
   * now (after the final flush); closes the backing store.
   */
  async close(): Promise<void> {
    if (this.flushOnStop && this.destager.dirty > 0) await this.destager.drain();
    this.closed = true;
    if (this.identityTimer !== null) clearTimeout(this.identityTimer);
    await this.destager.close();
    this.removeDrainer();
    await this.drain();
    if (this.flushFailed || this.fenced) this.cache.dropVolume(this.volume);
    let identity = '';
    try {
      identity = await this.backing.currentIdentity();
    } finally {
      // Without the identity (stat failed) the next registration drops the blocks.
      this.unregister(identity);
      await this.backing.close();
    }
  }
}
