/**
 * Destaging of one write-back volume: its dirty blocks (cache-map.ts `dirty`) are written to the
 * backing store in the background, in address order (an elevator: each round continues after
 * the last block of the previous one, wrapping), coalesced into runs of consecutive blocks.
 *
 * A round: pick up to ROUND_BLOCKS dirty blocks from the cursor on, watch their slots
 * (Cache.watchDestage: a slot superseded or discarded meanwhile stops being watched), wait for
 * a log commit (Cache.commit: a dirty block picked while its write still waits for the commit
 * that acknowledges it is never written back before that commit, so the backing store never
 * holds data a crash would roll back in the cache: recovery.ts 9.), read their data from the
 * cache (a dirty block unreadable there is logged and left dirty; a run that cannot be read
 * whole is read block by block, so only the unreadable blocks stay dirty), make the
 * dropped entries of their keys durably invalid (Cache.killDropped: a destage is a backing write,
 * recovery.ts 9.), write the runs, flush the backing store, then mark the still-watched slots
 * clean (Cache.markClean: header rewrites batched over the rounds of up to CLEAN_MARK_DELAY_MS, or until the loop
 * ends, not waited for). Rounds never overlap, so two backing writes of one
 * block are never in flight together and a later round's data lands last.
 *
 * Pace (per volume, in blocks, from the volume's dirty limit L):
 *   - writes wait (room()) while the volume holds L dirty blocks or the cache holds
 *     MAX_DIRTY_FRACTION of its slots dirty, at most `timeoutMs` (then ETIMEDOUT): the hand
 *     always finds a slot that is not dirty;
 *   - destaging is PRESSED at or above the high watermark (and until the low one), or while a
 *     drain() or room() waits: rounds run back to back, each with up to WRITES_IN_FLIGHT
 *     backing writes in flight;
 *   - otherwise it yields to guest I/O: a round starts once the volume has been quiet for
 *     QUIET_MS (no guest request started, none in flight; guestIdle(), called by the volume,
 *     ends a wait for the guest), or after ROUND_WAIT_MAX_MS at the latest (a trickle of one
 *     round a second under a steady load, so a block rewritten while dirty is written back
 *     once: Open CAS and dm-writecache likewise write back below their high watermark when
 *     idle). QUIET_MS is an idle guest, not a gap between two requests: at 10 ms, SPC-1's
 *     volumes (150-750 requests/s each) were "quiet" ~20 times a second, so rounds of a few
 *     blocks ran all the time, each block written back after nearly every write of it, and
 *     the next write of a block just destaged replaced a clean copy (a header rewrite) instead
 *     of a dirty one; and while guest requests are in flight a round issues no further backing write
 *     until they are done (or YIELD_MAX_MS passed: then one more), so a guest miss queues
 *     behind at most the writes already in flight, never behind the rest of the round;
 *   - destageRange() rounds (a guest request waits for them) never yield, and while one waits
 *     for the round in flight that round is pressed too.
 * A round that fails (backing store down) is retried after a backoff doubling from
 * RETRY_MIN_MS to RETRY_MAX_MS; writes keep going into the log until the limit, then wait. A
 * round that marked nothing clean because blocks it picked were unreadable on the cache device
 * backs off the same way (their data is nowhere else: they stay dirty, and a pressed loop would
 * otherwise start the next round over them at once, forever); a round that marked blocks clean
 * resets the backoff. Unreadable blocks are logged once per streak of rounds that meet some
 * (the first round of it), as backing failures are once per failing streak.
 */
import type { BackingStore } from '../backing/backing-store';
import { VhostError } from '../native/errors';
import type { Logger } from '../util/logger';
import type { Cache } from './cache';

/** Dirty blocks picked per round. */
export const ROUND_BLOCKS = 256;
/** Longest backing write of a round, in blocks. */
export const RUN_BLOCKS = 64;
/** Share of the cache's slots that may be dirty at once (all volumes). */
export const MAX_DIRTY_FRACTION = 0.75;
/** Default dirty limit of a volume: this share of its cap (or of the cache). */
export const DEFAULT_DIRTY_LIMIT = 0.5;
/** Default watermarks, as shares of the dirty limit. */
export const DEFAULT_HIGH_WATERMARK = 0.5;
export const DEFAULT_LOW_WATERMARK = 0.25;
/** Backing writes of one round in flight at once. */
export const WRITES_IN_FLIGHT = 32;
/** Longest a yielding destage waits for the guest's requests to finish (starvation guard). */
export const YIELD_MAX_MS = 50;
/** A volume is quiet (a round that is not pressed may start) after this long without a request (see the file comment). */
export const QUIET_MS = 100;
/** Longest a round that is not pressed waits for a quiet volume (a trickle under steady load). */
const ROUND_WAIT_MAX_MS = 1000;
const RETRY_MIN_MS = 10;
const RETRY_MAX_MS = 1000;

