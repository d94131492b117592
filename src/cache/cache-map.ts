/**
 * Cache map: the BDA (which key sits in which log slot), the address map (key -> slot), the
 * replacement policy and the log write position (the hand): a new block always goes to the slot
 * the hand stops at, so blocks are written in log order and each segment fills sequentially.
 *
 * Policy (per slot, bits 1..2 of the BDA flags): a reuse counter 0..MAX_COUNT. A hit adds one
 * (and sets FLAG_REUSED); a block inserted while its key is in the ghost history (ghost.ts:
 * evicted recently, i.e. reused: ARC's second list) starts at GHOST_COUNT, reused, as if hit
 * once; a block a write invalidated and re-inserted (its ghost kind Invalidated) keeps its
 * standing at MAX_COUNT, reused (a rewritten block is the likeliest to be read or written
 * again: ARC counts a write to a cached block as a hit); a block inserted by read-ahead at 1
 * (it must survive until its reader comes; its first hit does not add one); any other at 0.
 * To insert, the hand scans its segment: an invalid slot is taken; a valid slot with a
 * non-zero counter is carried forward (kept in place: it is rewritten with the segment), unless
 * its volume is at or over its cap; any other valid slot is evicted (its key goes to the ghost
 * history, as once-seen or reused). One-touch blocks (scans, sequential streams) thus leave at
 * the first cleaning of their segment while blocks hit twice or more survive several: recency
 * and frequency.
 *
 * Adaptation (ARC's p, as a decay period): a carried block's counter is decremented on one in
 * `decayPeriod` carries (1..DECAY_MAX; a credit counts the carries), and a counter at MAX_COUNT
 * on one in TOP_DECAY of those turns (a second credit): the top level holds TOP_DECAY times
 * longer, which gives the 2-bit counter the range of a wider one at the top. A ghost hit of a
 * block evicted once-seen means the recency side was too short: the period shrinks (counters
 * decay faster, reused blocks leave sooner and leave room to new ones); of a block evicted after
 * reuse, the frequency side was: the period grows. Each step is DECAY_STEP times ARC's
 * weight, the ratio of the other kind's ghosts to this kind's (at least 1). Ghost hits of
 * blocks a write invalidated (re-inserted by the write itself) do not adapt.
 *
 * Admission (ARC's T1, adaptive): a read miss asks admit() before it is inserted; writes and
 * read-ahead are always inserted. A key the ghost history remembers (a second touch) is
 * admitted; a first touch is admitted when its region (REGION_BLOCKS blocks of its volume, a
 * hashed table of one-byte scores, one entry per SLOTS_PER_REGION_ENTRY slots) scores at least
 * REGION_ADMIT, else for a share `admitShare` of first touches (a credit, no randomness). A
 * refused first touch is remembered as GhostKind.Refused; inserted while remembered (read
 * again, or written: its write's insertion takes the entry) it starts at counter 0, adds one
 * to the score of its region and of the next (a sequential stream re-read behind another reads
 * on into it), and raises the share; a ghost hit of a block evicted after reuse (too little
 * room for the frequent blocks) lowers it, each by ADMIT_STEP times ARC's ratio of the ghost
 * sizes (Refused against Reused). Scores halve every REGION_AGE x (table entries) first-touch
 * decisions. So one-touch streams and uniform misses stay out while regions whose blocks come
 * back (hot spots filling, streams read twice) are admitted at once.
 *
 * Segment choice (cleaning): when the hand leaves a segment it enters, while more than
 * EMPTY_TARGET of the slots (and more than one segment's worth) are invalid, the segment with
 * the most invalid slots, and refills only those (its valid blocks stay as they are, counters
 * untouched): capacity lost to invalidation stays under EMPTY_TARGET. Slots pinned for
 * write-back (SHADOW, RESERVED: invalid, not in the map) count as holes there, so a holes-only
 * refill may find none free: once one leaves its segment without placing a block, the next
 * choice is cost-benefit (holes first again once a cost-benefit segment was left), so the hand
 * never hops from one pinned hole to the next (a write-back SPC-1 run with its log ASU in
 * write-back spent whole seconds so: ~600 slots visited and ~5 choices of 276 segments per
 * insertion, every guest request stalled). Otherwise it enters the
 * segment with the best LFS cost-benefit score, ((2 holes + cold) / (B + keep)) * age, where
 * keep = valid slots whose counter is non-zero (carried forward), cold = the other valid slots
 * (evicted), holes = invalid slots (count double: refilling them evicts nothing) and age =
 * segments entered since it was last entered: segments holding one-touch blocks are reused
 * first, hot ones last. The price of few holes is more, smaller segment writes per block
 * inserted (the log writes only the refilled runs and the header, log.ts).
 * SegmentChoice.Order (next segment in log order) is pblcache's CLOCK, kept as the simulator's
 * baseline. With the default of one segment the map is a plain CLOCK-with-counters.
 *
 * Write-back (dirty) blocks are never evicted: the hand carries them forward without touching
 * their counter, and passes slots pinned for write-back (SHADOW, RESERVED: bda.ts) as if they
 * were valid. The dirty blocks of each volume are kept in `dirty` (slot -> time made dirty, in
 * that order, so the first entry is the oldest) for destaging (destage.ts). The writes of the
 * volumes keep the dirty and pinned slots well under the slot count (destage.ts, DIRTY_LIMIT),
 * so the hand always finds a slot.
 *
 * Per-volume caps are hard: while a volume holds `cap` blocks, its next insert evicts one of its
 * own blocks (the first one at or after the hand in slot order, whatever its counter); slots of
 * other volumes passed on the way are left untouched.
 *
 * Insertion is split in two steps because the log may have to read the victim's segment
 * before the slot can be overwritten (see log.ts): findVictim() moves the hand to the victim
 * (carrying forward the slots it passes), assign() evicts it, stores the new key and moves the
 * hand past it. Nothing else may move the hand in between. upcomingSegment() tells the log
 * which segment comes next (to read it ahead); the hand will enter exactly that one.
 */
