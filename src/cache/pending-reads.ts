/**
 * Backing-store reads in flight, by block, so that a block missed by several readers at the same
 * moment is read once: a read miss (or a read-ahead) registers the blocks it is reading; another
 * miss of one of them waits for that read and takes its data instead of reading the block
 * again, and a read-ahead skips blocks being read.
 *
 * Two kinds of registry, the same rules:
 *   - one per volume (CachedStore) for the blocks keyed by the volume: a demand miss joins its
 *     own volume's read-ahead (or another miss) in flight;
 *   - one per parent and cache (parentReads()) for blocks keyed by a clone's parent
 *     (shared-keys.ts), shared by the parent's clones (a boot storm's clones miss the same
 *     blocks at the same moment).
 *
 * No stale data: a read's data is handed out only when its operation was not poisoned when the
 * read completed (no write-like operation overlapping it had started: CachedStore's in-flight
 * ranges), otherwise null and the waiter reads the block itself. And an entry must never hand
 * out data older than a write that started before the waiter: CachedStore forgets the entries
 * of a volume's blocks when a write-like operation on them starts (forget(), clear()), so a
 * read starting after that write cannot find them. (A parent's blocks are never written: a
 * clone's write makes its blocks keyed by the volume first.) Entries stay until the reader's
 * insertion is done, so a block is found either here or in the cache.
 */
export type BlockData = Promise<Uint8Array | null>;

export class PendingReads {
  private readonly pending = new Map<number, BlockData>();

  /** The data of block b being read, if any. */
  get(b: number): BlockData | undefined {
    return this.pending.get(b);
  }

  /** Blocks first .. first + n - 1 are being read; `data` resolves with their n blocks (or null). */
  start(first: number, n: number, data: BlockData, bs: number): BlockData[] {
    const mine: BlockData[] = [];
    for (let j = 0; j < n; j++) {
      const p = data.then((d) => (d === null ? null : d.subarray(j * bs, (j + 1) * bs)));
      this.pending.set(first + j, p);
      mine.push(p);
    }
    return mine;
  }

  /** Forgets the entries start() returned (those another read replaced meanwhile stay). */
  end(first: number, mine: readonly BlockData[]): void {
    mine.forEach((p, j) => {
      if (this.pending.get(first + j) === p) this.pending.delete(first + j);
    });
  }

  /** Forgets every entry of blocks first..last (inclusive): a write of them started. */
  forget(first: number, last: number): void {
    if (this.pending.size === 0) return;
    if (last - first + 1 > this.pending.size) {
      for (const b of this.pending.keys()) if (b >= first && b <= last) this.pending.delete(b);
    } else {
      for (let b = first; b <= last; b++) this.pending.delete(b);
    }
  }

  /** Forgets every entry. */
  clear(): void {
    this.pending.clear();
  }
}

const registry = new WeakMap<object, Map<number, PendingReads>>();

/** The PendingReads of parent id `parent` in `cache` (shared by the parent's clones). */
export function parentReads(cache: object, parent: number): PendingReads {
  let byParent = registry.get(cache);
  if (byParent === undefined) registry.set(cache, (byParent = new Map()));
  let r = byParent.get(parent);
  if (r === undefined) byParent.set(parent, (r = new PendingReads()));
  return r;
}
