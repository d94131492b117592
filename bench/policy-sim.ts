/**
 * Trace-driven policy simulator (no I/O): the cache map (address map, BDA, reuse counters,
 * ghost history) and its slot choices exactly as the log uses them (findVictim + assign), or
 * the exact LRU / ARC references, driven by a workload generator. Reports per 4 KiB block:
 * read hit rate, invalidate hit rate, empty slots at the end (SPC-1: also per stream kind), and
 * for the log policies the blocks placed per segment filled (device write efficiency), the
 * valid blocks by reuse counter, and adaptive admission's figures (first touches refused,
 * refused-ghost hits, the admission share at the end, ghost entries by kind: once-seen, reused,
 * invalidated, refused).
 *
 * Rules (pblio's): ASU3 writes bypass the cache; a read looks up every block then inserts its
 * misses (the log policies: those CacheMap.admit takes, as Log.place does); a write invalidates
 * every block then inserts it.
 *
 * Run: node dist/bench/policy-sim.js --workload spc1|zipf|shift|scan|targets|ram [--ios N] [--seed S]
 *        [--policy log|clock|lru|arc ...] [--slots N] [--cutoff BLOCKS]
 *        [--read-ahead BLOCKS] [--empty-target FRACTION]
 *   --cutoff: sequential cut-off; blocks of a read or write stream longer than BLOCKS are not
 *   inserted (nor read ahead), as CachedStore's sequentialCutoff.
 *   --empty-target: fraction of empty slots above which cleaning refills holes first.
 *   --read-ahead: a read continuing a sequential stream makes the next BLOCKS blocks cached
 *   (inserted as prefetched; accuracy = prefetched blocks read later / prefetched blocks).
 *   spc1: medium configuration (ASU1 = ASU2 = 4 GiB), cache 10 % of ASU1+ASU2, BSU 32.
 *   zipf: zipf(0.9) reads over 10x the cache. shift: the same, its hot set moved to other blocks
 *   every 2x the cache reads (recency). scan: zipf(0.9) warmed, one sequential pass over
 *   2x the cache, zipf again; reports the hit rate in a window before and after the pass.
 *   boot: the recorded boot trace (bench/traces/boot-read.trace) replayed --boots N times
 *   (default 2) on one volume, cache --slots (default 131072 = 512 MiB), [--cold-between] empty
 *   cache between boots, [--history DEPTH] history prefetch (HistoryPrefetch, evaluation only).
 *   targets: every issue-12 target in one run (SPC-1 seeds 1-3 for clock, lru, arc, log and log
 *   with read-ahead, default 32 blocks; scan for the four; RAM per block of the index at 16 M
 *   blocks, by part), then a table of targets met or not. --workload ram: the RAM figure alone.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';
import { CacheMap, EMPTY_TARGET, MAX_COUNT, SegmentChoice } from '../src/cache/cache-map';
import { Rng } from '../src/bench/rng';
import { Spc1Workload } from '../src/bench/spc1';
import { StreamDetector } from '../src/cache/streams';

interface Policy {
  readonly name: string;
  /** True on a hit (and records the use). */
  lookup(vol: number, block: number): boolean;
  insert(vol: number, block: number): void;
  /** Admission of a read miss (log policy only; the others admit every miss). */
  admit?(vol: number, block: number): boolean;
  /** Read-ahead insertion of an uncached block (log policy only). */
  prefetch?(vol: number, block: number): void;
  /** True when cached, without counting a use. */
  has?(vol: number, block: number): boolean;
  /** True when the block was cached (it no longer is). */
  invalidate(vol: number, block: number): boolean;
  emptySlots(): number;
  extra(): Record<string, unknown>;
}

const SEGMENT_BLOCKS = 128;

/** Segment header bytes of 128-block segments (segment.ts: 64 + 16 per block, in 4 KiB units). */
const HEADER_BYTES = 4096;

/**
 * Device I/O of the log (log.ts): a segment write is its header plus one write per run of
 * slots that received a block while the hand was in it (the header merged with a run at slot 0);
 * a segment the hand enters while it holds valid blocks is read whole first, unless it is
 * refilled holes only (an upper bound: the log also skips the read when the segment is still
 * in a RAM buffer).
 */
class WriteModel {
  bytes = 0;
  ios = 0;
  /** Bytes the log would write if it wrote whole segments (header + every block). */
  wholeBytes = 0;
  readBytes = 0;
  private seg = -1;
  private readonly put = new Uint8Array(SEGMENT_BLOCKS);

