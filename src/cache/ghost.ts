/**
 * Ghost history: compact fingerprints of keys recently evicted from the cache (or invalidated
 * by a write), so that a key coming back soon is recognised as reused (ARC's B1/B2, CLOCK-Pro's
 * non-resident cold pages) without keeping its key, and of which kind it was when it left:
 *
 *   GhostKind.Once        evicted, never hit while cached (ARC's B1: a ghost hit means the
 *                         recency side was too short)
 *   GhostKind.Reused      evicted after at least one hit (ARC's B2: the frequency side was too
 *                         short)
 *   GhostKind.Invalidated dropped by a write (its re-insertion is the write's own, not a miss
 *                         the policy caused: no adaptation)
 *   GhostKind.Refused     a read miss's first touch that admission did not insert (never
 *                         cached: a ghost hit means admission was too strict)
 *
 * Memory layout: one Uint8Array of `size` entries (1 byte per cache block when size = slots).
 * A key hashes to one entry (its home) and a fingerprint of FINGERPRINTS (63) values; the
 * entry holds 1 + KINDS * fingerprint + kind (never 0, 0 = empty; at most 252). Adding a key
 * overwrites whatever the entry held, so the history forgets old keys at the rate new ones are
 * added (about the last `size` evictions and refusals are remembered). A hit (take) clears the
 * entry; has() only looks. False positives: a foreign key with the same home, fingerprint and
 * any kind, about (fill / 63) per probe. `count[kind]` is the number of entries of each kind
 * (ARC's |B1| and |B2|, and the refused ones).
 */
import { hashKey } from './address-map';

export enum GhostKind {
  Once = 0,
  Reused = 1,
  Invalidated = 2,
  Refused = 3,
}
const KINDS = 4;
const FINGERPRINTS = 63;

export class GhostHistory {
  readonly fp: Uint8Array;
  /** Entries per GhostKind. */
  readonly count = new Float64Array(KINDS);
  hits = 0;

  constructor(size: number) {
    this.fp = new Uint8Array(Math.max(1, size));
  }

  private static entry(h: number, kind: GhostKind): number {
    return 1 + KINDS * ((Math.imul(h, 0x9e3779b1) >>> 24) % FINGERPRINTS) + kind;
  }

  private static hash(lo: number, hi: number): number {
    return hashKey(lo, hi ^ 0x5bd1e995);
  }

  /** Remembers a key that left the cache (packed halves, as in the BDA). */
  add(lo: number, hi: number, kind: GhostKind): void {
    const h = GhostHistory.hash(lo, hi);
    const p = (h >>> 0) % this.fp.length;
    const old = this.fp[p];
    if (old !== 0) this.count[(old - 1) % KINDS]--;
    this.fp[p] = GhostHistory.entry(h, kind);
    this.count[kind]++;
  }

  /** True when the key is remembered (any kind; nothing changes). */
  has(lo: number, hi: number): boolean {
    const h = GhostHistory.hash(lo, hi);
    const e = this.fp[(h >>> 0) % this.fp.length];
    return e !== 0 && e === GhostHistory.entry(h, (e - 1) % KINDS);
  }

  /** The kind the key left with (and forgets it), or -1 when it is not remembered. */
  take(lo: number, hi: number): GhostKind | -1 {
    const h = GhostHistory.hash(lo, hi);
    const p = (h >>> 0) % this.fp.length;
    const e = this.fp[p];
    if (e === 0) return -1;
    const kind = (e - 1) % KINDS;
    if (e !== GhostHistory.entry(h, kind)) return -1;
    this.fp[p] = 0;
    this.count[kind]--;
    this.hits++;
    return kind;
  }

  get byteLength(): number {
    return this.fp.byteLength;
  }
}