import { AddressMap, DEFAULT_LOAD_FACTOR, hashKey } from './address-map';
import { BlockDescriptorArray, FLAG_DIRTY, FLAG_PREFETCHED, FLAG_REF, FLAG_RESERVED, FLAG_REUSED, FLAG_SHADOW, FLAG_VALID, MAX_VOLUMES } from './bda';
import { GhostHistory, GhostKind } from './ghost';
import { performance } from 'node:perf_hooks';
import { newCounters, type VolumeCounters } from './stats';

/** Largest reuse counter (bits 1..2 of the flags; FLAG_REF is its low bit). */
export const MAX_COUNT = 3;
const COUNT_MASK = MAX_COUNT * FLAG_REF;
/** Longest decay period (carries per counter decrement). */
export const DECAY_MAX = 16;
/** Decay period change per ghost hit, times ARC's ghost-size ratio. */
export const DECAY_STEP = 1 / 64;
/** Counter of a block back from the ghost history (evicted once-seen or reused): one hit's. */
export const GHOST_COUNT = 1;
/** A counter at MAX_COUNT is decremented on one in TOP_DECAY of its carried block's turns. */
export const TOP_DECAY = 8;
/** A slot the hand may not take: dirty, or pinned for write-back (bda.ts). */
const KEEP_MASK = FLAG_DIRTY | FLAG_SHADOW | FLAG_RESERVED;
/**
 * Fraction of invalid slots above which (and above one segment's worth) the hand refills the
 * segments with the most holes first.
 */
export const EMPTY_TARGET = 1 / 64;
/**
 * Segments examined per segment choice (all of them up to this many; beyond, a window that
 * rotates over the log), so a choice costs O(CLEANING_WINDOW), not O(segments).
 */
export const CLEANING_WINDOW = 4096;
/** Lowest share of first touches admitted (admit()). */
export const ADMIT_MIN = 1 / 64;
/** Admission share change per refused or reused ghost hit, times ARC's ghost-size ratio. */
export const ADMIT_STEP = 1 / 256;
/** Blocks per admission region (admit(): refused-ghost hits are scored per region). */
export const REGION_BLOCKS = 1024;
/** Score at which a region's first touches are all admitted. */
export const REGION_ADMIT = 16;
/** Region scores halve once per REGION_AGE x (regions) first-touch admission decisions. */
export const REGION_AGE = 4;
/** Region score entries per slot (a hashed table: 1 per 64 slots, at least MIN_REGIONS). */
export const SLOTS_PER_REGION_ENTRY = 64;
const MIN_REGIONS = 1024;

