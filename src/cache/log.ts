/**
 * The log on the cache device: cache blocks are appended at the CLOCK hand (cache-map.ts) into
 * a RAM segment buffer; a segment is written with one sequential write when the hand leaves it.
 *
 * Buffer pool (SegmentBuffer states, segment.ts):
 *
 *   Free --load--> Reading --read done--> Clean --acquire--> Filling --hand leaves--> Writing
 *     ^               (or Clean at once when the segment holds no valid block)         |
 *     +------------------------- write failed (slots dropped) <-------------------------+
 *                                 write done --> Clean (kept for RAM hits until recycled)
 *
 * Segment writes: only what changed is written: the header (always) and each run of slots that
 * received a block since the buffer started filling, one write per run (the header and a run
 * starting at the segment's first slot are contiguous: one write). Slots the hand carried
 * forward or left alone hold the same bytes on the device already. A cleaning that refills a
 * few holes thus writes those blocks and the header, not the whole segment (deviceWriteBytes).
 *
 * Early write-out: on a buffered descriptor (alignment 1; an O_DIRECT one leaves no dirty pages)
 * a segment write the hand left behind (rotate) is followed, once it completed, by
 * engine.startWriteout over its bytes: the kernel writes them back while the log fills the next
 * segments, so the fdatasync that makes them durable later (a rewrite batch, a commit, an
 * eviction sync) waits for less. The writes of flush() and commit() get none: their fdatasync
 * follows at once. It makes nothing durable and changes no durability rule; a failure is logged
 * (once) and otherwise ignored, since the fdatasync reports what matters.
 *
 * Read-ahead: before a segment is refilled, if any of its slots still holds a valid block (the
 * log has wrapped and CLOCK spared or simply did not reach those blocks yet), the whole segment
 * is read first (one read), so its buffer serves RAM hits of those blocks. A segment the map
 * refills holes only (cache-map.ts) is not read: its buffer holds only the blocks put into it
 * (`present`), hits of its other slots go to the device, whose bytes the refill leaves alone. Their header
 * entries and data CRC-32Cs are checked then (against the BDA); a block that does not check is
 * dropped (a data mismatch counts as a checksum error). The next
 * segment is read ahead as soon as the hand enters a segment (prefetch), if a buffer is free.
 *
 * Reads of cached blocks: a block whose segment sits in a Filling/Writing/Clean buffer is
 * copied from RAM (ramHit). Otherwise it is read from the device; segGen[s] is bumped whenever
 * a write of segment s is issued, and a device read whose segment generation changed while it
 * was in flight is reported as not valid (the caller treats it as a miss).
 *
 * Direct reads (readDirect) go straight into a caller's buffers that others can see while the
 * read is in flight (guest memory), so they must never receive another block's data, not even
 * transiently: directReaders[s] counts the direct reads of segment s in flight, and the device
 * write of s (submit) is deferred until it is 0. Its generation is still bumped at submit, so a
 * direct read that overlapped a submit reports not valid like any other read.
 *
 * Every device read is exact: end of device is an error, never zeros. CRC-32Cs of inserted
 * blocks are computed here, from their copies in the segment buffer (one native call per run of
 * adjacent slots an insertion fills), and kept in the BDA; callers check
 * device hits against them (checkBlocks) and report mismatches (checksumMismatch), which are
 * logged once per segment until the segment is rewritten.
 *
 * Failures never throw out of the insertion path: a read-ahead error drops the segment's
 * blocks; a write error drops them and disables insertion for good (pass-through), with one
 * log line. Device read errors of cached blocks reject readSlots() with the engine's error.
 *
 * Insertion work is deferred off the requests' path: insert() only counts the blocks
 * (backpressure) and queues the job; its CRC-32Cs, the copies into the segment buffer, the map
 * updates and the sealing of segments run in the check phase of a later loop turn (setImmediate),
 * after the devices have answered and notified the requests completed in that turn, at most
 * INSERT_BLOCKS_PER_TURN blocks' worth of jobs per turn (at least one job). A job that has to
 * wait for a buffer (all of them being written or read) goes on when one is free, in that
 * completion's turn (yielding to a check phase there as well halved the insertion rate of a
 * fast sequential warm-up: bench/read-join.ts dropped 55 % of its blocks by back-pressure).
 * The caller's `accept` is asked when each block is placed, so an insertion made stale while it
 * waited (a write of its blocks poisoned it) places nothing; quiesce() and flush() wait for the
 * queued jobs.
 *
 * All insertions and flushes run one at a time (a promise chain), so the hand only moves
 * under that chain.
 *
 * Durable invalidation (the invariant of recovery.ts): a slot dropped from the map keeps its
 * header entry on the device until a header of its segment sealed later is durable
 * (dropped.ts). killFor() finds the segments whose headers still name the blocks a write is
 * about to change and rewrites them: each header is sealed again from the BDA (a new sequence
 * number, every sector) and written; the write waits for those writes to complete (unless only
 * clean entries are involved and their segments could be marked in the superblock instead:
 * kill-marks.ts, the rewrites then run without the write waiting), and for an
 * fdatasync after them only when an entry may be dirty on the device (dropped while dirty, or
 * its segment holds a clean mark no durable header records yet: cleanMarkSeq against
 * durableSeq) or for a destage (docs/cache-format.md "Crash kinds": after a host crash the
 * clean entries are all dropped, a process crash keeps every completed write). All the
 * rewrites asked for in one JS turn, and while a batch writes, form one batch (a batch that
 * nothing waits for, i.e. background rewrites and those of marked kills only, first gathers for
 * REWRITE_DELAY_MS, so a worker's wake-up serves many kills); its fdatasync,
 * if any, runs after the batch (the next batch's writes never wait for it). Every device write of a segment
 * (segment writes and header rewrites) is chained per segment (onSegment), so a rewrite never
 * lands before a write of that segment issued earlier, nor races a later one. Drops not caused
 * by a write (failed reads, checksums, moved blocks) start a rewrite in the background, so the
 * set stays small (those background rewrites, like the clean marks of destaged blocks, get no
 * fdatasync of their own: they are durable with the next one, and until then a write of their
 * keys still finds and rewrites them); evictions wait for their segment's own write, then for
 * an fdatasync (one is started once MAX_UNSYNCED_SEGMENTS segments' worth of them wait).
 * A slot marked clean (destaged) that no durable header records as clean yet (cleanUnrecorded)
 * may still be named dirty by a durable header: a segment write that refills it writes its
 * header and fdatasyncs it before issuing its data runs (write, headerFirst), so a crash never
 * leaves that dirty entry over other data (sealed at or below the durable mark, recovery would
 * not check it: unreadable for good).
 *
 * Write-back (dirty blocks, the group commit): insert(..., { dirty }) puts write-back blocks into
 * the segment being filled like any other; commit() then makes every block inserted before it
 * durable: the buffered segment is submitted (its data runs and its header in one submission,
 * like every segment write), then one fdatasync (or, when no write completed since the last one
 * started, that one is waited for: a rewrite batch's fdatasync may have started after the
 * commit's writes completed). The commits asked for while one waits in the chain or runs
 * share it (unless an insertion was queued since it was asked for: every insertion queued
 * before runs before it in the chain, so its blocks are in what it submits): one device write
 * set + one fdatasync per batch of requests. Only a commit's submission runs in the chain: the
 * insertions and commits behind it go on while its writes and fdatasync run, and up to
 * MAX_SYNCS_IN_FLIGHT fdatasyncs run at once (the commits beyond share the next one; on this
 * VM's disk concurrent fdatasyncs complete about as fast as one). A header may thus land before its data (a crash
 * between the two): every header sector carries the durable mark (`synced`: each write sealed
 * at or below it completed before an fdatasync that completed), and recovery.ts checks the
 * data of the dirty entries sealed above the highest mark on the device against their CRC-32C (a torn
 * block was never acknowledged: its entry is dropped, the older copy it superseded wins). A dirty block replaced by a newer
 * dirty copy is not forgotten at once: its slot stays SHADOW (bda.ts) and every header sealed
 * meanwhile names it, marked superseded with its age (the sequence numbers sealed since it was
 * superseded: recovery.ts 8. ranks it against the other entries of its key by it; a torn write
 * of the new copy's header can then never leave neither copy on the device, nor let an older
 * copy still named win), until the commit that made the new copy durable; then it
 * becomes RESERVED like any other dropped dirty slot: not reused until a header sealed after
 * its drop is durable, so no slot whose entry may still name acknowledged data is refilled.
 * Those headers are not rewritten per commit (random overwrites would cost about one header
 * rewrite per write): the hand's next write of the segment covers them, or one batch rewrites
 * every uncovered header once RESERVED_REWRITE_SHARE of the slots were released since the last
 * such batch; a destage of the key rewrites them first anyway (killDropped).
 * A header rewrite of the segment being filled names only the slots whose data is on the device
 * (not those put since it was last submitted). Device read failures and checksum mismatches of
 * dirty blocks never drop them (the backing store is older): their reads fail instead.
 *
 * After a write error nothing is sealed any more: `onDisabled` makes durable that no header
 * written so far is recovered (the volume table's floor above every sequence number used, or
 * failing that a retired superblock: cache.ts retire). killFor() then resolves once that is
 * durable, and rejects (EIO: the write is never issued) while it cannot be made durable; each
 * later killFor tries again (one attempt round at a time).
 */