export interface DestageOptions {
  cache: Cache;
  volume: number;
  backing: BackingStore;
  /** Dirty blocks of this volume beyond which writes wait. */
  limit: number;
  /** Watermarks in blocks (low <= high <= limit). */
  high: number;
  low: number;
  /** How long room() and drain() wait through failures before they reject. */
  timeoutMs: number;
  /** Guest requests of the volume in flight (the volume calls guestIdle() when they end). */
  busy: () => boolean;
  /** Guest requests of the volume started so far (a counter). */
  started: () => number;
  /** Longest wait for the guest to go idle (default YIELD_MAX_MS). */
  yieldMaxMs?: number;
  /** A round that is not pressed waits for this long a quiet volume, at most for roundWaitMaxMs (defaults QUIET_MS, ROUND_WAIT_MAX_MS). */
  quietMs?: number;
  roundWaitMaxMs?: number;
  logger: Logger;
}

/** What a round did: blocks marked clean, blocks unreadable on the cache device. */
interface RoundResult {
  marked: number;
  unreadable: number;
}

interface Waiter {
  need: number;
  resolve: () => void;
}

export class Destager {
  /** Blocks written back and marked clean, rounds run, rounds failed. */
  destaged = 0;
  rounds = 0;
  errors = 0;
  private readonly o: DestageOptions;
  private cursor = 0;
  private running: Promise<void> | null = null;
  /** The round in flight (rounds never overlap). */
  private round: Promise<void> = Promise.resolve();
  private urgent = false;
  private drains = 0;
  /** destageRange() calls waiting for the round in flight. */
  private rangeWaits = 0;
  private readonly waiters = new Set<Waiter>();
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  /** Ends the current wait of the loop, whatever it is (close()). */
  private sleepDone: (() => void) | null = null;
  /** When rounds started failing (0: the last one succeeded). */
  private failingSince = 0;
  private lastError: Error | null = null;
  /** Runs of the last round that could not be read from the cache. */
  private unreadable = 0;
  /** Some run of the last round was unreadable (its streak was logged). */
  private unreadableStreak = false;
  /** Called at the end of the next round (drain()). */
  private roundEnds: (() => void)[] = [];
  /** Waits that end when the guest goes idle, something presses, or the destager closes. */
  private readonly idleWaits = new Set<() => void>();
  /**
   * The data buffer of the rounds (ROUND_BLOCKS blocks at most), kept while the loop runs and
   * dropped when it ends: allocating each run's buffer cost about 10 µs of CPU per
   * destaged block (profiled). Rounds never overlap and a round's backing writes are all done (or their
   * connection gone) when it ends, so the next round may overwrite it.
   */
  private buf: Uint8Array | null = null;
  /** Backing writes of rounds in flight now, and the most seen at once. */
  writesInFlight = 0;
  maxWritesInFlight = 0;

  constructor(o: DestageOptions) {
    this.o = o;
  }

  get dirty(): number {
    return this.o.cache.map.dirtyBlocks(this.o.volume);
  }

  /** Rounds run back to back and never yield (see the file comment). */
  private get pressed(): boolean {
    return this.urgent || this.drains > 0 || this.waiters.size > 0 || this.rangeWaits > 0;
  }

  /** The volume has no guest request in flight any more: a yielding destage goes on. */
  guestIdle(): void {
    if (this.idleWaits.size === 0) return;
    for (const end of [...this.idleWaits]) end();
  }

  /** Resolves when guestIdle(), poke() or close() is called, or after `ms`. */
  private untilIdle(ms = this.o.yieldMaxMs ?? YIELD_MAX_MS): Promise<void> {
    return new Promise<void>((resolve) => {
      const end = (): void => {
        clearTimeout(timer);
        this.idleWaits.delete(end);
        resolve();
      };
      const timer = setTimeout(end, ms);
      timer.unref();
      this.idleWaits.add(end);
    });
  }

