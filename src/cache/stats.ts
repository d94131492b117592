/**
 * Cache statistics, named after pblio's counters in camelCase. Counts are in cache blocks.
 *
 *   reads           blocks looked up for a read
 *   readHits        of those, found in the cache (RAM segment buffer or cache device)
 *   readHitRate     readHits / reads (0 when no reads)
 *   insertions      blocks written into the log
 *   evictions       valid blocks replaced by the CLOCK hand
 *   invalidations   blocks a write/discard/write-zeroes asked to invalidate
 *   invalidateHits  of those, actually cached (and now dropped)
 *   ramHits         read hits served from a RAM segment buffer
 *   storageHits     read hits served from the cache device
 *   ghostHits       blocks inserted while their key was in the ghost history (recently
 *                   evicted or overwritten): they start with the full reuse counter
 *   prefetched      blocks inserted by read-ahead
 *   prefetchHits    of those, read at least once while cached (accuracy = prefetchHits / prefetched)
 *   sharedReads     blocks of a clone looked up under its parent's key (shared-keys.ts); they are
 *                   counted in the parent's entry (named after the parent) as reads too, and not
 *                   in this volume's reads
 *   sharedHits      of those, found in the cache
 *   readsJoined     blocks of read misses taken from a backing read of them already in flight
 *                   (a read-ahead or another miss: pending-reads.ts) instead of read again
 *   admissionsRefused blocks not inserted by the sequential cut-off (read misses and writes of
 *                   a stream longer than the volume's sequentialCutoff, cached-store.ts)
 *   firstTouchesRefused read-miss blocks not in the ghost history (first touches) that adaptive
 *                   admission did not insert (cache-map.ts admit(); writes and read-ahead are
 *                   always inserted): remembered in the ghost history as refused
 *   refusedGhostHits blocks inserted while remembered as refused (read again, or written):
 *                   each raises the admission share and scores its region (cache-map.ts)
 *   destaged        write-back blocks written to the backing store and marked clean
 *   destageRounds   destage rounds done (destaged / destageRounds: blocks per round; a high
 *                   round rate at a few blocks each means destaging starts at every lull)
 *   destageErrors   destage rounds that failed (retried)
 *   flushes, flushUs guest flushes of a write-back volume and their total latency (µs)
 *   dirtyBlocks     write-back blocks not destaged yet; oldestDirtyMs: age of the oldest
 *   checksumErrors  blocks read from the cache device (hits, read-ahead) whose data did not
 *                   match their CRC-32C: dropped, served from the backing store
 *   wraps           rounds of the log (segments entered / segments)
 *   segmentsSkipped segments the hand passed without writing them (every block carried forward)
 *   segmentsCleaned segments the hand entered to refill (chosen by cleaning, cache-map.ts)
 *   blocksCarried   valid blocks kept in place by the hand (not rewritten: a segment write
 *                   writes its header and the runs of slots refilled, log.ts)
 *   decayPeriod     carries per reuse-counter decrement (1..DECAY_MAX), the policy's adaptation
 *                   (ARC's p, cache-map.ts): high = frequency kept long, 1 = recency
 *   admitShare      share of first touches admitted where no region admits them (ADMIT_MIN..1),
 *                   adapted by refused and reused ghost hits (cache-map.ts)
 *   deviceWriteBytes bytes written to the cache device by segment writes (headers + refilled
 *                   runs) and header rewrites; per block inserted it is the log's write amplification
 *   headerRewrites  segment headers rewritten to make invalidations durable (log.ts), in
 *   rewriteBatches  batches (one fdatasync each, except the background ones: log.ts rewrite)
 *   killsMarked     kills of clean entries that marked their segments instead of waiting for
 *                   the header rewrite (kill-marks.ts); markedSegments: segments marked now
 *   fdatasyncs      fdatasyncs of the cache device (commits, rewrite batches, flushes, ...)
 *   emptySlots      slots holding no block right now
 *   readLatencyUs, segmentReadLatencyUs, segmentWriteLatencyUs: mean cache-device latencies
 *                   (readLatencyUs from one read of cached blocks in READ_LATENCY_SAMPLE, log.ts)
 */
import { performance } from 'node:perf_hooks';

export interface VolumeCounters {
  reads: number;
  readHits: number;
  insertions: number;
  evictions: number;
  invalidations: number;
  invalidateHits: number;
  ramHits: number;
  storageHits: number;
  checksumErrors: number;
  ghostHits: number;
  prefetched: number;
  prefetchHits: number;
  sharedReads: number;
  sharedHits: number;
  admissionsRefused: number;
  firstTouchesRefused: number;
  refusedGhostHits: number;
  readsJoined: number;
  destaged: number;
  destageRounds: number;
  destageErrors: number;
  flushes: number;
  flushUs: number;
}

