/**
 * Ghost history: compact fingerprints of keys recently evicted from the cache, so that a key
 * coming back soon after its eviction is recognised as reused (ARC's B1/B2, CLOCK-Pro's
 * non-resident cold pages) without keeping its key.
 *
 * Memory layout: one Uint8Array of `size` entries (1 byte per cache block when size = slots).
 * A key hashes to one entry (its home) and an 8-bit fingerprint (never 0, 0 = empty); adding a
 * key overwrites whatever the entry held, so the history forgets old keys at the rate new ones
 * are added (about the last `size` evictions are remembered). A hit clears the entry. False
 * positives: a foreign key with the same home and fingerprint, about (fill / 255) per probe.
 */
import { hashKey } from './address-map';

export class GhostHistory {
  readonly fp: Uint8Array;
  hits = 0;

  constructor(size: number) {
    this.fp = new Uint8Array(Math.max(1, size));
  }

  private static fingerprint(h: number): number {
    return ((Math.imul(h, 0x9e3779b1) >>> 24) % 255) + 1;
  }

  /** Remembers an evicted key (packed halves, as in the BDA). */
  add(lo: number, hi: number): void {
    const h = hashKey(lo, hi ^ 0x5bd1e995);
    this.fp[(h >>> 0) % this.fp.length] = GhostHistory.fingerprint(h);
  }

  /** True (and forgets it) when the key was evicted recently. */
  take(lo: number, hi: number): boolean {
    const h = hashKey(lo, hi ^ 0x5bd1e995);
    const p = (h >>> 0) % this.fp.length;
    if (this.fp[p] !== GhostHistory.fingerprint(h)) return false;
    this.fp[p] = 0;
    this.hits++;
    return true;
  }

  get byteLength(): number {
    return this.fp.byteLength;
  }
}