  /** Starts the background loop if dirty blocks wait and it is not running. */
  kick(): void {
    if (this.running !== null || this.closed || this.dirty === 0) return;
    this.running = this.loop().finally(() => {
      this.running = null;
      this.buf = null;
      this.o.cache.writeCleanMarks();
      if (this.dirty > 0 && !this.closed && this.pressed) this.kick();
    });
  }

  /**
   * Resolves when `n` more dirty blocks fit (the volume's limit and the cache's); the volume
   * holding none always fits. Rejects with ETIMEDOUT after timeoutMs.
   */
  room(n: number): Promise<void> {
    if (this.fits(n)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { need: n, resolve: () => undefined };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new VhostError(`cache: write-back limit reached and the backing store did not take the dirty blocks within ${this.o.timeoutMs} ms`, 'ETIMEDOUT'));
      }, this.o.timeoutMs);
      w.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.add(w);
      this.urgent = true;
      this.poke();
    });
  }

  private fits(n: number): boolean {
    const map = this.o.cache.map;
    const dirty = this.dirty;
    if (dirty === 0) return true;
    return dirty + n <= this.o.limit && map.dirtyTotal + n <= MAX_DIRTY_FRACTION * map.slots;
  }

  private release(): void {
    for (const w of this.waiters) {
      if (!this.fits(w.need)) continue;
      this.waiters.delete(w);
      w.resolve();
    }
  }

  /**
   * Writes back every block dirty now or made dirty before it ends (the flush command, a mode
   * switch, a removal, --flush-on-stop). Rejects when rounds kept failing for timeoutMs since it
   * started (failures before it, while nobody waited, do not count: it tries again), or (EIO)
   * after the next round, when it marked nothing clean and met blocks unreadable on the cache
   * device (a loop backing off after such rounds starts it at the end of its backoff).
   */
  async drain(): Promise<void> {
    this.drains++;
    const started = performance.now();
    try {
      while (this.dirty > 0) {
        if (this.closed) throw new VhostError('cache: volume closed while destaging', 'ESHUTDOWN');
        if (this.failingSince > 0 && performance.now() - Math.max(this.failingSince, started) > this.o.timeoutMs) {
          throw new VhostError(`cache: destaging failed for ${this.o.timeoutMs} ms: ${this.lastError?.message ?? ''}`, 'EIO');
        }
        const ended = new Promise<void>((r) => this.roundEnds.push(r));
        const before = this.destaged;
        this.poke();
        await ended;
        if (this.destaged === before && this.failingSince === 0 && this.unreadable > 0) {
          throw new VhostError(`cache: ${this.dirty} write-back blocks could not be destaged: unreadable on the cache device`, 'EIO');
        }
      }
    } finally {
      this.drains--;
    }
  }

  /** Resolves when no round is in flight. */
  async idle(): Promise<void> {
    await this.round;
  }

  /**
   * Once no round is in flight, picks up to ROUND_BLOCKS dirty blocks of [first, last] and
   * starts a round over them (`yielding`: see runRound), the check and the start in one
   * microtask, so rounds (the loop's and destageRange's) never overlap. Resolves with the round
   * (`done`: the blocks it marked clean, the runs it could not read) and how many it picked;
   * null when none was dirty, or when `loop` and the destager was closed. (Returning to a
   * caller that starts the round is a microtask too late: two callers woken by the end of one
   * round both found it over and started two, writing a block twice, the later write after a
   * discard that destageRange had cleared the way for.)
   */
  private async startRound(first: number, last: number, yielding: boolean, loop: boolean): Promise<{ picked: number; done: Promise<RoundResult> } | null> {
    for (;;) {
      const r = this.round;
      await r;
      if (this.round === r) break;
    }
    if (loop && this.closed) return null;
    const picked = this.pick(first, last);
    if (picked.length === 0) return null;
    const done = this.runRound(picked, yielding);
    this.round = done.then(
      () => undefined,
      () => undefined,
    );
    return { picked: picked.length, done };
  }

  /**
   * Writes back the dirty blocks of [first, last] now (before a discard of them, or a write
   * outside write-back); rejects on failure, or (EIO) when some are unreadable on the cache
   * device. Waits for nothing when none of them is dirty.
   */
  async destageRange(first: number, last: number): Promise<void> {
    while (this.pick(first, last).length > 0) {
      this.rangeWaits++;
      // The round in flight stops yielding.
      this.guestIdle();
      let round: { picked: number; done: Promise<RoundResult> } | null;
      try {
        round = await this.startRound(first, last, false, false);
      } finally {
        this.rangeWaits--;
      }
      if (round === null) return;
      if ((await round.done).marked === 0) {
        throw new VhostError(`cache: ${round.picked} write-back blocks could not be destaged: unreadable on the cache device`, 'EIO');
      }
    }
  }

  /** Stops the loop (rounds in flight finish); room() waiters reject. */
  async close(): Promise<void> {
    this.closed = true;
    this.sleepDone?.();
    this.guestIdle();
    await this.running;
    await this.round;
  }

  /** Destaging is pressed now: a yielding wait ends at once, the loop runs. */
  private poke(): void {
    this.guestIdle();
    this.kick();
  }

  /** Waits ms (a backoff; close() ends it). */
  private backoff(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        if (this.timer !== null) clearTimeout(this.timer);
        this.timer = null;
        this.sleepDone = null;
        resolve();
      };
      this.sleepDone = done;
      this.timer = setTimeout(done, ms);
      this.timer.unref();
    });
  }

  private async loop(): Promise<void> {
    let backoff = RETRY_MIN_MS;
    while (!this.closed && this.dirty > 0) {
      const dirty = this.dirty;
      if (dirty >= this.o.high) this.urgent = true;
      else if (dirty <= this.o.low) this.urgent = false;
      if (!this.pressed) {
        await this.untilQuiet();
        if (this.closed) break;
      }
      const round = await this.startRound(0, Infinity, true, true);
      if (round === null) break;
      let progress: boolean;
      try {
        const r = await round.done;
        progress = r.marked > 0 || r.unreadable === 0;
      } catch {
        progress = false;
      }
      if (progress) {
        backoff = RETRY_MIN_MS;
        continue;
      }
      if (this.closed) break;
      await this.backoff(backoff);
      backoff = Math.min(RETRY_MAX_MS, 2 * backoff);
    }
    // Waiters of a closed volume never get room.
    if (this.closed) for (const w of this.waiters) w.resolve();
  }

  /**
   * Before a round that is not pressed: resolves once the volume has been quiet for QUIET_MS (no
   * guest request started, none in flight), after ROUND_WAIT_MAX_MS, or when destaging is
   * pressed or closed. Event-driven: guestIdle() ends a wait for the guest.
   */
  private async untilQuiet(): Promise<void> {
    const deadline = performance.now() + (this.o.roundWaitMaxMs ?? ROUND_WAIT_MAX_MS);
    const quiet = this.o.quietMs ?? QUIET_MS;
    for (;;) {
      const left = deadline - performance.now();
      if (this.closed || this.pressed || left <= 0) return;
      const seen = this.o.started();
      if (this.o.busy()) {
        await this.untilIdle(left);
        continue;
      }
      await this.untilIdle(Math.min(quiet, left));
      if (!this.o.busy() && this.o.started() === seen) return;
    }
  }

  /** At least `bytes` of the rounds' data buffer (see `buf`). */
  private roundBuffer(bytes: number): Uint8Array {
    if (this.buf === null || this.buf.length < bytes) this.buf = new Uint8Array(Math.max(bytes, ROUND_BLOCKS * this.o.cache.blockSize));
    return this.buf;
  }

  /** Up to ROUND_BLOCKS dirty [block, slot] pairs of blocks in [first, last] (pickRound). */
  private pick(first: number, last: number): number[][] {
    const m = this.o.cache.map.dirty.get(this.o.volume);
    if (m === undefined || m.size === 0) return [];
    const bda = this.o.cache.map.bda;
    return pickRound(m, (slot) => bda.blockOf(slot), first, last, this.cursor, ROUND_BLOCKS);
  }

  /**
   * Runs `writes`, at most WRITES_IN_FLIGHT at once; `yielding`: while the guest has requests in
   * flight and nothing presses, the next one waits for the guest to go idle (or YIELD_MAX_MS).
   * Rejects with the first failure, once none is in flight any more.
   */
  private issue(writes: (() => Promise<void>)[], yielding: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let next = 0;
      let inFlight = 0;
      let failed: Error | null = null;
      let waiting = false;
      let waited = false;
      const pump = (): void => {
        while (failed === null && next < writes.length && inFlight < WRITES_IN_FLIGHT && !waiting) {
          if (yielding && !waited && !this.pressed && this.o.busy() && !this.closed) {
            waiting = true;
            void this.untilIdle().then(() => {
              waiting = false;
              waited = true;
              pump();
            });
            return;
          }
          waited = false;
          const write = writes[next++] as () => Promise<void>;
          inFlight++;
          this.writesInFlight++;
          this.maxWritesInFlight = Math.max(this.maxWritesInFlight, this.writesInFlight);
          write()
            .catch((err: Error) => {
              failed ??= err;
            })
            .finally(() => {
              inFlight--;
              this.writesInFlight--;
              pump();
            });
        }
        if (inFlight > 0 || waiting) return;
        if (failed !== null) reject(failed);
        else if (next === writes.length) resolve();
      };
      pump();
    });
  }

  /**
   * One round over `picked` (see the file comment); resolves with the blocks marked clean and
   * the blocks unreadable on the cache device, rejects when the backing store failed.
   * `yielding`: its writes yield to guest I/O unless destaging is pressed. Started by
   * startRound only.
   */
  private async runRound(picked: number[][], yielding: boolean): Promise<RoundResult> {
    const { cache, volume, backing } = this.o;
    const bs = cache.blockSize;
    const slots = picked.map((p) => p[1]);
    cache.watchDestage(volume, slots);
    // Runs of consecutive blocks: [first block, index in picked, count].
    const runs: number[][] = [];
    for (let j = 0; j < picked.length; j++) {
      const r = runs[runs.length - 1];
      if (r !== undefined && r[0] + r[2] === picked[j][0] && r[2] < RUN_BLOCKS) r[2]++;
      else runs.push([picked[j][0], j, 1]);
    }
    this.rounds++;
    this.unreadable = 0;
    try {
      // Resolves false only after a cache-device write error: the blocks are destaged all the same.
      await cache.commit();
      const c = cache.map.stats(volume);
      const counted = { reads: c.reads, readHits: c.readHits, ramHits: c.ramHits, storageHits: c.storageHits };
      // One buffer for the round's data (kept for the next round: see roundBuffer).
      const buf = this.roundBuffer(picked.length * bs);
      const hit = new Uint8Array(picked.length);
      const failed: { first: number; err: string }[] = [];
      // The readable parts of each run ([first block, index in picked, count]), in block order.
      const parts = (await Promise.all(runs.map((r) => this.readRun(r, buf, hit, failed)))).flat();
      if (failed.length > 0 && !this.unreadableStreak) {
        this.o.logger.error(
          { volume, unreadable: failed.length, first: failed[0].first, err: failed[0].err },
          'cache: write-back blocks unreadable on the cache device: not destaged (their reads fail); retried with a backoff, not logged again while rounds keep meeting unreadable blocks',
        );
      }
      this.unreadableStreak = failed.length > 0;
      // Destaging is not guest reading: the volume's hit counters stay as they were.
      Object.assign(c, counted);
      const kills: Promise<void>[] = [];
      for (const [first, , n] of runs) {
        const k = cache.killDropped(volume, first, n, true);
        if (k !== null) kills.push(k);
      }
      await Promise.all(kills);
      const writes = parts.map(([first, at, n]) => () => backing.write(first * bs, [buf.subarray(at * bs, (at + n) * bs)]));
      await this.issue(writes, yielding);
      await backing.flush();
      const done: number[] = [];
      for (const [, at, n] of parts) for (let k = 0; k < n; k++) done.push(slots[at + k]);
      const marked = cache.markClean(volume, done);
      this.destaged += marked;
      c.destaged += marked;
      c.destageRounds++;
      this.cursor = picked[picked.length - 1][0] + 1;
      this.failingSince = 0;
      this.lastError = null;
      return { marked, unreadable: this.unreadable };
    } catch (err) {
      this.errors++;
      cache.map.stats(volume).destageErrors++;
      if (this.failingSince === 0) {
        this.failingSince = performance.now();
        this.o.logger.warn({ volume, dirty: this.dirty, err: (err as Error).message }, 'cache: destaging failed (backing store down?); retrying, writes continue into the cache up to the dirty limit');
      }
      this.lastError = err as Error;
      throw err;
    } finally {
      cache.unwatch(volume, slots);
      this.release();
      const ends = this.roundEnds;
      this.roundEnds = [];
      for (const end of ends) end();
    }
  }

  /**
   * Reads the run [first block, index in picked, count] of a round into its place in `buf`.
   * Resolves with its readable parts, as runs: the whole run, or, when it cannot be read whole,
   * the stretches of its blocks read one by one, so one block unreadable on the cache device
   * keeps only itself dirty, not the up to RUN_BLOCKS - 1 others of its run. Each unreadable
   * block goes to `failed` and counts in `unreadable`.
   */
  private async readRun(run: number[], buf: Uint8Array, hit: Uint8Array, failed: { first: number; err: string }[]): Promise<number[][]> {
    const { cache, volume } = this.o;
    const bs = cache.blockSize;
    const [first, at, n] = run;
    const read = async (b: number, j: number, count: number): Promise<boolean> => {
      try {
        await cache.readBlocks(volume, b, count, buf.subarray(j * bs, (j + count) * bs), hit.subarray(j, j + count));
        return true;
      } catch (err) {
        if (count > 1) return false;
        this.errors++;
        this.unreadable++;
        failed.push({ first: b, err: (err as Error).message });
        return false;
      }
    };
    if (await read(first, at, n)) return [run];
    if (n === 1) return [];
    const ok = await Promise.all(Array.from({ length: n }, (_, k) => read(first + k, at + k, 1)));
    const parts: number[][] = [];
    for (let k = 0; k < n; k++) {
      if (!ok[k]) continue;
      const last = parts[parts.length - 1];
      if (last !== undefined && last[0] + last[2] === first + k) last[2]++;
      else parts.push([first + k, at + k, 1]);
    }
    return parts;
  }
}