  /** The hand places a block in `slot` of map `m` (before assign()). */
  place(m: CacheMap, slot: number): void {
    const seg = Math.floor(slot / SEGMENT_BLOCKS);
    if (seg !== this.seg) {
      this.flush(seg);
      const first = seg * SEGMENT_BLOCKS;
      if (!m.refillingHoles && m.bda.countValid(first, first + SEGMENT_BLOCKS) > 0) this.readBytes += HEADER_BYTES + SEGMENT_BLOCKS * 4096;
    }
    this.put[slot - seg * SEGMENT_BLOCKS] = 1;
  }

  /** Writes the current segment (if anything was put) and makes `next` the current one. */
  flush(next = -1): void {
    const put = this.put;
    let blocks = 0;
    let runs = 0;
    for (let k = 0; k < put.length; k++) {
      if (put[k] === 0) continue;
      blocks++;
      if (k !== 0 && put[k - 1] === 0) runs++;
    }
    if (blocks > 0) {
      this.bytes += HEADER_BYTES + blocks * 4096;
      this.ios += 1 + runs;
      this.wholeBytes += HEADER_BYTES + SEGMENT_BLOCKS * 4096;
    }
    put.fill(0);
    this.seg = next;
  }
}

class LogPolicy implements Policy {
  readonly m: CacheMap;
  readonly writes = new WriteModel();
  constructor(readonly name: string, slots: number, choice: SegmentChoice, ghost: boolean) {
    this.m = new CacheMap(slots, { segmentBlocks: SEGMENT_BLOCKS, segmentChoice: choice, ghostEntries: ghost ? slots : 0, emptyTarget: admission.emptyTarget });
  }
  lookup(vol: number, block: number): boolean {
    return this.m.lookup(vol, block) >= 0;
  }
  private place(vol: number, block: number, prefetched: boolean): void {
    const slot = this.m.findVictim(vol);
    this.writes.place(this.m, slot);
    this.m.assign(slot, vol, block, prefetched);
  }
  insert(vol: number, block: number): void {
    this.place(vol, block, false);
  }
  admit(vol: number, block: number): boolean {
    return this.m.admit(vol, block);
  }
  invalidate(vol: number, block: number): boolean {
    return this.m.invalidate(vol, block);
  }
  prefetch(vol: number, block: number): void {
    this.place(vol, block, true);
  }
  has(vol: number, block: number): boolean {
    return this.m.peek(vol, block) >= 0;
  }
  emptySlots(): number {
    return (this.m.slots - this.m.map.size) / this.m.slots;
  }
  /** Valid blocks at the end by reuse counter (0..MAX_COUNT): counter 0 is the once-seen side. */
  private validByCount(): number[] {
    const n = new Array<number>(MAX_COUNT + 1).fill(0);
    for (let i = 0; i < this.m.slots; i++) if (this.m.bda.isValid(i)) n[this.m.count(i)]++;
    return n;
  }
  extra(): Record<string, unknown> {
    let ins = 0;
    let ghost = 0;
    let prefetched = 0;
    let used = 0;
    let refused = 0;
    let refusedGhost = 0;
    for (const v of [1, 2, 3]) {
      const c = this.m.stats(v);
      refused += c.firstTouchesRefused;
      refusedGhost += c.refusedGhostHits;
      ins += c.insertions;
      ghost += c.ghostHits;
      prefetched += c.prefetched;
      used += c.prefetchHits;
    }
    const w = this.writes;
    w.flush();
    const perInsert = (x: number): number => +(x / Math.max(1, ins)).toFixed(3);
    return {
      blocksPerSegmentFilled: +(ins / Math.max(1, this.m.segmentsCleaned - this.m.segmentsSkipped)).toFixed(1),
      deviceBytesPerInsert: Math.round(perInsert(w.bytes)),
      writeIosPerInsert: perInsert(w.ios),
      wholeSegmentBytesPerInsert: Math.round(perInsert(w.wholeBytes)),
      deviceReadBytesPerInsert: Math.round(perInsert(w.readBytes)),
      carried: this.m.blocksCarried,
      ghostHits: ghost,
      prefetched,
      prefetchAccuracy: rate(used, prefetched),
      segmentsSkipped: this.m.segmentsSkipped,
      decayPeriod: +this.m.decayPeriod.toFixed(2),
      firstTouchesRefused: refused,
      refusedGhostHits: refusedGhost,
      admitShare: +this.m.admitShare.toFixed(3),
      ghostCounts: Array.from(this.m.ghost?.count ?? []),
      validByCount: this.validByCount(),
      ramBytesPerBlock: +(this.m.byteLength / this.m.slots).toFixed(2),
    };
  }
}