export interface VolumeStats extends VolumeCounters {
  readHitRate: number;
  /** Blocks of this volume currently in the cache. */
  blocks: number;
  /** Write-back blocks not destaged yet, and the age of the oldest (ms; 0: none). */
  dirtyBlocks: number;
  oldestDirtyMs: number;
  /** Mean latency of the guest flushes counted in `flushes` (µs). */
  flushLatencyUs: number;
}

export interface CacheStats extends VolumeStats {
  wraps: number;
  segmentsSkipped: number;
  segmentsCleaned: number;
  blocksCarried: number;
  decayPeriod: number;
  admitShare: number;
  emptySlots: number;
  segmentReads: number;
  segmentWrites: number;
  deviceWriteBytes: number;
  headerRewrites: number;
  rewriteBatches: number;
  killsMarked: number;
  markedSegments: number;
  fdatasyncs: number;
  readLatencyUs: number;
  segmentReadLatencyUs: number;
  segmentWriteLatencyUs: number;
  /** Write-back group commits (one device write set + fdatasyncs each) and their mean latency. */
  commits: number;
  commitLatencyUs: number;
  /** Cache-device read failures (served from the backing store instead). */
  readErrors: number;
  /** Cache-device write failures (the first one disables caching). */
  writeErrors: number;
  /** True once a write error disabled caching of new data. */
  disabled: boolean;
  /** Blocks not inserted because the insertion backlog was full (the backing store served them). */
  insertsDropped: number;
  volumes: Record<string, VolumeStats>;
}

export function newCounters(): VolumeCounters {
  return {
    reads: 0,
    readHits: 0,
    insertions: 0,
    evictions: 0,
    invalidations: 0,
    invalidateHits: 0,
    ramHits: 0,
    storageHits: 0,
    checksumErrors: 0,
    ghostHits: 0,
    prefetched: 0,
    prefetchHits: 0,
    sharedReads: 0,
    sharedHits: 0,
    admissionsRefused: 0,
    firstTouchesRefused: 0,
    refusedGhostHits: 0,
    readsJoined: 0,
    destaged: 0,
    destageRounds: 0,
    destageErrors: 0,
    flushes: 0,
    flushUs: 0,
  };
}

export function addCounters(into: VolumeCounters, from: VolumeCounters): void {
  into.reads += from.reads;
  into.readHits += from.readHits;
  into.insertions += from.insertions;
  into.evictions += from.evictions;
  into.invalidations += from.invalidations;
  into.invalidateHits += from.invalidateHits;
  into.ramHits += from.ramHits;
  into.storageHits += from.storageHits;
  into.checksumErrors += from.checksumErrors;
  into.ghostHits += from.ghostHits;
  into.prefetched += from.prefetched;
  into.prefetchHits += from.prefetchHits;
  into.sharedReads += from.sharedReads;
  into.sharedHits += from.sharedHits;
  into.admissionsRefused += from.admissionsRefused;
  into.firstTouchesRefused += from.firstTouchesRefused;
  into.refusedGhostHits += from.refusedGhostHits;
  into.readsJoined += from.readsJoined;
  into.destaged += from.destaged;
  into.destageRounds += from.destageRounds;
  into.destageErrors += from.destageErrors;
  into.flushes += from.flushes;
  into.flushUs += from.flushUs;
}

export function withRate(c: VolumeCounters, blocks: number, dirty: { blocks: number; oldestMs: number } = { blocks: 0, oldestMs: 0 }): VolumeStats {
  return {
    ...c,
    readHitRate: c.reads === 0 ? 0 : c.readHits / c.reads,
    blocks,
    dirtyBlocks: dirty.blocks,
    oldestDirtyMs: dirty.oldestMs,
    flushLatencyUs: c.flushes === 0 ? 0 : c.flushUs / c.flushes,
  };
}

/** Returned by LatencyMeter.start() for an operation that is not timed (see `every`). */
export const NOT_TIMED = -1;

/**
 * Mean latency of timed operations. With `every` > 1 only one operation in `every` is timed
 * (start() reads the clock for it and returns NOT_TIMED for the others, whose record() does
 * nothing): the same mean, estimated from a sample, at a fraction of the clock reads.
 */
export class LatencyMeter {
  private count = 0;
  private totalMs = 0;
  private calls = 0;

  constructor(private readonly every = 1) {}

  static now(): number {
    return performance.now();
  }

  /** The start time of an operation to record(), or NOT_TIMED. */
  start(): number {
    if (this.every > 1 && ++this.calls % this.every !== 0) return NOT_TIMED;
    return performance.now();
  }

  record(startMs: number): void {
    if (startMs === NOT_TIMED) return;
    this.count++;
    this.totalMs += performance.now() - startMs;
  }

  get samples(): number {
    return this.count;
  }

  get meanUs(): number {
    return this.count === 0 ? 0 : (this.totalMs * 1000) / this.count;
  }
}