export enum SegmentChoice {
  /** Cost-benefit cleaning (default). */
  Clean = 'clean',
  /** The next segment in log order (pblcache CLOCK). */
  Order = 'order',
}

export interface CacheMapOptions {
  loadFactor?: number;
  /** Slots per log segment (default: all slots, one segment). */
  segmentBlocks?: number;
  segmentChoice?: SegmentChoice;
  /** Ghost history entries (default: one per slot; 0 = none). */
  ghostEntries?: number;
  /** Fraction of empty slots above which holes are refilled first (default EMPTY_TARGET). */
  emptyTarget?: number;
}

/**
 * An index rebuilt and counted by its builder (recovery.ts), adopted without a pass over the
 * slots: the address map of the BDA's valid slots, every counter zero.
 */
export interface CountedIndex {
  map: AddressMap;
  /** Valid slots per segment. */
  segValid: Uint16Array;
  /** Valid slots per volume id (MAX_VOLUMES). */
  volumeBlocks: Uint32Array;
  /** The valid dirty slots, ascending. */
  dirty: readonly number[];
}

export class CacheMap {
  readonly bda: BlockDescriptorArray;
  readonly map: AddressMap;
  readonly ghost: GhostHistory | null;
  readonly slots: number;
  readonly segmentBlocks: number;
  readonly segments: number;
  readonly segmentChoice: SegmentChoice;
  readonly emptyTarget: number;
  /** Next slot the hand looks at. */
  hand = 0;
  /** Segments entered / segments (rounds of the log). */
  wraps = 0;
  /** Segments the hand entered to refill them. */
  segmentsCleaned = 0;
  /** Valid blocks the hand kept in place (rewritten with their segment). */
  blocksCarried = 0;
  /** Segments the hand left without placing a block in them (every slot carried forward). */
  segmentsSkipped = 0;
  /** Carries per counter decrement (1..DECAY_MAX), adapted by ghost hits (ARC's p). */
  decayPeriod = 1;
  /** Carries since the last decrement. */
  private decayCredit = 0;
  /** Share of read misses' first touches admitted (ADMIT_MIN..1), adapted by ghost hits. */
  admitShare = 1;
  /** admit()'s credit: a first touch is admitted each time it reaches 1. */
  private admitCredit = 0;
  /** Per region of REGION_BLOCKS blocks (hashed with its volume): recent refused-ghost hits. */
  private readonly regionScore: Uint8Array;
  /** First-touch decisions since the region scores last halved. */
  private regionTick = 0;
  /** Decrement turns of blocks at MAX_COUNT since the last one taken. */
  private topCredit = 0;
  /** Blocks currently cached per volume id. */
  readonly volumeBlocks = new Uint32Array(MAX_VOLUMES);
  /** Per-volume cap in blocks; 0 = no cap. */
  readonly volumeCap = new Float64Array(MAX_VOLUMES);
  /** Per volume id: its dirty slots -> performance.now() when made dirty (oldest first). */
  readonly dirty = new Map<number, Map<number, number>>();
  /** Dirty blocks of every volume. */
  dirtyTotal = 0;
  /** Per segment: valid slots whose counter is non-zero. */
  private readonly segKeep: Uint16Array;
  /** Per segment: valid slots. */
  private readonly segValid: Uint16Array;
  /** Per segment: value of `entered` when the hand last entered it. */
  private readonly segStamp: Float64Array;
  private entered = 0;
  /** First segment of the next cleaning window. */
  private windowStart = 0;
  /** True once a block was placed in the hand's current segment. */
  private placed = false;
  /** Segment the hand enters next, once chosen (-1: not chosen yet). */
  private upcoming = -1;
  /** upcoming was chosen for its holes: only they are refilled, valid slots are left as they are. */
  private upcomingHolesOnly = false;
  /** The hand's current segment is being refilled holes only. */
  private holesOnly = false;
  /** The last holes-only segment the hand left had no free slot (see the file comment). */
  private holesFutile = false;

  /** True while the hand refills only the holes of its segment (its valid slots stay untouched). */
  get refillingHoles(): boolean {
    return this.holesOnly;
  }