const key = (vol: number, block: number): number => vol * 2 ** 40 + block;

/**
 * Keys in recency order (least recent first) with O(1) has / delete / push / shift: a Map from
 * key to node and a doubly linked list over typed arrays (a Map alone would evict with
 * keys().next(), which skips every deleted entry at the front of V8's ordered table: quadratic).
 */
class RecencyList {
  private readonly index = new Map<number, number>();
  private readonly keys: Float64Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private head = -1;
  private tail = -1;
  private free: number[] = [];

  constructor(capacity: number) {
    this.keys = new Float64Array(capacity);
    this.prev = new Int32Array(capacity);
    this.next = new Int32Array(capacity);
    for (let i = capacity - 1; i >= 0; i--) this.free.push(i);
  }

  get size(): number {
    return this.index.size;
  }

  has(k: number): boolean {
    return this.index.has(k);
  }

  /** Appends k as the most recent (it must not be present). */
  push(k: number): void {
    const n = this.free.pop();
    if (n === undefined) throw new Error('RecencyList over capacity');
    this.keys[n] = k;
    this.prev[n] = this.tail;
    this.next[n] = -1;
    if (this.tail >= 0) this.next[this.tail] = n;
    else this.head = n;
    this.tail = n;
    this.index.set(k, n);
  }

  delete(k: number): boolean {
    const n = this.index.get(k);
    if (n === undefined) return false;
    this.index.delete(k);
    const p = this.prev[n];
    const x = this.next[n];
    if (p >= 0) this.next[p] = x;
    else this.head = x;
    if (x >= 0) this.prev[x] = p;
    else this.tail = p;
    this.free.push(n);
    return true;
  }

  /** Removes and returns the least recent key. */
  shift(): number {
    const k = this.keys[this.head];
    this.delete(k);
    return k;
  }
}

/** Exact LRU. A write is an access. */
class LruPolicy implements Policy {
  readonly name = 'lru';
  private readonly q: RecencyList;
  constructor(private readonly slots: number) {
    this.q = new RecencyList(slots);
  }
  lookup(vol: number, block: number): boolean {
    const k = key(vol, block);
    if (!this.q.delete(k)) return false;
    this.q.push(k);
    return true;
  }
  insert(vol: number, block: number): void {
    const k = key(vol, block);
    this.q.delete(k);
    if (this.q.size >= this.slots) this.q.shift();
    this.q.push(k);
  }
  invalidate(vol: number, block: number): boolean {
    return this.q.delete(key(vol, block));
  }
  emptySlots(): number {
    return (this.slots - this.q.size) / this.slots;
  }
  extra(): Record<string, unknown> {
    return {};
  }
}

/**
 * ARC (Megiddo & Modha 2003). A write to a cached block is an ARC hit (invalidate then insert
 * of the same key moves it to T2's MRU end); a write of an uncached block is an ARC miss.
 */
class ArcPolicy implements Policy {
  readonly name = 'arc';
  private readonly t1: RecencyList;
  private readonly t2: RecencyList;
  private readonly b1: RecencyList;
  private readonly b2: RecencyList;
  private p = 0;
  /** Key invalidated by the write in progress (its insert is a hit). */
  private rewritten = -1;
  constructor(private readonly c: number) {
    this.t1 = new RecencyList(c + 1);
    this.t2 = new RecencyList(c + 1);
    this.b1 = new RecencyList(c + 1);
    this.b2 = new RecencyList(2 * c + 1);
  }

  lookup(vol: number, block: number): boolean {
    const k = key(vol, block);
    if (this.t1.delete(k) || this.t2.delete(k)) {
      this.t2.push(k);
      return true;
    }
    return false;
  }

  invalidate(vol: number, block: number): boolean {
    const k = key(vol, block);
    if (this.t1.has(k) || this.t2.has(k)) {
      this.rewritten = k;
      return true;
    }
    return false;
  }

  private replace(inB2: boolean): void {
    const { t1, t2 } = this;
    if (t1.size > 0 && (t1.size > this.p || (inB2 && t1.size === this.p))) this.b1.push(t1.shift());
    else if (t2.size > 0) this.b2.push(t2.shift());
    else this.b1.push(t1.shift());
  }

