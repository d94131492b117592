/**
 * The block ranges of one volume's operations in flight, for CachedStore's race rules: a write
 * (or discard, write-zeroes) poisons every overlapping operation in flight, so a read miss
 * started before it never inserts the old data; an operation that starts while an overlapping
 * write is in flight is poisoned itself.
 *
 * Small ranges (at most SMALL_RANGE blocks: guest reads and writes) are indexed per block, so
 * registering one costs a few map operations however many operations are in flight (read
 * misses stay registered until their insertion, thousands under load). Larger ranges (big
 * discards) go to a list that every registration scans; registering a large range scans the
 * small ones.
 */
export interface Op {
  first: number;
  /** Inclusive. */
  last: number;
  write: boolean;
  poisoned: boolean;
}

export const SMALL_RANGE = 256;

export class InFlightRanges {
  private readonly byBlock = new Map<number, Op[]>();
  private readonly small = new Set<Op>();
  private readonly large = new Set<Op>();

  get size(): number {
    return this.small.size + this.large.size;
  }

  /** Registers [first, last], applying the poisoning rules against everything in flight. */
  begin(first: number, last: number, write: boolean): Op {
    const op: Op = { first, last, write, poisoned: false };
    const meet = (o: Op): void => {
      if (o.first > last || o.last < first) return;
      if (write) o.poisoned = true;
      if (o.write) op.poisoned = true;
    };
    for (const o of this.large) meet(o);
    if (last - first < SMALL_RANGE) {
      for (let b = first; b <= last; b++) {
        const list = this.byBlock.get(b);
        if (list !== undefined) for (const o of list) meet(o);
      }
      for (let b = first; b <= last; b++) {
        const list = this.byBlock.get(b);
        if (list === undefined) this.byBlock.set(b, [op]);
        else list.push(op);
      }
      this.small.add(op);
    } else {
      for (const o of this.small) meet(o);
      this.large.add(op);
    }
    return op;
  }

  /** Poisons every registered operation (the backing store's data changed under all of them). */
  poisonAll(): void {
    for (const o of this.small) o.poisoned = true;
    for (const o of this.large) o.poisoned = true;
  }

  end(op: Op): void {
    if (this.large.delete(op)) return;
    if (!this.small.delete(op)) return;
    for (let b = op.first; b <= op.last; b++) {
      const list = this.byBlock.get(b) as Op[];
      if (list.length === 1) this.byBlock.delete(b);
      else list.splice(list.indexOf(op), 1);
    }
  }
}

/**
 * Block ranges taken in FIFO order: a taker waits until every overlapping range taken before it
 * is released (write-back writes and discards of one volume: a partial-block write merges with
 * the block's current data, so overlapping ones must not interleave; and, while a volume out of
 * write-back still holds dirty blocks, its other writes: cached-store.ts, mode switches).
 */
export class RangeLocks {
  private readonly held = new Set<{ first: number; last: number; released: Promise<void> }>();

  /** No range is held or waited for. */
  get idle(): boolean {
    return this.held.size === 0;
  }

  /** Resolves once every range held or waited for now is released. */
  async released(): Promise<void> {
    await Promise.all([...this.held].map((h) => h.released));
  }

  /** Takes [first, last] (inclusive) once the overlapping earlier takers released; returns the release. */
  async take(first: number, last: number): Promise<() => void> {
    const before: Promise<void>[] = [];
    for (const h of this.held) if (h.first <= last && h.last >= first) before.push(h.released);
    let release!: () => void;
    const entry = { first, last, released: new Promise<void>((r) => (release = r)) };
    this.held.add(entry);
    if (before.length > 0) await Promise.all(before);
    return () => {
      this.held.delete(entry);
      release();
    };
  }
}