  /** True when the segment upcomingSegment() chose will be refilled holes only. */
  get upcomingHolesOnlyRefill(): boolean {
    return this.upcoming >= 0 && this.upcomingHolesOnly;
  }
  private readonly counters: (VolumeCounters | undefined)[] = [];
  /**
   * Called with each slot drop() invalidates, before its key is cleared (the log tracks
   * header entries that may still be valid on the device: dropped.ts), `evicted` when assign()
   * refills it, `superseded` when a dirty slot is replaced by a newer copy of its key (it
   * becomes SHADOW); not by dropVolume().
   */
  onDrop: ((slot: number, evicted: boolean, superseded: boolean) => void) | null = null;
  /** Called with each dirty slot that stops being dirty (dropped or marked clean). */
  onClean: ((slot: number) => void) | null = null;

  /**
   * `bda` and `index` adopt an index: a saved address-map table (metadata.ts: counted here, one
   * pass over the slots), or one rebuilt and counted by recovery (recovery.ts: no pass).
   */
  constructor(slots: number, opts: CacheMapOptions = {}, bda?: BlockDescriptorArray, index?: Int32Array | CountedIndex) {
    this.bda = bda ?? new BlockDescriptorArray(slots);
    this.slots = this.bda.size;
    this.map = index instanceof Int32Array || index === undefined ? new AddressMap(this.bda, opts.loadFactor ?? DEFAULT_LOAD_FACTOR, index) : index.map;
    this.segmentBlocks = Math.min(opts.segmentBlocks ?? this.slots, this.slots);
    this.segments = Math.ceil(this.slots / this.segmentBlocks);
    this.segmentChoice = opts.segmentChoice ?? SegmentChoice.Clean;
    this.emptyTarget = opts.emptyTarget ?? EMPTY_TARGET;
    const ghost = opts.ghostEntries ?? this.slots;
    this.ghost = ghost > 0 ? new GhostHistory(ghost) : null;
    // Without a ghost history every miss is admitted: no scores.
    this.regionScore = new Uint8Array(this.ghost ? Math.max(MIN_REGIONS, Math.ceil(this.slots / SLOTS_PER_REGION_ENTRY)) : 0);
    this.segKeep = new Uint16Array(this.segments);
    this.segValid = new Uint16Array(this.segments);
    this.segStamp = new Float64Array(this.segments);
    if (bda && index !== undefined && !(index instanceof Int32Array)) {
      if (index.segValid.length !== this.segments) throw new Error('CacheMap: counts of another geometry');
      this.segValid.set(index.segValid);
      this.volumeBlocks.set(index.volumeBlocks);
      for (const i of index.dirty) this.addDirty(i, this.bda.keyHi[i]);
    } else if (bda) {
      const { flags, keyHi } = this.bda;
      const { volumeBlocks, segValid, segKeep } = this;
      for (let seg = 0, i = 0; seg < this.segments; seg++) {
        const end = Math.min(i + this.segmentBlocks, this.slots);
        let valid = 0;
        let keep = 0;
        for (; i < end; i++) {
          const f = flags[i];
          if ((f & FLAG_VALID) === 0) continue;
          volumeBlocks[keyHi[i]]++;
          valid++;
          if ((f & COUNT_MASK) !== 0) keep++;
          if ((f & FLAG_DIRTY) !== 0) this.addDirty(i, keyHi[i]);
        }
        segValid[seg] = valid;
        segKeep[seg] = keep;
      }
    }
  }

  /** Counters of a volume id (created on first use). */
  stats(volume: number): VolumeCounters {
    let c = this.counters[volume];
    if (!c) {
      c = newCounters();
      this.counters[volume] = c;
    }
    return c;
  }

  segmentOf(slot: number): number {
    return Math.floor(slot / this.segmentBlocks);
  }

  /** Reuse counter of a slot (0..MAX_COUNT). */
  count(slot: number): number {
    return (this.bda.flags[slot] & COUNT_MASK) / FLAG_REF;
  }

  /** Slot of (volume, block) and counts a use of it, or -1. Does not count statistics. */
  lookup(volume: number, block: number): number {
    const idx = this.map.get(volume, block);
    if (idx >= 0) this.use(idx, volume);
    return idx;
  }