  insert(vol: number, block: number): void {
    const k = key(vol, block);
    const { t1, t2, b1, b2, c } = this;
    if (this.rewritten === k) {
      this.rewritten = -1;
      this.lookup(vol, block);
      return;
    }
    if (b1.has(k)) {
      this.p = Math.min(c, this.p + Math.max(b2.size / b1.size, 1));
      this.replace(false);
      b1.delete(k);
      t2.push(k);
      return;
    }
    if (b2.has(k)) {
      this.p = Math.max(0, this.p - Math.max(b1.size / b2.size, 1));
      this.replace(true);
      b2.delete(k);
      t2.push(k);
      return;
    }
    const l1 = t1.size + b1.size;
    if (l1 === c) {
      if (t1.size < c) {
        b1.shift();
        this.replace(false);
      } else {
        t1.shift();
      }
    } else {
      const total = l1 + t2.size + b2.size;
      if (total >= c) {
        if (total === 2 * c) b2.shift();
        if (t1.size + t2.size >= c) this.replace(false);
      }
    }
    t1.push(k);
  }

  emptySlots(): number {
    return (this.c - this.t1.size - this.t2.size) / this.c;
  }
  extra(): Record<string, unknown> {
    return { p: Math.round(this.p), t1: this.t1.size, t2: this.t2.size, b1: this.b1.size, b2: this.b2.size };
  }
}

function makePolicy(name: string, slots: number): Policy {
  switch (name) {
    case 'log':
      return new LogPolicy('log', slots, SegmentChoice.Clean, true);
    case 'clock':
      // pblcache's CLOCK: segments in log order, no ghost history.
      return new LogPolicy('clock', slots, SegmentChoice.Order, false);
    case 'lru':
      return new LruPolicy(slots);
    case 'arc':
      return new ArcPolicy(slots);
    default:
      throw new Error(`unknown policy ${name}`);
  }
}

interface Req {
  read: boolean;
  vol: number;
  block: number;
  blocks: number;
  bypass: boolean;
  /** SPC-1 stream kind (1..8), 0 for the other workloads. */
  stream: number;
}

/** SPC-1 stream kinds (spc1.ts SPC1_STREAMS: 1..8). */
const STREAMS = 9;

class Counters {
  reads = 0;
  readHits = 0;
  writes = 0;
  invalidateHits = 0;
  refused = 0;
  /** Per stream kind: read blocks, read hits, written blocks, invalidate hits. */
  readonly streamReads = new Float64Array(STREAMS);
  readonly streamReadHits = new Float64Array(STREAMS);
  readonly streamWrites = new Float64Array(STREAMS);
  readonly streamInvalidateHits = new Float64Array(STREAMS);
}

/**
 * Admission and read-ahead, as CachedStore does them: a read or write stream longer than
 * `cutoff` blocks inserts nothing and gets no read-ahead (0 = off); a read continuing a stream
 * makes the next `readAhead` blocks cached (0 = off).
 */
const admission = { cutoff: 0, readAhead: 0, emptyTarget: EMPTY_TARGET, reads: new Map<number, StreamDetector>(), writes: new Map<number, StreamDetector>() };

function detector(streams: Map<number, StreamDetector>, vol: number): StreamDetector {
  let d = streams.get(vol);
  if (!d) {
    d = new StreamDetector();
    streams.set(vol, d);
  }
  return d;
}

function apply(p: Policy, r: Req, c: Counters): void {
  if (r.bypass) return;
  const { cutoff, readAhead } = admission;
  if (r.read) {
    const d = detector(admission.reads, r.vol);
    let from = -1;
    if (readAhead > 0) from = d.readAhead(r.block, r.blocks, readAhead, Number.MAX_SAFE_INTEGER);
    else d.observe(r.block, r.blocks);
    const refuse = cutoff > 0 && d.lastRun > cutoff;
    const miss: number[] = [];
    for (let b = r.block; b < r.block + r.blocks; b++) {
      c.reads++;
      c.streamReads[r.stream]++;
      if (p.lookup(r.vol, b)) {
        c.readHits++;
        c.streamReadHits[r.stream]++;
      } else miss.push(b);
    }
    if (refuse) c.refused += miss.length;
    else for (const b of miss) if (p.admit?.(r.vol, b) !== false) p.insert(r.vol, b);
    if (!refuse && from >= 0 && p.prefetch && p.has) {
      while (from < d.lastEnd && p.has(r.vol, from)) from++;
      for (let b = from; b < d.lastEnd; b++) p.prefetch(r.vol, b);
    }
  } else {
    const refuse = cutoff > 0 && detector(admission.writes, r.vol).observe(r.block, r.blocks) > cutoff;
    for (let b = r.block; b < r.block + r.blocks; b++) {
      c.writes++;
      c.streamWrites[r.stream]++;
      if (p.invalidate(r.vol, b)) {
        c.invalidateHits++;
        c.streamInvalidateHits[r.stream]++;
      }
      if (refuse) c.refused++;
      else p.insert(r.vol, b);
    }
  }
}