/**
 * The next round of an elevator: of the slots of `dirty` (its keys, each a distinct block,
 * blockOf) whose blocks lie in [first, last], the `max` whose blocks come first from `cursor`
 * on, wrapping past the end to the lowest; returned as [block, slot] pairs in block order.
 * One pass over `dirty` keeping the `max` nearest blocks in a bounded max-heap (distance from
 * the cursor, wrapping), so a round over tens of thousands of dirty blocks costs a fraction of
 * a millisecond. (The first version sorted every dirty block as an array of pairs with a
 * comparator: 6-9 ms of CPU per round at 9,000 dirty blocks, 25-30 ms at 30,000, each a stall
 * of the event loop serving the guests.)
 */
export function pickRound(
  dirty: ReadonlyMap<number, unknown>,
  blockOf: (slot: number) => number,
  first: number,
  last: number,
  cursor: number,
  max: number,
): number[][] {
  const cap = Math.min(max, dirty.size);
  if (cap <= 0) return [];
  // Distance from the cursor: blocks behind it come after every block at or past it.
  const behind = 2 ** 53 - cursor;
  const dist = new Float64Array(cap);
  const slotOf = new Float64Array(cap);
  let n = 0;
  for (const slot of dirty.keys()) {
    const b = blockOf(slot);
    if (b < first || b > last) continue;
    const d = b >= cursor ? b - cursor : b + behind;
    if (n < cap) {
      // Sift up into the max-heap.
      let i = n++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (dist[parent] >= d) break;
        dist[i] = dist[parent];
        slotOf[i] = slotOf[parent];
        i = parent;
      }
      dist[i] = d;
      slotOf[i] = slot;
    } else if (d < dist[0]) {
      // Replace the farthest taken so far and sift down.
      let i = 0;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && dist[c + 1] > dist[c]) c++;
        if (dist[c] <= d) break;
        dist[i] = dist[c];
        slotOf[i] = slotOf[c];
        i = c;
      }
      dist[i] = d;
      slotOf[i] = slot;
    }
  }
  const out: number[][] = [];
  for (let i = 0; i < n; i++) out.push([blockOf(slotOf[i]), slotOf[i]]);
  out.sort((x, y) => x[0] - y[0]);
  return out;
}