  /** Counts a use of a valid slot of `volume` (what lookup does once it found it). */
  use(idx: number, volume: number): void {
    const flags = this.bda.flags;
    if ((flags[idx] & FLAG_PREFETCHED) !== 0) {
      // First read of a read-ahead block: uses up the counter it was inserted with.
      flags[idx] &= ~FLAG_PREFETCHED;
      this.stats(volume).prefetchHits++;
      return;
    }
    const c = flags[idx] & COUNT_MASK;
    if (c === 0) this.segKeep[this.segmentOf(idx)]++;
    if (c !== COUNT_MASK) flags[idx] += FLAG_REF;
    flags[idx] |= FLAG_REUSED;
  }

  /**
   * Admission of a read miss's block, asked before findVictim (writes and read-ahead are not
   * asked: always inserted): true when it is to be inserted, false when it is refused (then
   * remembered as GhostKind.Refused and counted). See the file comment.
   */
  admit(volume: number, block: number): boolean {
    const g = this.ghost;
    if (g === null || g.has(block, volume)) return true;
    const scores = this.regionScore;
    if (++this.regionTick >= scores.length * REGION_AGE) {
      this.regionTick = 0;
      for (let i = 0; i < scores.length; i++) scores[i] >>>= 1;
    }
    if (scores[this.regionOf(volume, block)] >= REGION_ADMIT) return true;
    this.admitCredit += this.admitShare;
    if (this.admitCredit >= 1) {
      this.admitCredit -= 1;
      return true;
    }
    g.add(block, volume, GhostKind.Refused);
    this.stats(volume).firstTouchesRefused++;
    return false;
  }

  /** Slot of (volume, block) without touching its counter, or -1. */
  peek(volume: number, block: number): number {
    return this.map.get(volume, block);
  }

  private atCap(volume: number): boolean {
    const cap = this.volumeCap[volume];
    return cap > 0 && this.volumeBlocks[volume] >= cap;
  }

  /** The slot after i for the hand: the next one in its segment, else the next segment's first. */
  private step(i: number): number {
    const next = i + 1;
    if (next < this.slots && next % this.segmentBlocks !== 0) return next;
    // The segment left is i's (findVictim moves the hand only once it stops).
    this.hand = i;
    this.holesFutile = this.holesOnly && !this.placed;
    const seg = this.upcomingSegment();
    this.upcoming = -1;
    this.holesOnly = this.upcomingHolesOnly;
    if (!this.placed) this.segmentsSkipped++;
    this.placed = false;
    this.segStamp[seg] = ++this.entered;
    this.segmentsCleaned++;
    if (this.entered % this.segments === 0) this.wraps++;
    return seg * this.segmentBlocks;
  }

  /** The segment the hand enters when it leaves its current one (chosen once, then kept). */
  upcomingSegment(): number {
    if (this.upcoming >= 0) return this.upcoming;
    const cur = this.segmentOf(this.hand);
    const S = this.segments;
    let best = (cur + 1) % S;
    if (this.segmentChoice === SegmentChoice.Clean && S > 2) {
      const B = this.segmentBlocks;
      const keep = this.segKeep;
      const valid = this.segValid;
      const stamp = this.segStamp;
      const now = this.entered + 1;
      // Too many holes: refill the segment with the most (holes only); else cost-benefit.
      const holesFirst = !this.holesFutile && this.slots - this.map.size > Math.max(this.slots * this.emptyTarget, B);
      let mostHoles = 0;
      let holey = -1;
      let bestScore = -1;
      // At most CLEANING_WINDOW segments are examined per choice, a rotating window.
      const n = Math.min(S, CLEANING_WINDOW);
      const from = this.windowStart;
      this.windowStart = (from + n) % S;
      for (let j = 0; j < n; j++) {
        const s = from + j < S ? from + j : from + j - S;
        if (s === cur) continue;
        const holes = B - valid[s];
        if (holes > mostHoles) {
          mostHoles = holes;
          holey = s;
        }
        const score = ((2 * holes + valid[s] - keep[s]) / (B + keep[s])) * (now - stamp[s]);
        if (score > bestScore) {
          bestScore = score;
          best = s;
        }
      }
      this.upcomingHolesOnly = holesFirst && holey >= 0;
      if (this.upcomingHolesOnly) best = holey;
    }
    this.upcoming = best;
    return best;
  }