function spc1Source(seed: number): () => Req {
  const asu = (4 * 2 ** 30) / 4096;
  const w = new Spc1Workload({ asu1Blocks: asu, asu2Blocks: asu, asu3Blocks: Math.ceil(asu / 4.5), bsu: 32, seed, paced: false });
  return () => {
    const r = w.next();
    return { read: r.read, vol: r.asu, block: r.block, blocks: r.blocks, bypass: r.bypassCache, stream: r.stream };
  };
}

/** Zipf(theta) ranks over n keys by inversion of a precomputed CDF, ranks scattered by a hash. */
function zipfSource(n: number, theta: number, rng: Rng): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    sum += 1 / (i + 1) ** theta;
    cdf[i] = sum;
  }
  return () => {
    const u = rng.float() * sum;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return Math.imul(lo, 0x9e3779b1) >>> 0;
  };
}

function rate(h: number, n: number): number {
  return +(n === 0 ? 0 : h / n).toFixed(4);
}

function runSpc1(p: Policy, ios: number, seed: number): Record<string, unknown> {
  const next = spc1Source(seed);
  const c = new Counters();
  for (let i = 0; i < ios / 2; i++) apply(p, next(), c);
  // Steady state: the second half of the run.
  const w = new Counters();
  for (let i = 0; i < ios / 2; i++) apply(p, next(), w);
  return {
    readHit: rate(c.readHits + w.readHits, c.reads + w.reads),
    invalidateHit: rate(c.invalidateHits + w.invalidateHits, c.writes + w.writes),
    readHitSteady: rate(w.readHits, w.reads),
    invalidateHitSteady: rate(w.invalidateHits, w.writes),
    empty: rate(p.emptySlots() * 1e4, 1e4),
    refused: c.refused + w.refused,
    ...byStream(c, w),
  };
}

/**
 * Per SPC-1 stream kind over the whole run (counters c + w): its share of the read blocks, its
 * read hit rate, its invalidate hit rate (kinds with reads or writes only; ASU3's stream 8
 * bypasses).
 */
function byStream(c: Counters, w: Counters): Record<string, Record<string, number>> {
  const readShare: Record<string, number> = {};
  const readHit: Record<string, number> = {};
  const invalidateHit: Record<string, number> = {};
  const reads = c.reads + w.reads;
  for (let s = 1; s < STREAMS; s++) {
    const r = c.streamReads[s] + w.streamReads[s];
    const wr = c.streamWrites[s] + w.streamWrites[s];
    if (r > 0) {
      readShare[s] = rate(r, reads);
      readHit[s] = rate(c.streamReadHits[s] + w.streamReadHits[s], r);
    }
    if (wr > 0) invalidateHit[s] = rate(c.streamInvalidateHits[s] + w.streamInvalidateHits[s], wr);
  }
  return { readShareByStream: readShare, readHitByStream: readHit, invalidateHitByStream: invalidateHit };
}

function runZipf(p: Policy, slots: number, ios: number, seed: number): Record<string, unknown> {
  const z = zipfSource(10 * slots, 0.9, new Rng(seed, 7));
  const c = new Counters();
  for (let i = 0; i < ios; i++) apply(p, { read: true, vol: 1, block: z(), blocks: 1, bypass: false, stream: 0 }, c);
  return { readHit: rate(c.readHits, c.reads), empty: rate(p.emptySlots() * 1e4, 1e4) };
}

/**
 * Recency test: zipf(0.9) reads over 10x the cache whose hot set moves to other blocks every
 * `2 x slots` reads (a phase's blocks never come back), so blocks frequent in one phase are
 * dead weight in the next.
 */
function runShift(p: Policy, slots: number, ios: number, seed: number): Record<string, unknown> {
  const z = zipfSource(10 * slots, 0.9, new Rng(seed, 7));
  const c = new Counters();
  for (let i = 0; i < ios; i++) {
    const salt = Math.imul(Math.floor(i / (2 * slots)) + 1, 0x85ebca6b);
    apply(p, { read: true, vol: 1, block: (z() ^ salt) >>> 0, blocks: 1, bypass: false, stream: 0 }, c);
  }
  return { readHit: rate(c.readHits, c.reads), empty: rate(p.emptySlots() * 1e4, 1e4) };
}

