/**
 * SPC-1-like workload, as pblio drove pblcache (written from docs of the behaviour of NetApp's
 * spc1.c; see the benchmark notes). Units: one block = 4 KiB.
 *
 * Layout: ASU1 and ASU2 have the same size (the smaller capacity wins), ASU3 = 2/9 of ASU1. If
 * ASU1 is smaller than MIN_HOTSPOT_ASU_BLOCKS the generator runs on virtual ASUs m times larger
 * (m the smallest integer making ASU1 big enough) and divides every address by m.
 *
 * Time: B BSUs x 8 streams, stream kind s issuing a Poisson process of rate 50 * share(s) per BSU.
 * The merge of independent Poisson processes is itself a Poisson process of the summed rate
 * (50 * B IOPS) whose events belong to each component with probability proportional to its rate,
 * so the generator draws one exponential gap of mean 1 / (50 B) per request and then the
 * (BSU, stream) that issued it: same distribution as merging B * 8 timelines, O(1) per request.
 * Arrival times come from their own random lane, so a paced and an unpaced workload with the same
 * seed produce the same requests.
 */
import { cumulativeWeights, Rng } from './rng';
import type { BenchRequest, Workload } from './workload';

export const SPC1_BLOCK_SIZE = 4096;
/** IOPS of one business scaling unit. */
export const BSU_IOPS = 50;
/** Smallest ASU1/ASU2 for which the hot spots have enough leaves (128 x 8 x 20 blocks = 80 MiB). */
export const MIN_HOTSPOT_ASU_BLOCKS = 128 * 8 * 20;
/** Smallest accepted ASU1/ASU2 (ASU3 = 2/9 of it must hold a 16-block transfer). */
export const MIN_ASU_BLOCKS = 72;

/** Transfer lengths (blocks) of the sequential streams and their weights (out of 25). */
export const SMIX_LENGTHS: readonly number[] = [1, 2, 4, 8, 16];
export const SMIX_WEIGHTS: readonly number[] = [10, 6, 5, 2, 2];

/** HRRW constants: leaf size, starting level, probability of climbing one level, write rounding. */
export const HRRW_LEAF_BLOCKS = 8;
export const HRRW_START_LEVEL = 6;
export const HRRW_CLIMB_PROBABILITY = 0.44;
export const HRRW_WRITE_LEAF_ALIGN = 8;
export const HRRW_RANDOM_WRITE_PROBABILITY = 0.5;
export const HRRW_REPEAT_WRITE_PROBABILITY = 0.15;

export type Spc1Pattern =
  | { kind: 'uniform'; evenOnly: boolean }
  /** Region [start, start + size) as fractions of the ASU. */
  | { kind: 'hotspot'; start: number; size: number }
  /** Run starts uniform in [startLo, startHi) of the ASU, runs `runLength` of the ASU long, smix lengths. */
  | { kind: 'sequential'; startLo: number; startHi: number; runLength: number };

export interface Spc1StreamSpec {
  stream: number;
  asu: 1 | 2 | 3;
  /** Share of the BSU's 50 IOPS. */
  share: number;
  readFraction: number;
  pattern: Spc1Pattern;
}

/** The eight streams of one BSU (shares add up to 1). */
export const SPC1_STREAMS: readonly Spc1StreamSpec[] = [
  { stream: 1, asu: 1, share: 0.035, readFraction: 0.5, pattern: { kind: 'uniform', evenOnly: false } },
  { stream: 2, asu: 1, share: 0.281, readFraction: 0.5, pattern: { kind: 'hotspot', start: 0.15, size: 0.05 } },
  { stream: 3, asu: 1, share: 0.07, readFraction: 1, pattern: { kind: 'sequential', startLo: 0.2, startHi: 0.6, runLength: 0.1 } },
  { stream: 4, asu: 1, share: 0.21, readFraction: 0.5, pattern: { kind: 'hotspot', start: 0.7, size: 0.05 } },
  { stream: 5, asu: 2, share: 0.018, readFraction: 0.3, pattern: { kind: 'uniform', evenOnly: true } },
  { stream: 6, asu: 2, share: 0.07, readFraction: 0.3, pattern: { kind: 'hotspot', start: 0.47, size: 0.05 } },
  { stream: 7, asu: 2, share: 0.035, readFraction: 1, pattern: { kind: 'sequential', startLo: 0.2, startHi: 0.6, runLength: 0.1 } },
  { stream: 8, asu: 3, share: 0.281, readFraction: 0, pattern: { kind: 'sequential', startLo: 0, startHi: 0.7, runLength: 0.3 } },
];