  /**
   * Moves the hand to the slot the next block of `volume` must go to and returns it, or -1 when
   * every slot is pinned for write-back (dirty, SHADOW or RESERVED: free again only once header
   * writes complete, so nothing can be placed now). Slots carried forward on the way have their
   * counter decremented. The slot is not changed: call assign() with it.
   */
  findVictim(volume: number): number {
    const { bda, slots } = this;
    const flags = bda.flags;
    let i = this.hand;
    if (this.atCap(volume)) {
      for (let n = 0; n < slots; n++) {
        if ((flags[i] & (FLAG_VALID | KEEP_MASK)) === FLAG_VALID && bda.volumeOf(i) === volume) {
          this.hand = i;
          return i;
        }
        i = i + 1 < slots ? i + 1 : 0;
      }
      i = this.hand;
    }
    // Slots passed over: a holes-only refill that went a whole circle without a free slot (the
    // segment choice counts pinned write-back slots as holes) takes valid blocks again. Past a
    // log's worth of pinned slots in a row the segment choice may be going round pinned
    // segments only (it scores them as holes or cold blocks): the hand goes on in log order,
    // which passes every slot within one more log's worth; then no slot can be taken now (-1).
    let passed = 0;
    let pinned = 0;
    for (;;) {
      const f = flags[i];
      if ((f & (FLAG_VALID | KEEP_MASK)) === 0) break;
      if ((f & KEEP_MASK) !== 0) {
        if (++pinned > 2 * slots) return -1;
        if (pinned > slots && this.upcoming < 0) {
          this.upcoming = (this.segmentOf(i) + 1) % this.segments;
          this.upcomingHolesOnly = false;
        }
        i = this.step(i);
        continue;
      }
      pinned = 0;
      if (this.holesOnly && passed < slots) {
        passed++;
        i = this.step(i);
        continue;
      }
      const c = f & COUNT_MASK;
      if (c === 0 || this.atCap(bda.volumeOf(i))) break;
      if (++this.decayCredit >= this.decayPeriod) {
        this.decayCredit -= this.decayPeriod;
        if (c !== COUNT_MASK || ++this.topCredit >= TOP_DECAY) {
          if (c === COUNT_MASK) this.topCredit = 0;
          flags[i] = f - FLAG_REF;
          if (c === FLAG_REF) this.segKeep[this.segmentOf(i)]--;
        }
      }
      this.blocksCarried++;
      i = this.step(i);
    }
    this.hand = i;
    return i;
  }

  /**
   * Puts (volume, block) into `slot` (normally the one findVictim returned): evicts what the
   * slot held (its key joins the ghost history), drops any other slot holding the same key,
   * moves the hand past the slot. `prefetched`: inserted by read-ahead (counted, marked until
   * its first hit). `dirty`: write-back data (a dirty copy it replaces becomes SHADOW).
   */
  assign(slot: number, volume: number, block: number, prefetched = false, dirty = false): void {
    const { bda } = this;
    if (bda.isValid(slot)) {
      this.stats(bda.volumeOf(slot)).evictions++;
      this.ghost?.add(bda.keyLo[slot], bda.keyHi[slot], (bda.flags[slot] & FLAG_REUSED) !== 0 ? GhostKind.Reused : GhostKind.Once);
      this.drop(slot, false, true);
    }
    const old = this.map.get(volume, block);
    if (old >= 0) this.drop(old, false, false, dirty);
    bda.set(slot, volume, block);
    if (dirty) {
      bda.flags[slot] |= FLAG_DIRTY;
      this.addDirty(slot, volume);
    }
    this.map.add(slot);
    this.segValid[this.segmentOf(slot)]++;
    const kind = this.ghost ? this.ghost.take(bda.keyLo[slot], bda.keyHi[slot]) : -1;
    if (kind === GhostKind.Refused) {
      // A refused first touch back (read again, or written): it starts at 0; admission was too strict.
      this.stats(volume).refusedGhostHits++;
      this.regionHit(volume, block);
      this.adaptAdmission(true);
    } else if (kind >= 0) {
      bda.flags[slot] |= (kind === GhostKind.Invalidated ? COUNT_MASK : GHOST_COUNT * FLAG_REF) | FLAG_REUSED;
      this.segKeep[this.segmentOf(slot)]++;
      this.stats(volume).ghostHits++;
      if (kind !== GhostKind.Invalidated) this.adapt(kind === GhostKind.Reused);
      if (kind === GhostKind.Reused) this.adaptAdmission(false);
    }
    this.volumeBlocks[volume]++;
    this.stats(volume).insertions++;
    if (prefetched) {
      // Read ahead of its reader: it must survive one cleaning to be read.
      if ((bda.flags[slot] & COUNT_MASK) === 0) {
        bda.flags[slot] |= FLAG_REF;
        this.segKeep[this.segmentOf(slot)]++;
      }
      bda.flags[slot] |= FLAG_PREFETCHED;
      this.stats(volume).prefetched++;
    }
    if (slot === this.hand) {
      this.placed = true;
      this.hand = this.step(slot);
    }
  }