function runScan(p: Policy, slots: number, seed: number): Record<string, unknown> {
  const z = zipfSource(10 * slots, 0.9, new Rng(seed, 7));
  const zipf = (n: number): number => {
    const c = new Counters();
    for (let i = 0; i < n; i++) apply(p, { read: true, vol: 1, block: z(), blocks: 1, bypass: false, stream: 0 }, c);
    return c.readHits / c.reads;
  };
  zipf(10 * slots);
  const before = zipf(slots);
  const scan = new Counters();
  for (let b = 0; b < 2 * slots; b += 8) apply(p, { read: true, vol: 2, block: b, blocks: 8, bypass: false, stream: 0 }, scan);
  const after = zipf(slots);
  return { before: +before.toFixed(4), after: +after.toFixed(4), ratio: +(after / before).toFixed(3) };
}

/** One simulation: a fresh policy (and fresh stream detectors) driven by one workload. */
function simulate(workload: string, name: string, slots: number, ios: number, seed: number): Record<string, unknown> {
  admission.reads.clear();
  admission.writes.clear();
  const p = makePolicy(name, slots);
  const t = performance.now();
  let r: Record<string, unknown>;
  if (workload === 'spc1') r = runSpc1(p, ios, seed);
  else if (workload === 'zipf') r = runZipf(p, slots, ios, seed);
  else if (workload === 'scan') r = runScan(p, slots, seed);
  else if (workload === 'shift') r = runShift(p, slots, ios, seed);
  else throw new Error(`unknown workload ${workload}`);
  const seconds = +((performance.now() - t) / 1000).toFixed(1);
  return { workload, policy: p.name, readAhead: admission.readAhead, slots, ios: workload === 'scan' ? undefined : ios, seed, ...r, ...p.extra(), seconds };
}

/** Blocks of the RAM target (16 M blocks: a 64 GiB cache of 4 KiB blocks). */
const RAM_TARGET_BLOCKS = 2 ** 24;

/**
 * RAM per cache block of the index of a cache of `slots` slots in 128-block segments, by part,
 * from the typed arrays (CacheMap.ramParts) and in total.
 */
function ramPerBlock(slots: number): { parts: Record<string, number>; total: number } {
  const m = new CacheMap(slots, { segmentBlocks: SEGMENT_BLOCKS });
  const parts = Object.fromEntries(Object.entries(m.ramParts()).map(([k, v]) => [k, +(v / slots).toFixed(3)]));
  return { parts, total: +(m.byteLength / slots).toFixed(3) };
}

const mean = (xs: number[]): number => +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(4);

/**
 * Every policy target of issue 12 in one run: SPC-1 (medium configuration, seeds 1-3) for
 * clock, exact LRU, ARC and log, log with read-ahead `readAhead`; the scan test for the four.
 * Prints each run (JSON lines), then the targets met or not.
 */