import { readDirectIo } from '../io/direct-io';
import type { IoEngine } from '../io/io-engine';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { Logger } from '../util/logger';
import type { CacheMap } from './cache-map';
import { type Dropped, DroppedEntries } from './dropped';
import type { KillMarks } from './kill-marks';
import { FLAG_RESERVED, FLAG_SHADOW } from './bda';
import { BufferState, checkHeaderSectors, entryKeyHi, entryOffset, entrySector, type Geometry, sealHeader, SEGMENT_ALIGNMENT, SegmentBuffer, segmentOffset, slotOffset } from './segment';
import { LatencyMeter } from './stats';

/** One device read of cached blocks in this many is timed (readLatency: a sampled mean, see LatencyMeter). */
export const READ_LATENCY_SAMPLE = 16;

/** Blocks' worth of queued insertion jobs started per loop turn (one job at least; see the header). */
export const INSERT_BLOCKS_PER_TURN = 256;

const NO_VIEWS: readonly Uint8Array[] = [];

/** Placeholder callback of a free DirectRead. */
function unsettled(): void {}

/**
 * A readDirect() in flight. Records are kept on a free list and reused, so a device hit
 * allocates no closure or context for its read (hits at depth 1 and 32: issue 16).
 */
class DirectRead {
  seg = 0;
  gen = 0;
  t = 0;
  slot = 0;
  blocks = 0;
  volume = 0;
  block = 0;
  bufs: readonly Uint8Array[] = NO_VIEWS;
  done: (ok: boolean, err: Error | null) => void = unsettled;
  /** The engine's completion callback, bound to this record once (newDirectRead). */
  settle: (err: Error | null, match: boolean) => void = unsettled;
}