export interface AsuSizes {
  asu1: number;
  asu2: number;
  asu3: number;
}

/**
 * pblio's sizing from the capacities available for each ASU (blocks): ASU1 = ASU2 = the smaller of
 * the two, ASU3 = floor(2/9 ASU1). When the ASU3 capacity is below 2/9 of that, ASU1 and ASU2
 * shrink to floor(4.5 x ASU3 capacity) so the 2/9 ratio and all three capacities still hold.
 */
export function deriveAsuSizes(cap1: number, cap2: number, cap3: number): AsuSizes {
  for (const [name, v] of [['asu1', cap1], ['asu2', cap2], ['asu3', cap3]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} capacity must be a block count, got ${v}`);
  }
  const a = Math.min(cap1, cap2, Math.floor(cap3 * 4.5));
  if (a < MIN_ASU_BLOCKS) {
    throw new RangeError(`ASUs too small: ASU1/ASU2 would be ${a} blocks, need >= ${MIN_ASU_BLOCKS}`);
  }
  return { asu1: a, asu2: a, asu3: Math.floor((a * 2) / 9) };
}

/** Sizes for one device of `totalBlocks` split 45 % / 45 % / 10 % (then sized as deriveAsuSizes). */
export function asuSizesForTotal(totalBlocks: number): AsuSizes {
  const part = Math.floor(totalBlocks * 0.45);
  return deriveAsuSizes(part, part, totalBlocks - 2 * part);
}

/** Scaling multiplier for an ASU1 of `asu1Blocks` (1 when it is large enough for the hot spots). */
export function scaleMultiplier(asu1Blocks: number): number {
  return asu1Blocks >= MIN_HOTSPOT_ASU_BLOCKS ? 1 : Math.ceil(MIN_HOTSPOT_ASU_BLOCKS / asu1Blocks);
}

export interface Spc1Options {
  /** Capacities available for the three ASUs in 4 KiB blocks; the sizes used follow deriveAsuSizes. */
  asu1Blocks: number;
  asu2Blocks: number;
  asu3Blocks: number;
  /** Business scaling units (integer >= 1): 50 IOPS and 8 streams each. */
  bsu: number;
  seed: number;
  /** true (default): requests carry `at`, 50 x bsu per second on average. false: no `at`. */
  paced?: boolean;
}

/** Where one hot-spot stream walks, in virtual blocks (divide by `multiplier` for device blocks). */
export interface HotSpotLayout {
  /** First block of the stream's tree (region start + the stream's leaf-aligned offset). */
  treeStart: number;
  /** Tree size: 2^levels leaves of HRRW_LEAF_BLOCKS blocks. */
  levels: number;
  regionStart: number;
  regionBlocks: number;
}

/** Generates the next virtual block of one stream instance; `len` is the transfer length. */
interface StreamState {
  address(read: boolean, len: number, rng: Rng): number;
}

class UniformState implements StreamState {
  constructor(private readonly blocks: number, private readonly evenOnly: boolean) {}

  address(_read: boolean, _len: number, rng: Rng): number {
    return this.evenOnly ? 2 * rng.int(Math.floor(this.blocks / 2)) : rng.int(this.blocks);
  }
}

/**
 * Hierarchical reuse random walk over a binary tree of 2^levels leaves of 8 blocks.
 * State: the current leaf; per leaf a read counter (next block offset to read, 0..7, starting at 0),
 * shared by every stream walking the same hot spot (spc1.c keeps one leaf-state array per hot
 * spot and generator context, indexed by the leaf's place in the region; pblio runs one context),
 * so a stream's read continues where any stream last read that leaf, and a write of "the block
 * last read" takes the block the last reader of the leaf read; a pending repeat write (block, or -1).
 * Per request: a write with a pending repeat re-writes that block and clears it. Otherwise the walk
 * climbs from level 6 while below the top, each step with probability 0.44, and jumps to a uniform
 * leaf of the 2^h-leaf group holding the current leaf (writes round that leaf down to a multiple
 * of 8). A read takes the leaf's counter block and advances the counter; a write takes a random
 * block of the leaf half the time, otherwise the block last read from it (counter - 1), and with
 * probability 0.15 marks that block to be written again by the stream's next write.
 */
class HotSpotState implements StreamState {
  private readonly leaves: number;
  private leaf: number;
  private repeatBlock = -1;
  /** Leaves of the region before the tree's first (the key of a leaf's counter is its leaf in the region). */
  private readonly leafBase: number;

  /** `counters`: read counters of the hot spot's leaves by leaf of the region, shared by its streams. */
  constructor(readonly layout: HotSpotLayout, rng: Rng, private readonly counters: Map<number, number>) {
    this.leaves = 2 ** layout.levels;
    this.leafBase = (layout.treeStart - layout.regionStart) / HRRW_LEAF_BLOCKS;
    this.leaf = Math.floor(rng.int(this.leaves * HRRW_LEAF_BLOCKS) / HRRW_LEAF_BLOCKS);
  }

  address(read: boolean, _len: number, rng: Rng): number {
    if (!read && this.repeatBlock >= 0) {
      const b = this.repeatBlock;
      this.repeatBlock = -1;
      return this.layout.treeStart + b;
    }
    const top = this.layout.levels;
    let h = Math.min(HRRW_START_LEVEL, top);
    while (h < top && rng.chance(HRRW_CLIMB_PROBABILITY)) h++;
    const group = 2 ** h;
    let leaf = this.leaf - (this.leaf % group) + rng.int(group);
    if (!read) leaf -= leaf % HRRW_WRITE_LEAF_ALIGN;
    this.leaf = leaf;
    const counter = this.counters.get(this.leafBase + leaf) ?? 0;
    let offset: number;
    if (read) {
      offset = counter;
      this.counters.set(this.leafBase + leaf, (counter + 1) & 7);
    } else {
      offset = rng.chance(HRRW_RANDOM_WRITE_PROBABILITY) ? rng.int(HRRW_LEAF_BLOCKS) : (counter + 7) & 7;
    }
    const b = leaf * HRRW_LEAF_BLOCKS + offset;
    if (!read && rng.chance(HRRW_REPEAT_WRITE_PROBABILITY)) this.repeatBlock = b;
    return this.layout.treeStart + b;
  }
}

/** Sequential runs: each request continues at the end of the previous one; a request that would
 *  pass the end of the run starts a new run at a uniform block of [startLo, startHi). */
class SequentialState implements StreamState {
  private pos = 0;
  private end = -1;

  constructor(private readonly startLo: number, private readonly startHi: number, private readonly runBlocks: number) {}

  address(_read: boolean, len: number, rng: Rng): number {
    if (this.pos + len > this.end) {
      this.pos = rng.range(this.startLo, this.startHi);
      this.end = this.pos + this.runBlocks;
    }
    const b = this.pos;
    this.pos += len;
    return b;
  }
}

export class Spc1Workload implements Workload {
  readonly blockSize = SPC1_BLOCK_SIZE;
  readonly paced: boolean;
  readonly bsu: number;
  /** Device sizes of the ASUs in blocks (every request lies inside its ASU). */
  readonly sizes: AsuSizes;
  /** Virtual-to-device address divisor (1 unless ASU1 is below MIN_HOTSPOT_ASU_BLOCKS). */
  readonly multiplier: number;
  /** Mean request rate in IOPS (50 x bsu). */
  readonly iops: number;
  private readonly rng: Rng;
  private readonly timeRng: Rng;
  private readonly streamTable: Float64Array;
  private readonly smixTable: Float64Array;
  /** Stream instances, index bsu * 8 + (stream - 1). */
  private readonly states: StreamState[] = [];
  private readonly deviceSize: [number, number, number];
  /** Per hot-spot stream kind: its leaves' read counters, shared by the BSUs' streams. */
  private readonly leafCounters = new Map<number, Map<number, number>>();
  private clock = 0;

  constructor(opts: Spc1Options) {
    if (!Number.isInteger(opts.bsu) || opts.bsu < 1) throw new RangeError(`bsu must be an integer >= 1, got ${opts.bsu}`);
    this.bsu = opts.bsu;
    this.paced = opts.paced ?? true;
    this.sizes = deriveAsuSizes(opts.asu1Blocks, opts.asu2Blocks, opts.asu3Blocks);
    this.multiplier = scaleMultiplier(this.sizes.asu1);
    this.iops = BSU_IOPS * this.bsu;
    this.rng = new Rng(opts.seed, 1);
    this.timeRng = new Rng(opts.seed, 2);
    this.streamTable = cumulativeWeights(SPC1_STREAMS.map((s) => s.share));
    this.smixTable = cumulativeWeights(SMIX_WEIGHTS);
    this.deviceSize = [this.sizes.asu1, this.sizes.asu2, this.sizes.asu3];
    for (let b = 0; b < this.bsu; b++) {
      for (const spec of SPC1_STREAMS) this.states.push(this.makeState(spec));
    }
  }

  /** Virtual size of an ASU (device size x multiplier). */
  virtualBlocks(asu: 1 | 2 | 3): number {
    return this.deviceSize[asu - 1] * this.multiplier;
  }

  /** The walk layout of hot-spot stream `stream` (2, 4 or 6) of BSU `bsu`. */
  hotSpotLayout(bsu: number, stream: number): HotSpotLayout {
    const state = this.states[bsu * SPC1_STREAMS.length + stream - 1];
    if (!(state instanceof HotSpotState)) throw new RangeError(`stream ${stream} of BSU ${bsu} is not a hot-spot stream`);
    return { ...state.layout };
  }

  next(): BenchRequest {
    const kind = this.rng.pick(this.streamTable);
    const bsu = this.rng.int(this.bsu);
    const spec = SPC1_STREAMS[kind];
    const read = spec.readFraction >= 1 || (spec.readFraction > 0 && this.rng.chance(spec.readFraction));
    const blocks = spec.pattern.kind === 'sequential' ? SMIX_LENGTHS[this.rng.pick(this.smixTable)] : 1;
    const virtual = this.states[bsu * SPC1_STREAMS.length + kind].address(read, blocks, this.rng);
    const size = this.deviceSize[spec.asu - 1];
    let block = Math.floor(virtual / this.multiplier);
    if (block + blocks > size) block = size - blocks;
    if (spec.pattern.kind === 'uniform' && spec.pattern.evenOnly) block -= block % 2;
    const req: BenchRequest = {
      asu: spec.asu,
      stream: spec.stream,
      bsu,
      read,
      block,
      blocks,
      bypassCache: spec.asu === 3 && !read,
    };
    if (this.paced) {
      this.clock += this.timeRng.exponential(1 / this.iops);
      req.at = this.clock;
    }
    return req;
  }

  private makeState(spec: Spc1StreamSpec): StreamState {
    const v = this.virtualBlocks(spec.asu);
    const p = spec.pattern;
    switch (p.kind) {
      case 'uniform':
        return new UniformState(v, p.evenOnly);
      case 'sequential':
        return new SequentialState(Math.floor(v * p.startLo), Math.floor(v * p.startHi), Math.floor(v * p.runLength));
      case 'hotspot': {
        const regionStart = Math.floor(v * p.start);
        const regionBlocks = Math.floor(v * p.size);
        const fit = Math.floor(regionBlocks / HRRW_LEAF_BLOCKS);
        let levels = 0;
        while (2 ** (levels + 1) <= fit) levels++;
        const slackLeaves = fit - 2 ** levels;
        const treeStart = regionStart + this.rng.int(slackLeaves + 1) * HRRW_LEAF_BLOCKS;
        let counters = this.leafCounters.get(spec.stream);
        if (!counters) {
          counters = new Map();
          this.leafCounters.set(spec.stream, counters);
        }
        return new HotSpotState({ treeStart, levels, regionStart, regionBlocks }, this.rng, counters);
      }
    }
  }
}