function targets(ios: number, readAhead: number): void {
  const slots = Math.floor(209715 / SEGMENT_BLOCKS) * SEGMENT_BLOCKS;
  const seeds = [1, 2, 3];
  const spc1: Record<string, Record<string, number>[]> = {};
  const run = (workload: string, name: string, seed: number, n: number, ra: number): Record<string, number> => {
    admission.readAhead = ra;
    const r = simulate(workload, name, workload === 'spc1' ? slots : 65536, n, seed);
    console.log(JSON.stringify(r));
    return r as Record<string, number>;
  };
  for (const seed of seeds) {
    for (const name of ['clock', 'lru', 'arc', 'log']) (spc1[name] ??= []).push(run('spc1', name, seed, ios, 0));
    (spc1.logRa ??= []).push(run('spc1', 'log', seed, ios, readAhead));
  }
  const scan: Record<string, number> = {};
  for (const name of ['clock', 'lru', 'arc', 'log']) scan[name] = run('scan', name, 1, 0, 0).ratio;
  const col = (name: string, k: string): number[] => spc1[name].map((r) => r[k]);
  const log = spc1.log;
  const arc = spc1.arc;
  const ra = spc1.logRa;
  const ram = ramPerBlock(RAM_TARGET_BLOCKS);
  console.log(JSON.stringify({ ram: RAM_TARGET_BLOCKS, bytesPerBlock: ram.parts, total: ram.total }));
  const rows: [string, string, boolean][] = [
    ['SPC-1 read hit >= 0.46 and >= ARC (each seed)', `log ${col('log', 'readHit').join(' / ')}; ARC ${col('arc', 'readHit').join(' / ')}; LRU ${col('lru', 'readHit').join(' / ')}; clock ${col('clock', 'readHit').join(' / ')}`, log.every((r, i) => r.readHit >= 0.46 && r.readHit >= arc[i].readHit)],
    ['SPC-1 invalidate hit >= 0.87', `log ${col('log', 'invalidateHit').join(' / ')}; ARC ${col('arc', 'invalidateHit').join(' / ')}`, log.every((r) => r.invalidateHit >= 0.87)],
    ['empty slots <= 2 %', `log ${col('log', 'empty').join(' / ')}`, log.every((r) => r.empty <= 0.02)],
    [`read-ahead ${readAhead}: read hit >= 0.60, accuracy >= 0.9`, `${col('logRa', 'readHit').join(' / ')}; accuracy ${col('logRa', 'prefetchAccuracy').join(' / ')}`, ra.every((r) => r.readHit >= 0.6 && r.prefetchAccuracy >= 0.9)],
    ['scan: hit after >= 0.8x before', `log ${scan.log}; ARC ${scan.arc}; LRU ${scan.lru}; clock ${scan.clock}`, scan.log >= 0.8],
    [`RAM <= 16 B per cache block at ${RAM_TARGET_BLOCKS} blocks`, `${ram.total} B: ` + Object.entries(ram.parts).map(([k, v]) => `${k} ${v}`).join(', '), ram.total <= 16],
  ];
  console.log(`\nSPC-1 means over seeds ${seeds.join(', ')} (${ios} I/Os): ` + ['clock', 'lru', 'arc', 'log', 'logRa'].map((n) => `${n} ${mean(col(n, 'readHit'))} / ${mean(col(n, 'invalidateHit'))}`).join('; '));
  console.log('| target | result | met |\n| --- | --- | --- |');
  for (const [t, r, met] of rows) console.log(`| ${t} | ${r} | ${met ? 'yes' : 'no'} |`);
}

/** The recorded guest boot trace (bench/traces/boot-read.trace: "R offset length" per read). */
function bootTrace(): [first: number, count: number][] {
  const file = path.resolve(__dirname, '..', '..', 'bench', 'traces', 'boot-read.trace');
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('R '))
    .map((l) => {
      const [, off, len] = l.split(' ').map(Number);
      const first = Math.floor(off / 4096);
      return [first, Math.ceil((off + len) / 4096) - first];
    });
}

/**
 * History prefetch in the spirit of Tombolo (Liu et al., MSST 2016), evaluated here only: a
 * request that does not continue the previous one (a jump) records an edge from the previous
 * jump's first block to its range; on a jump whose first block has an edge, the chain of the
 * next `depth` recorded ranges is prefetched (blocks not cached), sequential read-ahead doing
 * the rest of each range's stream.
 */
class HistoryPrefetch {
  private readonly next = new Map<number, [number, number]>();
  private lastJump = -1;
  private prevEnd = -1;
  constructor(private readonly depth: number) {}

  /** Records request [first, first + count) and returns the ranges to prefetch for it. */
  observe(first: number, count: number): [number, number][] {
    const out: [number, number][] = [];
    const jump = first !== this.prevEnd;
    this.prevEnd = first + count;
    if (!jump) return out;
    if (this.lastJump >= 0) this.next.set(this.lastJump, [first, count]);
    this.lastJump = first;
    let at = first;
    for (let d = 0; d < this.depth; d++) {
      const e = this.next.get(at);
      if (e === undefined || e[0] === first) break;
      out.push(e);
      at = e[0];
    }
    return out;
  }
}

/**
 * The boot trace replayed `boots` times on one volume (log policy, sequential read-ahead as
 * --read-ahead, history prefetch of depth `history` when > 0); `coldBetween` empties the cache
 * between boots (history kept: a second clone without sharing, or a cache lost in a crash).
 * Per boot: requests, requests that waited for the backing store (some block neither cached
 * nor prefetched when issued), blocks read from the backing store, prefetched blocks and their
 * accuracy.
 */
