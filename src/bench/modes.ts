/**
 * fio-like single-range workloads with the BenchRequest shape. Addresses are in 512-byte sectors
 * (blockSize 512) relative to the target's start; every request is `bs` bytes at offset + k x bs
 * (k a unit index in [0, floor(size / bs))), like fio with blockalign = bs.
 *
 * - randread / randwrite / randrw: uniform units; randrw reads with probability rwmixread %.
 * - read / write: sequential units from the start of the range, wrapping at its end.
 * - zipf: unit ranks drawn from Zipf(theta) (rank 1 hottest); ranks are scattered over the range by
 *   the bijection rank -> (a x rank + c) mod units (a coprime with units, c seeded) unless
 *   `scramble` is false; reads with probability rwmixread %.
 * Pacing: with `iops`, request i carries at = i / iops (evenly spaced, like fio's rate_iops);
 * without it the workload is unpaced.
 */
import { Rng, ZipfSampler } from './rng';
import type { BenchRequest, Workload } from './workload';
import { SECTOR_SIZE } from '../virtio-blk/spec';

export const MODE_NAMES = ['randread', 'randwrite', 'randrw', 'read', 'write', 'zipf'] as const;
export type ModeName = (typeof MODE_NAMES)[number];
/** Zipf unit counts are limited so the scatter multiplication stays exact in doubles. */
export const MAX_ZIPF_UNITS = 2 ** 32;

export interface ModeOptions {
  mode: ModeName;
  /** Transfer size in bytes, a multiple of 512. */
  bs: number;
  /** Length of the range in bytes (at least bs). */
  size: number;
  /** Start of the range in bytes, a multiple of 512 (default 0). */
  offset?: number;
  seed: number;
  /** Percentage of reads for randrw (default 50) and zipf (default 100). */
  rwmixread?: number;
  /** Zipf exponent, > 0 (default 1.2). */
  theta?: number;
  /** Scatter zipf ranks over the range (default true); false keeps rank 1 at the first unit. */
  scramble?: boolean;
  /** Paced rate; absent = unpaced. */
  iops?: number;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

export class ModeWorkload implements Workload {
  readonly blockSize = SECTOR_SIZE;
  readonly paced: boolean;
  readonly mode: ModeName;
  /** Number of bs-sized units in the range. */
  readonly units: number;
  /** Read probability in [0, 1]. */
  readonly readFraction: number;
  private readonly rng: Rng;
  private readonly firstSector: number;
  private readonly sectorsPerIo: number;
  private readonly zipf: ZipfSampler | null = null;
  private readonly scatterA: number = 1;
  private readonly scatterC: number = 0;
  private readonly iops: number;
  private seqUnit = 0;
  private issued = 0;

  constructor(opts: ModeOptions) {
    if (!(MODE_NAMES as readonly string[]).includes(opts.mode)) throw new RangeError(`unknown mode ${opts.mode}`);
    if (!Number.isSafeInteger(opts.bs) || opts.bs < SECTOR_SIZE || opts.bs % SECTOR_SIZE !== 0) {
      throw new RangeError(`bs must be a positive multiple of ${SECTOR_SIZE}, got ${opts.bs}`);
    }
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % SECTOR_SIZE !== 0) {
      throw new RangeError(`offset must be a non-negative multiple of ${SECTOR_SIZE}, got ${offset}`);
    }
    if (!Number.isSafeInteger(opts.size) || opts.size < opts.bs) {
      throw new RangeError(`size must be at least bs (${opts.bs}), got ${opts.size}`);
    }
    if (opts.iops !== undefined && !(opts.iops > 0)) throw new RangeError(`iops must be > 0, got ${opts.iops}`);
    this.mode = opts.mode;
    this.rng = new Rng(opts.seed, 3);
    this.firstSector = offset / SECTOR_SIZE;
    this.sectorsPerIo = opts.bs / SECTOR_SIZE;
    this.units = Math.floor(opts.size / opts.bs);
    this.paced = opts.iops !== undefined;
    this.iops = opts.iops ?? 0;

    const mix = opts.rwmixread ?? (opts.mode === 'zipf' ? 100 : 50);
    if (!(mix >= 0 && mix <= 100)) throw new RangeError(`rwmixread must be in [0, 100], got ${mix}`);
    switch (opts.mode) {
      case 'randread':
      case 'read':
        this.readFraction = 1;
        break;
      case 'randwrite':
      case 'write':
        this.readFraction = 0;
        break;
      default:
        this.readFraction = mix / 100;
    }

    if (opts.mode === 'zipf') {
      if (this.units > MAX_ZIPF_UNITS) throw new RangeError(`zipf range too large: ${this.units} units > ${MAX_ZIPF_UNITS}`);
      this.zipf = new ZipfSampler(this.units, opts.theta ?? 1.2);
      if (opts.scramble ?? true) {
        // A multiplier near 2^20 x golden ratio: spreads neighbouring ranks far apart, a x rank < 2^53.
        let a = 647_031;
        while (gcd(a, this.units) !== 1) a++;
        this.scatterA = a % this.units || 1;
        this.scatterC = this.rng.int(this.units);
      }
    }
  }

  /** Unit index of a zipf rank (1-based) after scattering. */
  unitOfRank(rank: number): number {
    return (this.scatterA * (rank - 1) + this.scatterC) % this.units;
  }

  next(): BenchRequest {
    const read = this.readFraction >= 1 || (this.readFraction > 0 && this.rng.chance(this.readFraction));
    let unit: number;
    if (this.mode === 'read' || this.mode === 'write') {
      unit = this.seqUnit;
      this.seqUnit = unit + 1 === this.units ? 0 : unit + 1;
    } else if (this.zipf !== null) {
      unit = this.unitOfRank(this.zipf.sample(this.rng));
    } else {
      unit = this.rng.int(this.units);
    }
    const req: BenchRequest = {
      asu: 1,
      stream: 0,
      bsu: 0,
      read,
      block: this.firstSector + unit * this.sectorsPerIo,
      blocks: this.sectorsPerIo,
      bypassCache: false,
    };
    if (this.paced) req.at = this.issued / this.iops;
    this.issued++;
    return req;
  }
}