  /**
   * ARC's adaptation on a ghost hit of an evicted block: reused (frequency side too short)
   * lengthens the decay period, once-seen (recency side too short) shortens it, by DECAY_STEP
   * times the ratio of the other kind's ghosts to this kind's, at least DECAY_STEP.
   */
  private adapt(reused: boolean): void {
    const n = this.ghost!.count;
    const once = Math.max(1, n[GhostKind.Once]);
    const again = Math.max(1, n[GhostKind.Reused]);
    const d = reused ? DECAY_STEP * Math.max(1, once / again) : -DECAY_STEP * Math.max(1, again / once);
    this.decayPeriod = Math.min(DECAY_MAX, Math.max(1, this.decayPeriod + d));
  }

  /** Entry of the region score table for the region holding (volume, block). */
  private regionOf(volume: number, block: number): number {
    return (hashKey(Math.floor(block / REGION_BLOCKS), volume) >>> 0) % this.regionScore.length;
  }

  /** A refused-ghost hit at (volume, block): scores its region and the next one (streams go on). */
  private regionHit(volume: number, block: number): void {
    const scores = this.regionScore;
    for (const b of [block, block + REGION_BLOCKS]) {
      const r = this.regionOf(volume, b);
      if (scores[r] < 0xff) scores[r]++;
    }
  }

  /**
   * ARC's adaptation of the admission share: a refused-ghost hit (admission too strict) raises
   * it, a reused-ghost hit (a block hit before was evicted: too little room) lowers it, by
   * ADMIT_STEP times the ratio of the other kind's ghosts to this kind's (at least ADMIT_STEP).
   */
  private adaptAdmission(up: boolean): void {
    const n = this.ghost!.count;
    const refused = Math.max(1, n[GhostKind.Refused]);
    const again = Math.max(1, n[GhostKind.Reused]);
    const d = up ? ADMIT_STEP * Math.max(1, again / refused) : -ADMIT_STEP * Math.max(1, refused / again);
    this.admitShare = Math.min(1, Math.max(ADMIT_MIN, this.admitShare + d));
  }

  /**
   * Invalidates a valid slot (no statistics); `untracked`: onDrop is not called. A dirty slot
   * stays pinned (bda.ts): SHADOW when `superseded` by a newer dirty copy, else RESERVED (not
   * when untracked: its volume's epoch makes its entries invalid).
   */
  drop(slot: number, untracked = false, evicted = false, superseded = false): void {
    const { bda } = this;
    if (!bda.isValid(slot)) return;
    const dirty = bda.isDirty(slot);
    superseded &&= dirty;
    if (!untracked) this.onDrop?.(slot, evicted, superseded);
    const seg = this.segmentOf(slot);
    if ((bda.flags[slot] & COUNT_MASK) !== 0) this.segKeep[seg]--;
    this.segValid[seg]--;
    this.map.remove(slot);
    const volume = bda.volumeOf(slot);
    this.volumeBlocks[volume]--;
    bda.clear(slot);
    if (!dirty) return;
    this.removeDirty(slot, volume);
    if (!untracked) bda.flags[slot] = superseded ? FLAG_SHADOW : FLAG_RESERVED;
  }

  private addDirty(slot: number, volume: number): void {
    let m = this.dirty.get(volume);
    if (m === undefined) this.dirty.set(volume, (m = new Map()));
    m.set(slot, performance.now());
    this.dirtyTotal++;
  }