function runBoot(slots: number, boots: number, history: number, coldBetween: boolean): Record<string, unknown> {
  const trace = bootTrace();
  let p = new LogPolicy('log', slots, SegmentChoice.Clean, true);
  const hist = history > 0 ? new HistoryPrefetch(history) : null;
  const perBoot: Record<string, number>[] = [];
  for (let boot = 0; boot < boots; boot++) {
    if (boot > 0 && coldBetween) p = new LogPolicy('log', slots, SegmentChoice.Clean, true);
    admission.reads.clear();
    const before = p.m.stats(1);
    const pf0 = before.prefetched;
    const used0 = before.prefetchHits;
    let waits = 0;
    let backing = 0;
    let prefetched = 0;
    const fetch = (first: number, count: number): void => {
      for (let b = first; b < first + count; b++) {
        if (p.has(1, b)) continue;
        p.prefetch(1, b);
        backing++;
        prefetched++;
      }
    };
    for (const [first, count] of trace) {
      const d = detector(admission.reads, 1);
      const from = admission.readAhead > 0 ? d.readAhead(first, count, admission.readAhead, Number.MAX_SAFE_INTEGER) : -1;
      let missed = false;
      for (let b = first; b < first + count; b++) {
        if (p.lookup(1, b)) continue;
        missed = true;
        p.insert(1, b);
        backing++;
      }
      if (missed) waits++;
      if (from >= 0) fetch(from, d.lastEnd - from);
      if (hist) for (const [f, n] of hist.observe(first, count)) fetch(f, n);
    }
    const after = p.m.stats(1);
    perBoot.push({ requests: trace.length, waits, backingBlocks: backing, prefetched, accuracy: rate(after.prefetchHits - used0, after.prefetched - pf0) });
  }
  return { slots, history, coldBetween, boots: perBoot };
}

/** The header's "Run:" lines (--help). */
const USAGE = `Usage: node dist/bench/policy-sim.js --workload spc1|zipf|shift|scan|boot|targets|ram [--ios N] [--seed S]
         [--policy log|clock|lru|arc ...] [--slots N] [--cutoff BLOCKS] [--read-ahead BLOCKS] [--empty-target FRACTION]
         boot: [--boots N] [--history DEPTH] [--cold-between]
(see the head of bench/policy-sim.ts)`;

function main(): void {
  exitOnHelp(USAGE);
  const { values } = parseArgs({
    options: {
      workload: { type: 'string', default: 'spc1' },
      seed: { type: 'string', default: '1' },
      policy: { type: 'string', multiple: true },
      slots: { type: 'string' },
      ios: { type: 'string', default: '5000000' },
      cutoff: { type: 'string' },
      'read-ahead': { type: 'string' },
      'empty-target': { type: 'string', default: String(EMPTY_TARGET) },
      boots: { type: 'string', default: '2' },
      history: { type: 'string' },
      'cold-between': { type: 'boolean' },
    },
  });
  const workload = values.workload;
  const num = (v: string | undefined, name: string, def: number): number => (v === undefined ? def : positiveNumber(v, `--${name}`));
  /** A count that may be 0 (off). */
  const count = (v: string | undefined, name: string, def: number): number => (v === '0' ? 0 : num(v, name, def));
  const seed = num(values.seed, 'seed', 1);
  const policies = values.policy ?? ['clock', 'lru', 'arc', 'log'];
  const defaultSlots = workload === 'spc1' ? Math.floor(209715 / SEGMENT_BLOCKS) * SEGMENT_BLOCKS : 65536;
  const slots = num(values.slots, 'slots', defaultSlots);
  const ios = num(values.ios, 'ios', 5_000_000);
  admission.cutoff = count(values.cutoff, 'cutoff', 0);
  admission.readAhead = count(values['read-ahead'], 'read-ahead', 0);
  admission.emptyTarget = num(values['empty-target'], 'empty-target', EMPTY_TARGET);
  if (workload === 'boot') {
    const r = runBoot(num(values.slots, 'slots', 131072), num(values.boots, 'boots', 2), count(values.history, 'history', 0), values['cold-between'] === true);
    console.log(JSON.stringify({ workload, readAhead: admission.readAhead, ...r }));
    return;
  }
  if (workload === 'ram') {
    const ram = ramPerBlock(num(values.slots, 'slots', RAM_TARGET_BLOCKS));
    console.log(JSON.stringify({ workload, bytesPerBlock: ram.parts, total: ram.total }));
    return;
  }
  if (workload === 'targets') {
    targets(ios, count(values['read-ahead'], 'read-ahead', 32));
    return;
  }
  for (const name of policies) console.log(JSON.stringify(simulate(workload, name, slots, ios, seed)));
}

main();