/** Resolves in the check phase of the loop turn (setImmediate). */
function checkPhase(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface LogOptions {
  fd: number;
  /** O_DIRECT alignment of fd (1: buffered). Segment I/O is always aligned; reads into other
   * buffers go through a bounce buffer when they are not (readDirectIo). */
  alignment: number;
  engine: IoEngine;
  geometry: Geometry;
  map: CacheMap;
  /** Device uuid written in every segment header. */
  uuid: Uint8Array;
  /** Last sequence number used; the next segment write uses sequence + 1. */
  sequence: number;
  /**
   * The durable mark to start from (see the file comment): the highest mark recovery found
   * after a crash (the headers it rewrites must not vouch for data it dropped), else `sequence`.
   */
  synced: number;
  /** RAM segment buffers (>= 2). */
  buffers: number;
  /** Insertions queued beyond this many blocks are not cached (backpressure). */
  maxQueuedBlocks: number;
  logger: Logger;
  /**
   * Called at the first write error, and again by each killFor() after a round that gave up:
   * makes durable that nothing written so far is recovered; resolves true when it is, false
   * when that round gave up (never rejects).
   */
  onDisabled: () => Promise<boolean>;
  /** Kill marks (kill-marks.ts): a kill of clean entries marks their segments instead of waiting; null: it waits. */
  marks: KillMarks | null;
  /** Rewrites nothing waits for gather this long (REWRITE_DELAY_MS; 0: none gather). */
  rewriteDelayMs: number;
}

/** Evicted entries awaiting an fdatasync, in segments' worth, beyond which one is started. */
export const MAX_UNSYNCED_SEGMENTS = 4;

/**
 * fdatasyncs in flight at once; a further one asked for waits for one of them to finish, then
 * starts for every caller that asked meanwhile (see the file comment).
 */
export const MAX_SYNCS_IN_FLIGHT = 2;

/**
 * Superseded write-back copies released (RESERVED) since the last rewrite they started, as a
 * share of the slots, at which the headers still naming them are rewritten (one batch; see the
 * file comment).
 */
export const RESERVED_REWRITE_SHARE = 1 / 32;

/**
 * Bytes of header rewrite buffers kept for reuse once their write is done (at least one buffer):
 * a fresh aligned buffer per rewrite cost about 40 µs of main-thread CPU each in a profiled
 * destage pass (allocation, zeroing, external-memory GC), more than sealing the header.
 */
export const HEADER_POOL_BYTES = 1 << 20;

/**
 * How long header rewrites nothing waits for (background rewrites, the rewrites of kills whose
 * segments are marked) gather before their batch starts, unless a rewrite someone waits for
 * joins it first. An isolated 4 KiB buffered write through io_uring wakes a sleeping kernel
 * worker (~45 µs of the loop on this PVM guest, docs/benchmarks.md); one batch per delay
 * instead of one per kill.
 */
export const REWRITE_DELAY_MS = 20;

/** Header rewrites asked for and not started yet, and their waiters. */
interface RewriteBatch {
  segs: Set<number>;
  /** An fdatasync after the headers (false: background rewrites only, durable with the next one). */
  sync: boolean;
  /** True when the headers were rewritten and synced, or nothing is recoverable any more. */
  done: Promise<boolean>;
  resolve: (ok: boolean) => void;
  /** True when the headers' writes completed (not synced), or nothing is recoverable any more. */
  written: Promise<boolean>;
  wrote: (ok: boolean) => void;
  /** Something waits for it: start it after this JS turn (else it gathers for REWRITE_DELAY_MS once it could start). */
  due: boolean;
}

/** What Log.insert()'s blocks are (each flag false when absent). */
export interface InsertKind {
  /** Read-ahead data (marked in the map until first read). */
  prefetched?: boolean;
  /** Write-back data: never refused for the backlog; durable once a commit() asked for after the insertion resolves true. */
  dirty?: boolean;
  /**
   * Blocks a read missed: each is placed only if the map's admission takes it (CacheMap.admit,
   * asked when it would be placed), the others are skipped. Writes and read-ahead are always placed.
   */
  readMiss?: boolean;
}

export class Log {
  readonly g: Geometry;
  sequence: number;
  /** Set by the first write error: nothing is inserted any more. */
  disabled = false;
  segmentReads = 0;
  segmentWrites = 0;
  /** Bytes written to the device by segment writes (headers + refilled runs) and header rewrites. */
  deviceWriteBytes = 0;
  /** Header rewrites (durable invalidations) and their batches; fdatasyncs started (all of them). */
  headerRewrites = 0;
  rewriteBatches = 0;
  fdatasyncs = 0;
  /** Entries that may still be valid on the device for keys no longer in the map. */
  readonly dropped: DroppedEntries;
  readErrors = 0;
  writeErrors = 0;
  insertsDropped = 0;
  readonly readLatency = new LatencyMeter(READ_LATENCY_SAMPLE);
  readonly segmentReadLatency = new LatencyMeter();
  readonly segmentWriteLatency = new LatencyMeter();

  private readonly fd: number;
  private readonly alignment: number;
  private readonly engine: IoEngine;
  private readonly map: CacheMap;
  private readonly uuid: Uint8Array;
  private readonly logger: Logger;
  private readonly maxQueued: number;
  private readonly marks: KillMarks | null;
  private readonly segGen: Uint32Array;
  /** 1 once a checksum mismatch of the segment was logged (cleared when it is rewritten). */
  private readonly checksumLogged: Uint8Array;
  /** checkBlocks() result: bad[k] = 1 when block k did not match. */
  private bad = new Uint8Array(64);
  /** checkHeaderSectors() scratch. */
  private readonly sectorSeqs: Float64Array;
  private readonly sectorCrcs: Uint32Array;
  /** Direct reads in flight per segment. */
  private readonly directReaders: Uint32Array;
  /** readDirect() records not in flight. */
  private readonly directFree: DirectRead[] = [];
  /** Deferred segment writes waiting for directReaders[segment] to reach 0, by segment. */
  private readonly drainWaiters = new Map<number, () => void>();
  private readonly pool: SegmentBuffer[] = [];
  private current: SegmentBuffer | null = null;
  /** Slots (by index in the segment) of `current` that received a block since it started filling. */
  private readonly putSlots: Uint8Array;
  /** Buffers loaded without a read: 1 for each slot whose data the buffer holds. */
  private readonly present = new Map<SegmentBuffer, Uint8Array>();
  private tail: Promise<void> = Promise.resolve();
  /** Jobs waiting for a loop turn's check phase (see the header), oldest first. */
  private deferred: { blocks: number; start: () => void }[] = [];
  private turnScheduled = false;
  private readonly runTurn = (): void => this.startDeferred();
  private queued = 0;
  private useClock = 0;
  /** Per segment: the last device write of it issued (segment write or header rewrite). */
  private readonly segTail = new Map<number, Promise<void>>();
  private nextBatch: RewriteBatch | null = null;
  /** Header rewrite buffers whose write is done, for reuse (at most HEADER_POOL_BYTES of them). */
  private readonly headerPool: Uint8Array[] = [];
  private batchRunning: Promise<void> | null = null;
  /** The fdatasyncs of batches whose headers are written (runBatch), until they settle. */
  private readonly batchSyncs = new Set<Promise<boolean>>();
  private batchQueued = false;
  /** Starts a batch of rewrites nothing waits for (LogOptions.rewriteDelayMs). */
  private batchTimer: NodeJS.Timeout | null = null;
  private readonly rewriteDelayMs: number;
  /** Entries covered by written headers, forgotten at the next successful fdatasync. */
  private awaitingSync: Dropped[] = [];
  /** Headers written since the last fdatasync started: segment -> highest sequence number. */
  private headersAwaitingSync = new Map<number, number>();
  /** Per segment: the highest sequence number of a header of it known durable (0: none). */
  private readonly durableSeq: Float64Array;
  /** Per segment: the last sequence number used before a clean mark of one of its slots (-1: none). */
  private readonly cleanMarkSeq: Float64Array;
  /**
   * Per segment: its slots marked clean that no durable header of it records as such yet -> the
   * last sequence number used before the mark (a durable header may still name them dirty).
   * Kept per segment so a sync looks only at the segments whose headers it made durable.
   */
  private readonly cleanUnrecorded = new Map<number, Map<number, number>>();
  /** A slot of cleanUnrecorded was refilled since the segment being filled started (putSlots). */
  private putOverUnrecorded = false;
  private readonly onDisabled: () => Promise<boolean>;
  /** The onDisabled() round in flight, and whether one succeeded (then for good). */
  private floorRound: Promise<boolean> | null = null;
  private floorSafe = false;
  /** Set once a startWriteout failure was logged. */
  private writeoutFailed = false;
  /** Slots made SHADOW since the last commit started (released when it is durable). */
  private shadows: number[] = [];
  /** SHADOW slots -> the last sequence number used before they became SHADOW (their age in the headers: segment.ts sealHeader). */
  private readonly supersededAt = new Map<number, number>();
  /** RESERVED slots -> the dropped entry whose durable cover releases them. */
  private readonly reserved = new Map<number, Dropped>();
  /** Superseded copies released since the last rewrite they started, and how many start one. */
  private released = 0;
  private readonly releasedRewriteAt: number;
  /** The last commit asked for, shared by callers until it is done or an insertion is queued. */
  private commitNext: Promise<boolean> | null = null;
  /** Insertions queued so far, and their count when commitNext was asked for. */
  private inserts = 0;
  private commitNextAfter = 0;
  /** Device writes completed since the last fdatasync started. */
  private unsynced = 0;
  /**
   * The last fdatasync started (settled or not): it makes durable every write completed before
   * it started. False only when it failed, which disabled the log.
   */
  private syncing: Promise<boolean> = Promise.resolve(true);
  /** fdatasyncs in flight (at most MAX_SYNCS_IN_FLIGHT), and the one waiting for a place, shared by its callers. */
  private readonly syncsRunning = new Set<Promise<boolean>>();
  private syncQueued: { done: Promise<boolean>; resolve: (ok: boolean | Promise<boolean>) => void } | null = null;
  /** Commits asked for and not done (quiesce waits for them: their fdatasyncs run outside the chain). */
  private readonly committing = new Set<Promise<boolean>>();
  /** The durable mark sealed into headers (see the file comment). */
  private synced: number;
  /** Sequence numbers of the device writes sealed and not completed yet. */
  private readonly inFlight = new Set<number>();
  /** Commits run, and the mean latency of a commit (from the request to durable). */
  commits = 0;
  readonly commitLatency = new LatencyMeter();

  constructor(o: LogOptions) {
    this.g = o.geometry;
    this.fd = o.fd;
    this.alignment = o.alignment;
    this.engine = o.engine;
    this.map = o.map;
    this.uuid = o.uuid;
    this.sequence = o.sequence;
    this.synced = o.synced;
    this.logger = o.logger;
    this.maxQueued = o.maxQueuedBlocks;
    this.marks = o.marks;
    this.rewriteDelayMs = o.rewriteDelayMs;
    this.onDisabled = o.onDisabled;
    this.dropped = new DroppedEntries(this.g.blocksPerSegment);
    this.releasedRewriteAt = Math.max(1, Math.floor(this.map.slots * RESERVED_REWRITE_SHARE));
    this.map.onDrop = (slot, evicted, superseded) => this.slotDropped(slot, evicted, superseded);
    this.segGen = new Uint32Array(this.g.segments);
    this.durableSeq = new Float64Array(this.g.segments);
    this.cleanMarkSeq = new Float64Array(this.g.segments).fill(-1);
    this.directReaders = new Uint32Array(this.g.segments);
    this.checksumLogged = new Uint8Array(this.g.segments);
    this.putSlots = new Uint8Array(this.g.blocksPerSegment);
    this.sectorSeqs = new Float64Array(this.g.headerSectors);
    this.sectorCrcs = new Uint32Array(this.g.headerSectors);
    const n = Math.max(2, Math.min(o.buffers, this.g.segments));
    for (let i = 0; i < n; i++) this.pool.push(new SegmentBuffer(this.g));
  }

  /** The RAM copy of slot i's block if its segment is buffered (Filling/Writing/Clean), else null. */
  ramBlock(slot: number): Uint8Array | null {
    const b = this.ramBuffer(slot);
    return b === null ? null : b.block(slot % this.g.blocksPerSegment);
  }

  /**
   * The buffer holding slot i's segment if it is Filling/Writing/Clean (slot i's data is at
   * headerSize + (i % blocksPerSegment) * blockSize of its `buf`), else null. Marks it used.
   */
  ramBuffer(slot: number): SegmentBuffer | null {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    for (const b of this.pool) {
      if (b.segment === seg && b.state !== BufferState.Free && b.state !== BufferState.Reading) {
        if (this.present.get(b)?.[slot - seg * this.g.blocksPerSegment] === 0) return null;
        b.lastUse = ++this.useClock;
        return b;
      }
    }
    return null;
  }

  /**
   * Reads `count` consecutive slots of one segment from the device into `into`. Resolves true
   * when the data is the blocks the slots held when the read was issued, false when the
   * segment was rewritten meanwhile. Rejects with the engine's VhostError on I/O failure.
   */
  async readSlots(slot: number, count: number, into: Uint8Array): Promise<boolean> {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    const gen = this.segGen[seg];
    const t = this.readLatency.start();
    const len = count * this.g.blockSize;
    await this.readAt(slotOffset(this.g, slot), len, [into.subarray(0, len)]);
    this.readLatency.record(t);
    return this.segGen[seg] === gen;
  }

  /**
   * Reads `blocks` whole blocks of slots slot.. (held for `volume`'s blocks block..) from the
   * device into `bufs` (their total length; the range must stay inside the slot's segment) while
   * holding back any write of that segment (see directReaders), and checks them against their
   * CRC-32Cs in the same step. Calls done(true, null) when the data is what the slots held when
   * the read was issued and every block matched; done(false, null) when a write of the segment
   * was issued meanwhile (bufs then hold those older bytes, never newer ones) or a block did not
   * match (each such block still held is counted and dropped: checksumFailed); done(false, err)
   * with the engine's VhostError on I/O failure. A callback, not a promise: this is the path of
   * every device hit.
   */
  readDirect(
    slot: number,
    bufs: readonly Uint8Array[],
    blocks: number,
    volume: number,
    block: number,
    done: (ok: boolean, err: Error | null) => void,
  ): void {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    const r = this.directFree.pop() ?? this.newDirectRead();
    r.seg = seg;
    r.gen = this.segGen[seg] as number;
    r.t = this.readLatency.start();
    r.slot = slot;
    r.bufs = bufs;
    r.blocks = blocks;
    r.volume = volume;
    r.block = block;
    r.done = done;
    this.directReaders[seg]++;
    const offset = slotOffset(this.g, slot);
    const bs = this.g.blockSize;
    // The engine checks the blocks as the read completes (io_uring: natively, no extra call).
    if (this.alignment === 1) this.engine.readvChecked(this.fd, bufs, offset, bs, this.map.bda.crc, slot, r.settle);
    else {
      readDirectIo(this.engine, this.fd, offset, blocks * bs, bufs, this.alignment, true).then(
        () => r.settle(null, this.checkBlocks(slot, bufs, blocks) === null),
        (err: Error) => r.settle(err, false),
      );
    }
  }

  /** A reusable record of readDirect, its settle callback bound once (no closure per read). */
  private newDirectRead(): DirectRead {
    const r = new DirectRead();
    r.settle = (err, match) => this.directSettled(r, err, match);
    return r;
  }

  /** The device read of `r` completed: `match` when every block matched its CRC-32C. */
  private directSettled(r: DirectRead, err: Error | null, match: boolean): void {
    const { seg, gen, t, slot, bufs, blocks, volume, block, done } = r;
    // Back to the free list before `done`, which may start the next read with it.
    r.bufs = NO_VIEWS;
    r.done = unsettled;
    this.directFree.push(r);
    if (err !== null) {
      this.directDone(seg);
      done(false, err);
      return;
    }
    this.readLatency.record(t);
    this.directDone(seg);
    if (this.segGen[seg] !== gen) return done(false, null);
    if (match) return done(true, null);
    // Which blocks did not match (rare: found again here).
    const bad = this.checkBlocks(slot, bufs, blocks);
    if (bad !== null) for (let j = 0; j < blocks; j++) if (bad[j] !== 0) this.checksumFailed(slot + j, volume, block + j);
    done(false, null);
  }

  /** An exact device read of len bytes (bufs' total) at offset, any buffers (see alignment). */
  private readAt(offset: number, len: number, bufs: readonly Uint8Array[]): Promise<void> {
    if (this.alignment === 1) return this.engine.readv(this.fd, bufs, offset, true);
    return readDirectIo(this.engine, this.fd, offset, len, bufs, this.alignment, true);
  }

  /**
   * Checks `data` (one view or a scatter list of whole blocks) read for slots slot.. against
   * their CRC-32Cs. Returns null when every block matches, else a view with 1 for each block
   * that did not (valid until the next call).
   */
  checkBlocks(slot: number, data: Uint8Array | readonly Uint8Array[], blocks: number): Uint8Array | null {
    if (this.bad.length < blocks) this.bad = new Uint8Array(Math.max(blocks, 2 * this.bad.length));
    // A single view is passed as such: the native side then skips reading an array.
    const bufs = Array.isArray(data) && data.length === 1 ? (data[0] as Uint8Array) : data;
    const n = native.crc32cCheck(bufs, this.g.blockSize, this.map.bda.crc, slot, this.bad);
    return n === 0 ? null : this.bad;
  }

  /**
   * Slot `slot`, read for (volume, block), did not match its CRC-32C: counted, logged and
   * dropped if it still holds that block (else it was reassigned meanwhile: nothing to do).
   */
  checksumFailed(slot: number, volume: number, block: number): void {
    const bda = this.map.bda;
    if (!bda.isValid(slot) || bda.volumeOf(slot) !== volume || bda.blockOf(slot) !== block) return;
    this.checksumMismatch(slot, volume, block);
    // A dirty block is the only copy of its data: kept, its reads fail (see the file comment).
    if (!bda.isDirty(slot)) this.map.drop(slot);
  }

  /**
   * Slot `slot`'s device data did not match its CRC-32C: counted (checksumErrors of the volume
   * the slot held), logged once per segment until the segment is rewritten. The caller drops it.
   */
  private checksumMismatch(slot: number, volume: number, block: number): void {
    this.map.stats(volume).checksumErrors++;
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    if (this.checksumLogged[seg] !== 0) return;
    this.checksumLogged[seg] = 1;
    this.logger.error(
      { segment: seg, slot, volume, block },
      'cache device block failed its CRC-32C check; dropped, served from the backing store (further mismatches in this segment are counted, not logged)',
    );
  }

  private directDone(seg: number): void {
    if (--this.directReaders[seg] !== 0) return;
    const wake = this.drainWaiters.get(seg);
    if (wake) {
      this.drainWaiters.delete(seg);
      wake();
    }
  }

  /**
   * Appends blocks first .. first + count - 1 of `volume` (data: count blocks, contiguous, kept
   * by the caller until this settles; if it changes meanwhile, a block holds the bytes seen when
   * it was copied, its CRC-32C is those bytes'), in a later loop turn (see the header). `accept`
   * is asked when each block is placed; false stops the insertion (e.g. a write raced with the
   * read that produced the data, or started while the insertion waited for its turn).
   * Resolves with the number of blocks inserted; never rejects. `kind`: what the blocks are
   * (InsertKind; none set: written data, always placed).
   */
  insert(volume: number, first: number, data: Uint8Array, count: number, accept: () => boolean, kind: InsertKind = {}): Promise<number> {
    if (this.disabled) return Promise.resolve(0);
    if (kind.dirty !== true && this.queued + count > this.maxQueued) {
      this.insertsDropped += count;
      return Promise.resolve(0);
    }
    this.queued += count;
    this.inserts++;
    return this.defer(count, async () => {
      try {
        return await this.place(volume, first, data, count, accept, kind);
      } finally {
        this.queued -= count;
      }
    });
  }

  /** The work of insert(), run in the chain in a check phase. */
  private async place(volume: number, first: number, data: Uint8Array, count: number, accept: () => boolean, kind: InsertKind): Promise<number> {
    const prefetched = kind.prefetched === true;
    const dirty = kind.dirty === true;
    const readMiss = kind.readMiss === true;
    const bs = this.g.blockSize;
    const bps = this.g.blocksPerSegment;
    const crc = this.map.bda.crc;
    // The CRC-32Cs are computed from the copies in the segment buffer (so they match what is
    // stored even if the caller's data changed meanwhile), one native call per run of adjacent
    // slots: slots runFrom .. runFrom + runLen - 1 of buffer runBuf were copied, not summed yet.
    // A run is summed before anything can read its CRCs (a seal, a read): before each await.
    let runBuf: SegmentBuffer | null = null;
    let runFrom = 0;
    let runLen = 0;
    const sum = (): void => {
      if (runBuf === null) return;
      const k = runFrom - runBuf.segment * bps;
      native.crc32cBlocks(runBuf.data.subarray(k * bs, (k + runLen) * bs), bs, crc, runFrom);
      runBuf = null;
    };
    let n = 0;
    for (let k = 0; k < count; k++) {
      if (this.disabled || !accept()) break;
      if (readMiss && !this.map.admit(volume, first + k)) continue;
      const victim = this.map.findVictim(volume);
      if (victim < 0) break; // every slot pinned: fewer blocks inserted (write-back writes go through)
      const seg = Math.floor(victim / bps);
      if (this.current === null || this.current.segment !== seg) {
        sum();
        await this.rotate(seg);
        if (this.disabled || !accept()) break;
      }
      const cur = this.current as SegmentBuffer | null;
      if (cur === null) break;
      this.map.assign(victim, volume, first + k, prefetched, dirty);
      cur.putBlock(victim - seg * bps, data.subarray(k * bs, (k + 1) * bs));
      if (runBuf === cur && victim === runFrom + runLen) runLen++;
      else {
        sum();
        runBuf = cur;
        runFrom = victim;
        runLen = 1;
      }
      this.putSlots[victim - seg * bps] = 1;
      if (this.cleanUnrecorded.size > 0 && this.cleanUnrecorded.get(seg)?.has(victim) === true) this.putOverUnrecorded = true;
      const present = this.present.get(cur);
      if (present !== undefined) present[victim - seg * bps] = 1;
      n++;
    }
    sum();
    return n;
  }

  /**
   * Writes the partly filled segment (if any) and waits for every write, rewrites the headers
   * still naming dropped entries (so the device names exactly the map's blocks: the metadata
   * saved at a clean close), then fdatasync. Resolves false if anything failed (insertion is
   * then disabled).
   */
  flush(): Promise<boolean> {
    return this.afterQueued(async () => {
      const shadows = this.shadows;
      this.shadows = [];
      await this.submitCurrent();
      if (this.disabled) return false;
      if (shadows.length > 0) {
        // Their newer copies durable first, then their entries go with the rewrites below.
        if (this.unsynced > 0 && !(await this.sync())) return false;
        this.releaseShadows(shadows);
      }
      const uncovered = this.dropped.uncovered();
      if (this.disabled) return false;
      if (uncovered.length > 0) await this.rewrite(uncovered);
      if (this.disabled) return false;
      return this.sync();
    });
  }

  /**
   * Makes every block inserted before this call durable (see the file comment); the calls made
   * before the commit is done share it, unless an insertion was queued in between (it would run
   * after that commit). Resolves false when a write failed (never rejects). Only the submission
   * runs in the chain: the insertions queued behind it go on while its writes and fdatasync run.
   */
  commit(): Promise<boolean> {
    if (this.commitNext !== null && this.commitNextAfter === this.inserts) return this.commitNext;
    const t = LatencyMeter.now();
    const p = this.afterQueued(() => Promise.resolve(this.submitForCommit()))
      .then((submitted) => this.commitDurable(submitted))
      .then((ok) => {
        this.commits++;
        this.commitLatency.record(t);
        return ok;
      })
      .finally(() => {
        if (this.commitNext === p) this.commitNext = null;
        this.committing.delete(p);
      });
    this.committing.add(p);
    this.commitNext = p;
    this.commitNextAfter = this.inserts;
    return p;
  }

  /**
   * commit()'s part in the chain: submits the buffered segment; returns the SHADOW slots whose
   * newer copies it makes durable and every segment write issued so far (its blocks' writes).
   */
  private submitForCommit(): { shadows: number[]; writes: Promise<void>[] } {
    const shadows = this.shadows;
    this.shadows = [];
    this.submitBuffered();
    return { shadows, writes: this.pool.map((b) => b.pending) };
  }

  /** commit()'s part after the chain: its writes completed, then made durable; shadows released. */
  private async commitDurable(c: { shadows: number[]; writes: Promise<void>[] }): Promise<boolean> {
    await Promise.all(c.writes);
    if (this.disabled) return false;
    if (!(await this.durableNow())) return false;
    this.releaseShadows(c.shadows);
    return true;
  }

  /**
   * Every device write completed so far made durable: an fdatasync if one completed since the
   * last fdatasync started, else that one waited for (it may still be in flight).
   */
  private durableNow(): Promise<boolean> {
    return this.unsynced > 0 ? this.sync() : this.syncing;
  }

  /** Submits the segment being filled (if it received blocks) and waits for every segment write. */
  private async submitCurrent(): Promise<void> {
    this.submitBuffered();
    await Promise.all(this.pool.map((b) => b.pending));
  }

  /** Submits the segment being filled, if it received blocks (the next insertion enters it again). */
  private submitBuffered(): void {
    const cur = this.current;
    if (cur === null) return;
    this.current = null;
    if (cur.dirty) this.submit(cur, false);
    else cur.state = BufferState.Clean;
  }

  /**
   * The newer copies of these SHADOW slots are durable: they become RESERVED (dropped entries),
   * free once a header of their segment sealed since is durable: the hand's next write of that
   * segment, or the rewrite of every uncovered header started once RESERVED_REWRITE_SHARE of
   * the slots were released since the last one (scattered overwrites would otherwise cost a
   * header rewrite per write or so).
   */
  private releaseShadows(slots: number[]): void {
    if (slots.length === 0) return;
    const bda = this.map.bda;
    for (const slot of slots) {
      this.supersededAt.delete(slot);
      if (bda.flags[slot] !== FLAG_SHADOW) continue;
      bda.flags[slot] = FLAG_RESERVED;
      this.reserved.set(slot, this.dropped.add(slot, bda.volumeOf(slot), bda.blockOf(slot), true));
      this.released++;
    }
    if (this.released < this.releasedRewriteAt) return;
    this.released = 0;
    void this.rewrite(this.dropped.uncovered());
  }

  /** Waits until no insertion, read-ahead or write is in flight (nothing is flushed). */
  async quiesce(): Promise<void> {
    // Queued insertions enter the chain first (the turn that starts them was scheduled before).
    while (this.deferred.length > 0) await checkPhase();
    await this.tail;
    while (this.committing.size > 0) await Promise.all([...this.committing]);
    await Promise.all(this.pool.map((b) => b.pending));
    while (this.batchRunning !== null || this.nextBatch !== null) {
      this.hurry();
      await (this.batchRunning ?? this.nextBatch?.written);
    }
    while (this.batchSyncs.size > 0) await Promise.all([...this.batchSyncs]);
    await Promise.all([...this.segTail.values()]);
    while (this.syncsRunning.size > 0 || this.syncQueued !== null) await Promise.all([...this.syncsRunning, this.syncQueued?.done]);
    await this.floorRound;
    // The marks cleared by the rewrites waited for (their callbacks ran in those turns).
    await Promise.resolve();
    this.marks?.writeClears();
  }

  /** Runs fn in the chain after every insertion queued so far, deferred ones included. */
  private afterQueued<T>(fn: () => Promise<T>): Promise<T> {
    return this.deferred.length > 0 ? this.defer(0, fn) : this.serialize(fn);
  }

  /** Queues fn (a job of `blocks` blocks) to enter the chain in a later check phase (see the header). */
  private defer<T>(blocks: number, fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.deferred.push({ blocks, start: () => this.serialize(fn).then(resolve, reject) });
      if (!this.turnScheduled) {
        this.turnScheduled = true;
        setImmediate(this.runTurn);
      }
    });
  }

  /** One turn's share of the queued jobs into the chain (at least one); the rest waits a turn. */
  private startDeferred(): void {
    this.turnScheduled = false;
    const jobs = this.deferred;
    let budget = INSERT_BLOCKS_PER_TURN;
    let i = 0;
    while (i < jobs.length && (i === 0 || jobs[i].blocks <= budget)) {
      budget -= jobs[i].blocks;
      jobs[i++].start();
    }
    this.deferred = i === jobs.length ? [] : jobs.slice(i);
    if (this.deferred.length > 0) {
      this.turnScheduled = true;
      setImmediate(this.runTurn);
    }
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn);
    this.tail = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  private fail(msg: string): void {
    this.writeErrors++;
    if (!this.disabled) {
      this.disabled = true;
      this.logger.error({ writeErrors: this.writeErrors }, `${msg}; cache disabled for new data (pass-through)`);
      void this.floorDurable(true);
    }
  }

  /** A cache-device write outside the log failed (the volume table): as a segment write error. */
  writeFailed(msg: string): void {
    this.fail(msg);
  }

  /**
   * After a write error: true once nothing written before it can be recovered, false when the
   * attempt round (onDisabled) gave up. With `retry` (a write waits for it) a round is started
   * if none runs; without, only the round running (if any) is waited for. Never rejects.
   */
  private floorDurable(retry: boolean): Promise<boolean> {
    if (this.floorSafe) return Promise.resolve(true);
    if (this.floorRound === null && !retry) return Promise.resolve(false);
    this.floorRound ??= this.onDisabled().then((ok) => {
      this.floorRound = null;
      if (ok) this.floorSafe = true;
      return ok;
    });
    return this.floorRound;
  }

  // ---- Durable invalidation (see the file comment) ----

  /**
   * The map dropped `slot` (its key still in the BDA): its header entry may still be valid. An
   * eviction is covered by the write of the segment being filled (the slot received a block:
   * it is written); any other drop starts a header rewrite in the background.
   */
  private slotDropped(slot: number, evicted: boolean, superseded: boolean): void {
    const bda = this.map.bda;
    if (superseded) {
      // Named by every header until the newer copy is durable (commit), with its age.
      this.shadows.push(slot);
      this.supersededAt.set(slot, this.sequence);
      return;
    }
    const d = this.dropped.add(slot, bda.volumeOf(slot), bda.blockOf(slot), bda.isDirty(slot));
    if (bda.isDirty(slot)) this.reserved.set(slot, d);
    if (!evicted) void this.rewrite([Math.floor(slot / this.g.blocksPerSegment)], false);
  }

  /**
   * Slot `slot` was marked clean in the BDA (its data is in the backing store now): until a
   * header of its segment sealed after this is durable, a durable header may still name it dirty.
   */
  cleaned(slot: number): void {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    this.cleanMarkSeq[seg] = this.sequence;
    let marks = this.cleanUnrecorded.get(seg);
    if (marks === undefined) this.cleanUnrecorded.set(seg, (marks = new Map()));
    marks.set(slot, this.sequence);
  }

  /**
   * Makes every header entry that may still be valid on the device for blocks first .. first +
   * count - 1 of `volume` (the caller dropped them from the map first) invalid for every crash
   * recovery may follow (recovery.ts 1.): null when there is none; else resolves when done.
   * An entry that may be dirty on the device (dropped while dirty, or its segment holds a clean
   * mark no durable header records yet), and every entry when `durable` (a destage), is made
   * durably invalid: its header rewritten, then an fdatasync. Otherwise (clean entries only) a
   * header of its segment sealed after the drop need only be WRITTEN (completed): a process
   * crash keeps every completed write, and recovery after a host crash (boot id changed) drops
   * every clean entry (cache.ts); none is waited for at all when every such header is written
   * already. After a write error: waits until nothing written before it can be recovered, and
   * rejects with EIO if that cannot be made durable (the caller must not issue its write: see
   * the file comment).
   */
  killFor(volume: number, first: number, count: number, durable = false): Promise<void> | null {
    let done: Promise<boolean>;
    if (this.disabled) done = this.floorDurable(true);
    else {
      const segs = new Set<number>();
      const unwritten = new Set<number>();
      let dirty = durable;
      this.dropped.entriesOf(volume, first, count, (d) => {
        const seg = Math.floor(d.slot / this.g.blocksPerSegment);
        segs.add(seg);
        if (!d.written) unwritten.add(seg);
        if (d.dirty || this.cleanMarkSeq[seg] >= this.durableSeq[seg]) dirty = true;
      });
      if (segs.size === 0) return null;
      if (dirty) done = this.rewrite(segs);
      else if (unwritten.size === 0) return null;
      else {
        const marks = this.marks;
        if (marks !== null && marks.mark(unwritten)) {
          // Marked on the device: a process crash now drops these segments' clean entries, and
          // the rewrites that clear the marks need not hurry.
          void this.enqueue(unwritten, false, false).written.then((ok) => {
            if (ok) marks.unmark(unwritten);
          });
          return null;
        }
        done = this.enqueue(unwritten, false, true).written;
      }
    }
    return done.then((ok) => {
      if (!ok) throw new VhostError('cache device refuses writes: the write is not issued (a start after a crash could bring back blocks it makes stale)', 'EIO');
    });
  }

  /**
   * Rewrites the headers of `segs` (sealed from the BDA) then fdatasync. Resolves true when
   * done, or when a write error meanwhile made nothing recoverable (floorDurable); false when
   * neither could be made durable. Never rejects. `sync` false (background rewrites nothing
   * waits for: released superseded copies, drops not caused by a write, clean marks): no
   * fdatasync of its own, the headers become durable with the next one, whoever starts it
   * (until then their dropped entries stay known, so killFor still finds them), and they start
   * REWRITE_DELAY_MS later unless a rewrite someone waits for joins their batch first.
   */
  rewrite(segs: Iterable<number>, sync = true): Promise<boolean> {
    if (this.disabled) return this.floorDurable(false);
    return this.enqueue(segs, sync, sync).done;
  }

  /**
   * Adds segs to the next batch (see rewrite; the log is not disabled) and returns it. `due`:
   * someone waits for it (start it after this JS turn), else it may gather for REWRITE_DELAY_MS.
   */
  private enqueue(segs: Iterable<number>, sync: boolean, due: boolean): RewriteBatch {
    if (this.nextBatch === null) {
      let resolve!: (ok: boolean) => void;
      let wrote!: (ok: boolean) => void;
      const done = new Promise<boolean>((r) => (resolve = r));
      const written = new Promise<boolean>((r) => (wrote = r));
      this.nextBatch = { segs: new Set(), sync, done, resolve, written, wrote, due };
    } else {
      if (sync) this.nextBatch.sync = true;
      if (due) this.nextBatch.due = true;
    }
    for (const s of segs) this.nextBatch.segs.add(s);
    const b = this.nextBatch;
    this.startBatch();
    return b;
  }

  /** The gathering batch, if any, is due now (quiesce, or its REWRITE_DELAY_MS passed). */
  private hurry(): void {
    if (this.nextBatch === null) return;
    this.nextBatch.due = true;
    this.startBatch();
  }

  /**
   * Starts the next batch once the running one is done: after this JS turn's requests when it
   * is due, else when its REWRITE_DELAY_MS have passed.
   */
  private startBatch(): void {
    if (this.batchRunning !== null || this.batchQueued || this.nextBatch === null) return;
    if (!this.nextBatch.due && this.rewriteDelayMs > 0) {
      this.batchTimer ??= setTimeout(() => {
        this.batchTimer = null;
        this.hurry();
      }, this.rewriteDelayMs);
      return;
    }
    if (this.batchTimer !== null) clearTimeout(this.batchTimer);
    this.batchTimer = null;
    this.batchQueued = true;
    queueMicrotask(() => {
      this.batchQueued = false;
      const b = this.nextBatch;
      if (b === null || this.batchRunning !== null) return;
      this.nextBatch = null;
      this.batchRunning = this.runBatch(b).finally(() => {
        this.batchRunning = null;
        this.startBatch();
      });
    });
  }

  /**
   * Writes the batch's headers; its fdatasync (if any) runs after the batch, so the next batch's
   * header writes (kills that need them written only) never wait for it.
   */
  private async runBatch(b: RewriteBatch): Promise<void> {
    this.rewriteBatches++;
    await Promise.all([...b.segs].map((seg) => this.onSegment(seg, () => this.writeHeader(seg))));
    if (this.disabled) {
      const ok = await this.floorDurable(false);
      b.wrote(ok);
      b.resolve(ok);
      return;
    }
    b.wrote(true);
    if (!b.sync) {
      b.resolve(true);
      return;
    }
    const synced = this.sync();
    this.batchSyncs.add(synced);
    void synced.then(async () => {
      this.batchSyncs.delete(synced);
      b.resolve(this.disabled ? await this.floorDurable(false) : true);
    });
  }

  /**
   * fdatasync; forgets the dropped entries whose covering header was written before it, and
   * raises the durable mark to below the oldest write still in flight. At most
   * MAX_SYNCS_IN_FLIGHT run at once; beyond, the callers share one that starts when one of them
   * is done (it covers every write completed before it starts). The last one started is kept
   * as `syncing` (durableNow).
   */
  private sync(): Promise<boolean> {
    if (this.syncsRunning.size < MAX_SYNCS_IN_FLIGHT) return this.startSync();
    if (this.syncQueued === null) {
      let resolve!: (ok: boolean | Promise<boolean>) => void;
      const done = new Promise<boolean>((r) => (resolve = r));
      this.syncQueued = { done, resolve };
    }
    return this.syncQueued.done;
  }

  private startSync(): Promise<boolean> {
    const p = this.syncWritten();
    this.syncing = p;
    this.syncsRunning.add(p);
    void p.then(() => {
      this.syncsRunning.delete(p);
      const queued = this.syncQueued;
      if (queued === null) return;
      this.syncQueued = null;
      queued.resolve(this.startSync());
    });
    return p;
  }

  /** sync()'s work. */
  private async syncWritten(): Promise<boolean> {
    this.fdatasyncs++;
    const written = this.awaitingSync;
    this.awaitingSync = [];
    const headers = this.headersAwaitingSync;
    this.headersAwaitingSync = new Map();
    this.unsynced = 0;
    let mark = this.sequence;
    for (const seq of this.inFlight) mark = Math.min(mark, seq - 1);
    try {
      await this.engine.fdatasync(this.fd);
    } catch (err) {
      this.fail(`cache device fdatasync failed: ${(err as Error).message}`);
      return false;
    }
    this.synced = Math.max(this.synced, mark);
    for (const [seg, seq] of headers) {
      const durable = (this.durableSeq[seg] = Math.max(this.durableSeq[seg], seq));
      const marks = this.cleanUnrecorded.get(seg);
      if (marks === undefined) continue;
      for (const [slot, markSeq] of marks) if (durable > markSeq) marks.delete(slot);
      if (marks.size === 0) this.cleanUnrecorded.delete(seg);
    }
    this.dropped.forget(written);
    if (this.reserved.size > 0) {
      const flags = this.map.bda.flags;
      for (const d of written) {
        if (this.reserved.get(d.slot) !== d) continue;
        this.reserved.delete(d.slot);
        if (flags[d.slot] === FLAG_RESERVED) flags[d.slot] = 0;
      }
    }
    return true;
  }

  /** Runs fn as the next device write of segment seg, after the ones issued before; never rejects. */
  private onSegment(seg: number, fn: () => Promise<void>): Promise<void> {
    const prev = this.segTail.get(seg);
    const p = (prev === undefined ? fn() : prev.then(fn)).catch(() => undefined);
    this.segTail.set(seg, p);
    void p.then(() => {
      if (this.segTail.get(seg) === p) this.segTail.delete(seg);
    });
    return p;
  }

  /** One header rewrite of seg, sealed from the BDA now (see the file comment); never rejects. */
  private async writeHeader(seg: number): Promise<void> {
    if (this.disabled) return;
    const h = this.headerPool.pop() ?? native.alignedBuffer(this.g.headerSize, SEGMENT_ALIGNMENT);
    // The segment being filled: the blocks put since it was submitted are not on the device.
    const filling = this.current !== null && this.current.segment === seg ? this.putSlots : null;
    const seq = ++this.sequence;
    sealHeader(h, this.g, seg, this.map.bda, seq, this.synced, this.uuid, filling, this.supersededAt);
    const covered = this.dropped.seal(seg);
    this.inFlight.add(seq);
    try {
      await this.engine.writev(this.fd, [h], segmentOffset(this.g, seg));
    } catch (err) {
      if (covered !== null) this.dropped.uncover(seg, covered);
      this.fail(`cache segment ${seg} header write failed: ${(err as Error).message}`);
      return;
    } finally {
      this.inFlight.delete(seq);
    }
    // Reused only after a write that completed (sealHeader overwrites every byte).
    if (this.headerPool.length < Math.max(1, Math.floor(HEADER_POOL_BYTES / this.g.headerSize))) this.headerPool.push(h);
    this.headerRewrites++;
    this.unsynced++;
    this.deviceWriteBytes += this.g.headerSize;
    this.written(seg, seq, covered);
  }

  /** Starts the write-out of [offset, offset + length) of the device, not waited for (see the file comment). */
  private startWriteout(offset: number, length: number): void {
    this.engine.startWriteout(this.fd, offset, length).catch((err: Error) => {
      if (this.writeoutFailed) return;
      this.writeoutFailed = true;
      this.logger.warn({ err: err.message }, 'cache device write-out start failed (ignored: fdatasync still makes the log durable; not logged again)');
    });
  }

  /**
   * A header of seg sealed with `seq` was written, covering `covered`: those are forgotten at the
   * next fdatasync (started when many), which makes the header durable (durableSeq).
   */
  private written(seg: number, seq: number, covered: Dropped[] | null): void {
    this.headersAwaitingSync.set(seg, Math.max(seq, this.headersAwaitingSync.get(seg) ?? 0));
    if (covered === null) return;
    this.dropped.markWritten(covered);
    for (const d of covered) this.awaitingSync.push(d);
    if (this.awaitingSync.length >= MAX_UNSYNCED_SEGMENTS * this.g.blocksPerSegment) void this.rewrite([]);
  }

  /** Hand moved into segment `seg`: write out the current one, make `seg` the current one. */
  private async rotate(seg: number): Promise<void> {
    const prev = this.current;
    if (prev) {
      this.current = null;
      if (prev.dirty) this.submit(prev, true);
      else prev.state = BufferState.Clean;
    }
    const b = await this.acquire(seg, this.map.refillingHoles);
    b.state = BufferState.Filling;
    b.dirty = false;
    this.putSlots.fill(0);
    this.putOverUnrecorded = false;
    this.current = b;
    if (this.pool.length > 2) {
      const next = this.map.upcomingSegment();
      if (!this.map.upcomingHolesOnlyRefill) this.prefetch(next);
    }
  }

  /** A buffer holding segment seg, loaded (holesOnly: without a device read) if none does. */
  private async acquire(seg: number, holesOnly: boolean): Promise<SegmentBuffer> {
    for (;;) {
      const held = this.pool.find((x) => x.segment === seg && x.state !== BufferState.Free);
      if (held) {
        if (held.state === BufferState.Clean) return held;
        await held.pending;
        continue;
      }
      const b = this.recyclable();
      if (b) {
        this.load(b, seg, holesOnly);
        continue;
      }
      // Every buffer is Reading or Writing (the current one was released by the caller).
      await Promise.race(this.pool.map((x) => x.pending));
    }
  }

  /** A Free buffer, else the least recently used Clean one, else null. */
  private recyclable(): SegmentBuffer | null {
    let best: SegmentBuffer | null = null;
    for (const b of this.pool) {
      if (b.state === BufferState.Free) return b;
      if (b.state === BufferState.Clean && (best === null || b.lastUse < best.lastUse)) best = b;
    }
    return best;
  }

  private prefetch(seg: number): void {
    if (this.pool.some((x) => x.segment === seg && x.state !== BufferState.Free)) return;
    const first = seg * this.g.blocksPerSegment;
    if (this.map.bda.countValid(first, first + this.g.blocksPerSegment) === 0) return;
    const b = this.recyclable();
    if (b) this.load(b, seg);
  }

  /**
   * Makes b hold segment seg as on the device: Clean at once if no slot is valid (or, with
   * `unread`, holding none of the valid slots' data: see `present`), else read.
   */
  private load(b: SegmentBuffer, seg: number, unread = false): void {
    const bps = this.g.blocksPerSegment;
    const first = seg * bps;
    const bda = this.map.bda;
    b.segment = seg;
    b.dirty = false;
    b.lastUse = ++this.useClock;
    this.present.delete(b);
    if (unread && bda.countValid(first, first + bps) > 0) {
      this.present.set(b, new Uint8Array(bps));
      b.state = BufferState.Clean;
      b.pending = Promise.resolve();
      return;
    }
    if (bda.countValid(first, first + bps) === 0) {
      b.clearEntries();
      b.state = BufferState.Clean;
      b.pending = Promise.resolve();
      return;
    }
    b.state = BufferState.Reading;
    const t = LatencyMeter.now();
    b.pending = this.engine.readv(this.fd, [b.buf], segmentOffset(this.g, seg), true, true).then(
      () => {
        this.segmentReadLatency.record(t);
        this.segmentReads++;
        checkHeaderSectors(b.buf, this.g, seg, this.uuid, this.sectorSeqs, this.sectorCrcs);
        const view = new DataView(b.buf.buffer, b.buf.byteOffset, this.g.headerSize);
        const bad = this.checkBlocks(first, b.data, bps);
        let dropped = 0;
        for (let k = 0; k < bps; k++) {
          const i = first + k;
          if (!bda.isValid(i)) continue;
          const e = entryOffset(k);
          const intact = this.sectorSeqs[entrySector(k)] >= 0;
          if (bad !== null && bad[k] !== 0 && bda.isDirty(i)) {
            // Kept (the only copy); its reads go to the device and fail their check.
            this.checksumMismatch(i, bda.volumeOf(i), bda.blockOf(i));
            this.notPresent(b, k);
            continue;
          }
          if (intact && bad !== null && bad[k] !== 0) this.checksumMismatch(i, bda.volumeOf(i), bda.blockOf(i));
          else if (
            intact &&
            (view.getUint32(e + 12, true) & 1) !== 0 &&
            view.getUint32(e, true) === bda.keyLo[i] &&
            view.getUint32(e + 4, true) === entryKeyHi(bda.keyHi[i]) &&
            view.getUint32(e + 8, true) === bda.crc[i]
          ) {
            continue;
          }
          this.map.drop(i);
          dropped++;
        }
        if (dropped > 0) this.logger.warn({ segment: seg, dropped }, 'cache segment read-ahead: blocks failed their checks');
        b.state = BufferState.Clean;
      },
      (err: Error) => {
        this.readErrors++;
        const dropped = this.map.dropSlots(first, first + bps);
        this.logger.warn({ segment: seg, dropped, err: err.message }, 'cache segment read-ahead failed; its blocks are dropped');
        b.clearEntries();
        // Dirty blocks stay (dropSlots): their reads go to the device.
        for (let k = 0; k < bps; k++) if (bda.isValid(first + k)) this.notPresent(b, k);
        b.state = BufferState.Clean;
      },
    );
  }

  /** Block k of b's segment is not held by b: its reads go to the device. */
  private notPresent(b: SegmentBuffer, k: number): void {
    let present = this.present.get(b);
    if (present === undefined) this.present.set(b, (present = new Uint8Array(this.g.blocksPerSegment).fill(1)));
    present[k] = 0;
  }

  /** Seals and writes b's segment; `writeout`: start its write-out once written (see the file comment). */
  private submit(b: SegmentBuffer, writeout: boolean): void {
    const seg = b.segment;
    const bps = this.g.blocksPerSegment;
    if (this.disabled) {
      // Nothing is sealed after a write error (see the file comment): the new blocks are lost.
      this.map.dropSlots(seg * bps, (seg + 1) * bps);
      b.state = BufferState.Free;
      b.segment = -1;
      return;
    }
    const seq = ++this.sequence;
    this.segGen[seg]++;
    this.checksumLogged[seg] = 0;
    b.seal(this.map.bda, seq, this.synced, this.uuid, this.supersededAt);
    this.inFlight.add(seq);
    const covered = this.dropped.seal(seg);
    b.state = BufferState.Writing;
    b.lastUse = ++this.useClock;
    const runs = this.changedRanges();
    const headerFirst = this.putOverUnrecorded;
    this.putOverUnrecorded = false;
    // The buffer serves reads of seg from now on; direct reads already in flight finish first.
    b.pending = this.onSegment(seg, () =>
      this.directReaders[seg] === 0
        ? this.write(b, seg, seq, runs, covered, writeout, headerFirst)
        : new Promise<void>((wake) => this.drainWaiters.set(seg, wake)).then(() => this.write(b, seg, seq, runs, covered, writeout, headerFirst)),
    ).finally(() => this.inFlight.delete(seq));
  }

  /**
   * Byte ranges [from, to) of the current buffer to write: the header, and each run of slots
   * put since it started filling (the header merged with a run starting at slot 0).
   */
  private changedRanges(): number[] {
    const { headerSize, blockSize } = this.g;
    const put = this.putSlots;
    const ranges = [0, headerSize];
    for (let k = 0; k < put.length; k++) {
      if (put[k] === 0) continue;
      let end = k + 1;
      while (end < put.length && put[end] !== 0) end++;
      const from = headerSize + k * blockSize;
      if (k === 0) ranges[1] = headerSize + end * blockSize;
      else ranges.push(from, headerSize + end * blockSize);
      k = end;
    }
    return ranges;
  }

  /**
   * The device writes of a sealed buffer (byte ranges of it, see changedRanges), issued together
   * (one submission: the header may land before the data, see the file comment), then with
   * `writeout` the early write-out of their span; never rejects. `headerFirst` (a put slot was
   * marked clean and no durable header records that: a durable header may still name its old
   * block dirty, and a crash that keeps the new data but neither newer header would bring
   * that entry back over other data, unreadable, recovery.ts 10. reading only the entries above
   * the durable mark): the header is written and made durable (an fdatasync of its own) before
   * the data runs are issued. Entries it names whose data then does not land are sealed above
   * every durable mark until this write is done, so recovery checks the dirty ones.
   */
  private write(b: SegmentBuffer, seg: number, seq: number, ranges: number[], covered: Dropped[] | null, writeout: boolean, headerFirst: boolean): Promise<void> {
    const t = LatencyMeter.now();
    const at = segmentOffset(this.g, seg);
    const headerSize = this.g.headerSize;
    let bytes = 0;
    const issue = (from: number, to: number): Promise<void> => {
      bytes += to - from;
      return this.engine.writev(this.fd, [b.buf.subarray(from, to)], at + from, true);
    };
    const issueRuns = (from: number): Promise<PromiseSettledResult<void>[]> => {
      const writes: Promise<void>[] = [];
      for (let r = 0; r < ranges.length; r += 2) {
        const start = Math.max(ranges[r], from);
        if (start < ranges[r + 1]) writes.push(issue(start, ranges[r + 1]));
      }
      // Settled, not raced: the buffer must not be recycled while one of its writes still reads it.
      return Promise.allSettled(writes);
    };
    const settled = headerFirst
      ? issue(0, headerSize)
          .then(() => {
            this.fdatasyncs++;
            return this.engine.fdatasync(this.fd);
          })
          .then(
            () => issueRuns(headerSize),
            (err: unknown): PromiseSettledResult<void>[] => [{ status: 'rejected', reason: err }],
          )
      : issueRuns(0);
    return settled.then((results) => {
      const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
      if (failed === undefined) {
        this.unsynced++;
        this.segmentWriteLatency.record(t);
        this.segmentWrites++;
        this.deviceWriteBytes += bytes;
        b.dirty = false;
        b.state = BufferState.Clean;
        this.written(seg, seq, covered);
        if (writeout && this.alignment === 1) this.startWriteout(at, ranges[ranges.length - 1]);
        return;
      }
      if (covered !== null) this.dropped.uncover(seg, covered);
      const bps = this.g.blocksPerSegment;
      this.map.dropSlots(seg * bps, (seg + 1) * bps);
      b.state = BufferState.Free;
      b.segment = -1;
      this.fail(`cache segment ${seg} write failed: ${(failed.reason as Error).message}`);
    });
  }
}