  private removeDirty(slot: number, volume: number): void {
    if (this.dirty.get(volume)?.delete(slot) === true) this.dirtyTotal--;
    this.onClean?.(slot);
  }

  /** Dirty blocks of a volume. */
  dirtyBlocks(volume: number): number {
    return this.dirty.get(volume)?.size ?? 0;
  }

  /** Slot `slot` (valid, dirty) now matches the backing store: clean, evictable again. */
  markClean(slot: number): void {
    const { bda } = this;
    if (!bda.isValid(slot) || !bda.isDirty(slot)) return;
    bda.flags[slot] &= ~FLAG_DIRTY;
    this.removeDirty(slot, bda.volumeOf(slot));
  }

  /** Invalidates (volume, block) if cached; counts an invalidation. Returns true on a hit. */
  invalidate(volume: number, block: number): boolean {
    return this.invalidateRange(volume, block, 1) === 1;
  }

  /**
   * Invalidates blocks [first, first + count) of a volume; returns how many were cached.
   * Large ranges scan the BDA instead of probing the map block by block.
   */
  invalidateRange(volume: number, first: number, count: number): number {
    const c = this.stats(volume);
    c.invalidations += count;
    if (this.volumeBlocks[volume] === 0) return 0;
    let hits = 0;
    if (count > this.slots / 4) {
      const { bda } = this;
      const end = first + count;
      for (let i = 0; i < this.slots; i++) {
        if (!bda.isValid(i) || bda.volumeOf(i) !== volume) continue;
        const b = bda.blockOf(i);
        if (b >= first && b < end) {
          this.drop(i);
          hits++;
        }
      }
    } else {
      for (let b = first; b < first + count; b++) {
        const idx = this.map.get(volume, b);
        if (idx >= 0) {
          this.ghost?.add(this.bda.keyLo[idx], this.bda.keyHi[idx], GhostKind.Invalidated);
          this.drop(idx);
          hits++;
        }
      }
    }
    c.invalidateHits += hits;
    return hits;
  }

  /**
   * Drops every block of a volume (its identity changed). Returns how many. onDrop is not
   * called: the cache makes them all invalid at once (the volume's epoch, volume-table.ts).
   */
  dropVolume(volume: number): number {
    if (this.volumeBlocks[volume] === 0) return 0;
    let n = 0;
    for (let i = 0; i < this.slots; i++) {
      if (this.bda.isValid(i) && this.bda.volumeOf(i) === volume) {
        this.drop(i, true);
        n++;
      }
    }
    return n;
  }

  /**
   * Drops every valid slot in [from, to) but the dirty ones (their data on the cache device is
   * lost or unreadable; a dirty block is the only copy of its data: it stays, and its reads
   * fail rather than fall back to the older backing store).
   */
  dropSlots(from: number, to: number): number {
    let n = 0;
    for (let i = from; i < to; i++) {
      if (this.bda.isValid(i) && !this.bda.isDirty(i)) {
        this.drop(i);
        n++;
      }
    }
    return n;
  }

  /**
   * RAM of the index by part, in bytes, from the typed arrays themselves: BDA keys (keyLo +
   * keyHi), CRC-32Cs and flags, the address map, the ghost history, the admission region
   * scores, the per-segment counters, the per-volume counters (fixed, MAX_VOLUMES entries). Not
   * counted: the write-back dirty lists (a Map per volume, bounded by destage.ts) and
   * per-volume objects (stats, streams).
   */
  ramParts(): { keys: number; crc: number; flags: number; addressMap: number; ghost: number; regions: number; segments: number; volumes: number } {
    const { bda } = this;
    return {
      keys: bda.keyLo.byteLength + bda.keyHi.byteLength,
      crc: bda.crc.byteLength,
      flags: bda.flags.byteLength,
      addressMap: this.map.byteLength,
      ghost: this.ghost?.byteLength ?? 0,
      regions: this.regionScore.byteLength,
      segments: this.segKeep.byteLength + this.segValid.byteLength + this.segStamp.byteLength,
      volumes: this.volumeBlocks.byteLength + this.volumeCap.byteLength,
    };
  }

  /** Bytes of RAM of the index (the sum of ramParts()). */
  get byteLength(): number {
    return Object.values(this.ramParts()).reduce((a, b) => a + b, 0);
  }
}
