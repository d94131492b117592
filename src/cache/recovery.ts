/**
 * Recovery: after an unclean stop (crash, kill -9, power cut: the metadata of the last clean
 * close is stale) the cache index is rebuilt from the segment headers on the device, so the
 * cache starts warm.
 *
 * THE INVARIANT (kept by log.ts, cache.ts and cached-store.ts; this file relies on it):
 *   At every instant, for every key K (volume id, block) and every header entry a recovery after
 *   a crash of either kind could trust (docs/cache-format.md "Crash kinds": after a process
 *   crash, any completed header write; after a host crash, only dirty entries, durable or of a
 *   completed write: cache.ts drops every clean one found, the clean floor) saying "slot s holds
 *   K, valid", with a sequence number >= the volume table's floor and >= the epoch of K's volume
 *   id: either the data the guest would read for K equals what slot s holds (checked against the
 *   entry's CRC-32C), or K's backing write has not been issued yet.
 * How each way of breaking it is ruled out:
 *   1. A guest write, discard or write-zeroes (every mode, `none` included) drops K from the map
 *      and, before its backing write is issued, rewrites the headers of every segment that may
 *      still name K (Log.killFor) and waits for those writes to complete; then an fdatasync too
 *      when an entry may be dirty on the device (dropped dirty, or an unrecorded clean mark in
 *      its segment): batched, one device write set (+ one fdatasync) per batch. When only clean
 *      entries are involved it may instead mark those segments in the superblock (kill-marks.ts:
 *      a completed write, kept by a process crash) and let the rewrites run: cache.ts drops
 *      every clean entry of a marked segment after this recovery (dropClean), after a host
 *      crash every clean entry is dropped anyway, and a mark is cleared only once a rewrite of
 *      its segment sealed after it completed.
 *   2. Keys leaving the map without a write (evicted when the slot is refilled, read-ahead or
 *      device read errors, checksum drops, a block moved to another slot) are remembered with
 *      their slot (dropped.ts) until a header of their segment sealed after the drop is durable,
 *      so 1. finds them; a volume shrink or identity change drops all of its blocks through 4.
 *   3. Every device write of a segment is chained after the ones issued before it (Log
 *      onSegment): a header rewrite never lands before a segment write still in flight.
 *   4. Volume ids are reused and volumes lose all their blocks at once: the volume table
 *      (volume-table.ts) gives each id an epoch, raised (and saved, synced) whenever all of a
 *      volume's blocks are dropped, before that volume's next write is issued; entries sealed
 *      before their id's epoch are not recovered. Records are never removed, so a new id is
 *      unknown to every table on the device and its entries are skipped until its record is
 *      saved (its blocks need not wait).
 *   5. Changes behind our back while stopped: a volume is kept only if its backing identity
 *      equals the one last recorded (cache.ts registerVolume; cached-store.ts records it when
 *      the volume is quiet), else all its blocks go (4.). Never sampled for this. A store
 *      that may lose unflushed writes with its connection (NBD) loses its recovered blocks.
 *   6. Torn writes: header sectors are self-describing (CRC-32C, sequence number; segment.ts),
 *      only the sectors of a segment's highest sequence number are used (a mix is detected and
 *      that header rewritten before the cache opens); data is checked against the entry's
 *      CRC-32C on every device read (a torn block is a miss), read here only for the
 *      dirty entries above the durable mark (10.).
 *   7. A cache-device write error: nothing is sealed any more, and the writes made from then
 *      on kill nothing on the device, so before any of them is issued it must be durable that
 *      nothing sealed so far is recovered: the volume table saved with the floor above every
 *      sequence number used or, if the device refuses that, the superblock retired (zeros:
 *      the next start formats the device). Every write while the cache is disabled waits for
 *      one of them (Log.killFor, cache.ts retire); if the device refuses both for a whole round
 *      of attempts (~4 s), the writes waiting fail with EIO and are never issued, and the next
 *      write tries again. Which of the two landed does not matter: both mean "cold". The volume
 *      table's saves are group commits that never report a save whose snapshot predates the
 *      request (volume-table.ts), so "floor saved" means the raised floor is on the device.
 *
 * Write-back (dirty entries: data newer than the backing store, acknowledged once durable):
 *   8. A dirty entry is the newest data of its key unless a newer entry of the key exists:
 *      a newer write-back copy is sealed with a higher sequence number, and the older copy stays
 *      named (superseded) until the newer one is durable (log.ts SHADOW), so a crash leaves at
 *      least one of them; a write-through write or discard of a dirty block kills it like 1.
 *      Which of two entries of a key is the newer copy: a header sealed with s names the key's
 *      newest copy at s, so of two plain entries the higher seal wins. A superseded entry's
 *      own seal tells nothing (its header may be rewritten after the newer copy's was sealed),
 *      so it carries its age A (segment.ts ENTRY_AGE_SHIFT): it was the newest copy through
 *      s - A; it wins against entries sealed at or below that (older copies still named: an
 *      older dirty copy released but not rewritten yet, a clean copy a host crash's recovery
 *      dropped without rewriting its header) and loses to those sealed after (the copy that
 *      superseded it, or a newer one). Ranking it below every other entry let such an older
 *      copy win when the newer copy's data was torn (stale data: seed 3 of the crash model).
 *   9. A destage (the backing write of dirty data) is a backing write like 1.: the dropped
 *      entries of its keys are made durably invalid before it is issued, and it waits for a
 *      log commit first, so the data it writes back is durable in the log (a crash never
 *      recovers an older copy than the backing store holds); a dirty entry whose "clean" mark
 *      was lost is destaged again (the same data): its slot is not refilled before a header
 *      recording the mark is durable (log.ts write, headerFirst), so its data is still there.
 *  10. A segment write issues its data runs and its header together (one fdatasync per group
 *      commit, log.ts), so a header may be on the device over data that is not (torn, or never
 *      written). Every header sector carries the durable mark M (every write sealed at or below
 *      M completed before an fdatasync that completed before the sector was sealed): the data
 *      of each dirty entry sealed above the highest mark found is read and checked against the
 *      entry's CRC-32C here; one that does not match is dropped (its write was never
 *      acknowledged: the commit's fdatasync had not completed) and its header rewritten, so the
 *      older copy it superseded (8.) wins, or the backing store's data. Entries at or below the
 *      mark are not read (their data was durable before the mark was). Clean entries are never
 *      read: their CRC-32C is checked on every device read (6.). A slot whose dirty entry may
 *      still be valid is never refilled (SHADOW, RESERVED). The log restarts from the mark
 *      found, so the headers rewritten at open do not vouch for data dropped here.
 *  11. Torn headers: a header is rewritten in place (group commits, clean marks, kills) while it
 *      names acknowledged dirty blocks, so a dirty entry of an intact sector of an OLDER write
 *      of the header is recovered too (with that sector's sequence number): it was the last
 *      durable state of that sector, and 8.-10. make it right unless a newer entry of the key
 *      exists, which wins. Clean entries of older sectors are not recovered (as in 6.).
 *  12. A cache-device write error (7.) with dirty blocks: the floor (or a retired superblock)
 *      would drop them, so they are destaged first (cache.ts retire); the writes waiting for
 *      7. wait for that destage too (never overtaken by it). What cannot be destaged is logged
 *      and lost at the next start (README: the data-loss window).
 *
 * Algorithm: read every segment header (batches of READ_BATCH reads in flight, the CRC-32C of
 * every sector of a batch in one call); per segment keep the intact sectors of the highest
 * sequence number (>= floor), and the dirty entries of its older intact sectors (11.); each
 * valid entry of a known volume id, sealed at or after its epoch and inside the volume (and of
 * a key the BDA can hold, bda.ts), goes to its slot (the BDA only: no lookup per entry), is
 * counted (per segment, per volume: CacheMap adopts the counts) and, when clean, handed to a
 * map builder (address-map.ts MapBuilder: hashed once, sent to its range of homes); the dirty
 * ones sealed above the durable mark are checked against their data (10.), and those left go
 * to a builder too; then the address map is built one range of homes at a time (RangePlacer:
 * one pass in table order), and a key found twice keeps the newer copy (8.: the entry of the
 * higher sequence number, a superseded one ranked where it stopped being the newest;
 * AddressMap.finishBuilt). Segments whose
 * headers name entries not recovered for another reason than floor or epoch (older sectors of
 * a torn header, the loser of a duplicate, data that does not match) are returned in
 * `rewrite`: the caller rewrites them from the rebuilt index (and syncs) before the cache is
 * used, so every entry still valid on the device is in the index again (the invariant's
 * starting point). The hand restarts after the segment of the highest sequence number.
 *
 * Threads: a large cache (WORKER_MIN_SLOTS) is recovered by worker threads (one per core, at
 * most MAX_WORKERS: recovery-worker.ts) over shared memory (recovery-scan.ts): the main thread
 * reads the header batches into a ring (the I/O engine is the main thread's) and publishes them
 * in order; each worker claims the next batch and scans it (its own MapBuilder and tallies);
 * the main thread merges the tallies and checks the dirty entries (I/O); then each worker
 * claims ranges of homes and places them from every builder (an entry whose position falls
 * into the next range is placed after, one by one, like a duplicate's pick: the main thread).
 * A smaller cache does the same steps on the main thread alone. Which thread scanned or placed
 * what changes nothing in the result (test/cache/recovery-threads.test.ts).
 */
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { IoEngine } from '../io/io-engine';
import { AddressMap, MapBuilder } from './address-map';
import { BlockDescriptorArray, FLAG_VALID, MAX_VOLUMES } from './bda';
import type { CountedIndex } from './cache-map';
import type { VolumeRecord } from './metadata';
import { native } from '../native/binding';
import { Ctl, CTL_WORDS, HeaderScan, READ_BATCH, type RecoveryShared, RING, type ScanResult } from './recovery-scan';
import type { Placed, PlaceOrder } from './recovery-worker';
import { type Geometry, segmentOffset, slotOffset } from './segment';

/** Slots from which a recovery runs on worker threads (16 GiB of 4 KiB blocks, ~0.6 s on one thread; starting a worker costs 73-80 ms of CPU, docs/benchmarks.md). */
export const WORKER_MIN_SLOTS = 2 ** 22;
/** Most worker threads a recovery starts. */
export const MAX_WORKERS = 4;

export interface RecoveryInput {
  engine: IoEngine;
  fd: number;
  geometry: Geometry;
  uuid: Uint8Array;
  floor: number;
  volumes: readonly VolumeRecord[];
  tableCapacity: number;
  /** Worker threads (0: the main thread alone); default by size and cores (WORKER_MIN_SLOTS, MAX_WORKERS). */
  workers?: number;
}

export interface Recovered {
  bda: BlockDescriptorArray;
  /** The address map of the entries recovered, and their counts (CacheMap adopts them as they are). */
  index: CountedIndex;
  /** First slot of the segment after the one with the highest sequence number. */
  hand: number;
  /** Highest sequence number found (0: none). */
  sequence: number;
  /** Per segment: the sequence number of its newest intact header sectors (the seal of its clean entries). */
  segSeq: Float64Array;
  /** Highest durable mark found (0: none; 10.). */
  mark: number;
  /** Dirty entries above the mark whose data was read and checked, and those dropped (torn). */
  verified: number;
  torn: number;
  /** Segments whose headers must be rewritten before use (see the file comment). */
  rewrite: number[];
  /** Entries recovered, and entries seen but not recovered (floor, epoch, torn, duplicate). */
  entries: number;
  skipped: number;
  /** Worker threads used. */
  workers: number;
  ms: number;
}

export async function recoverIndex(o: RecoveryInput): Promise<Recovered> {
  const t0 = performance.now();
  const g = o.geometry;
  const cores = availableParallelism();
  const workers = o.workers ?? (g.slots >= WORKER_MIN_SLOTS && cores > 1 ? Math.min(MAX_WORKERS, cores) : 0);
  const bda = new BlockDescriptorArray(g.slots, 'shared');
  const s: RecoveryShared = {
    geometry: g,
    uuid: o.uuid,
    floor: o.floor,
    volumes: o.volumes.map(({ id, epoch, sizeBytes }) => ({ id, epoch, sizeBytes })),
    bda: bda.memory,
    segValid: new SharedArrayBuffer(2 * g.segments),
    segSeq: new SharedArrayBuffer(8 * g.segments),
    ring: new SharedArrayBuffer((workers > 0 ? RING : 1) * READ_BATCH * g.headerSize),
    ctl: new SharedArrayBuffer(4 * CTL_WORDS),
    table: new SharedArrayBuffer(4 * o.tableCapacity),
    tableCapacity: o.tableCapacity,
  };
  const map = new AddressMap(bda, undefined, new Int32Array(s.table), 32, 0);
  const pool = workers > 0 ? new WorkerPool(workers, s) : null;
  try {
    let scans: ScanResult[];
    if (pool !== null) {
      await readBatches(o, s, pool);
      scans = await pool.scans();
    } else {
      const scan = new HeaderScan(s);
      const views = ringViews(s, 0);
      for (let b = 0; b * READ_BATCH < g.segments; b++) {
        await readBatch(o, b, views);
        scan.batch(b, 0);
      }
      scans = [scan.result()];
    }
    const rec = new Merged(s, bda, scans);
    const dirty = await rec.verify(o.engine, o.fd, o.tableCapacity);
    const builders = [...scans.map((r) => new MapBuilder(o.tableCapacity, 0, r.builder)), dirty];
    const pick = (a: number, b: number): number => rec.pick(a, b);
    if (pool === null) {
      map.addBuilt(builders, pick, rec.late);
    } else {
      const placed = await pool.place({ builders: builders.map((b) => b.memory), slotBits: map.slotBits, distMax: map.distMax });
      const late = [...rec.late, ...dirty.late, ...placed.flatMap((p) => p.late)];
      map.finishBuilt(placed.reduce((n, p) => n + p.placed, 0), placed.flatMap((p) => p.twins), late, pick);
    }
    return {
      bda,
      index: { map, segValid: rec.segValid, volumeBlocks: rec.volumeBlocks, dirty: rec.dirtyValid() },
      hand: rec.best < 0 ? 0 : ((rec.best + 1) % g.segments) * g.blocksPerSegment,
      sequence: Math.max(0, rec.bestSeq),
      segSeq: new Float64Array(s.segSeq),
      mark: rec.mark,
      verified: rec.verified,
      torn: rec.torn,
      rewrite: [...rec.rewrite],
      entries: rec.entries,
      skipped: rec.skipped,
      workers,
      ms: performance.now() - t0,
    };
  } finally {
    await pool?.close();
  }
}

/** Views of ring slot k: one per header of a batch. */
function ringViews(s: RecoveryShared, k: number): Uint8Array[] {
  const H = s.geometry.headerSize;
  return Array.from({ length: READ_BATCH }, (_, j) => new Uint8Array(s.ring, (k * READ_BATCH + j) * H, H));
}

/**
 * Reads the headers of batch b into `views` (a ring slot's), all in flight together; rejects
 * with the first error once every read is done.
 */
async function readBatch(o: RecoveryInput, b: number, views: readonly Uint8Array[]): Promise<void> {
  const from = b * READ_BATCH;
  const n = Math.min(READ_BATCH, o.geometry.segments - from);
  const reads: Promise<void>[] = [];
  for (let j = 0; j < n; j++) reads.push(o.engine.readv(o.fd, [views[j]], segmentOffset(o.geometry, from + j), true));
  const failed = (await Promise.allSettled(reads)).find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}

/** Reads every batch into the ring, in order, each once its slot's previous batch was scanned; publishes it. */
async function readBatches(o: RecoveryInput, s: RecoveryShared, pool: WorkerPool): Promise<void> {
  const ctl = new Int32Array(s.ctl);
  const views = Array.from({ length: RING }, (_, k) => ringViews(s, k));
  for (let b = 0; b * READ_BATCH < o.geometry.segments; b++) {
    const k = b % RING;
    for (let v = Atomics.load(ctl, Ctl.Done + k); v < Math.floor(b / RING); v = Atomics.load(ctl, Ctl.Done + k)) await pool.wait(Ctl.Done + k, v);
    await readBatch(o, b, views[k]);
    Atomics.store(ctl, Ctl.Published, b + 1);
    Atomics.notify(ctl, Ctl.Published);
  }
}

/** Atomics.waitAsync (Node 16+; not in this TypeScript target's lib). */
interface AtomicsWaitAsync {
  waitAsync(a: Int32Array, i: number, v: number): { async: false; value: string } | { async: true; value: Promise<string> };
}

/** The worker threads of one recovery (recovery-worker.ts); any of them failing fails the recovery. */
class WorkerPool {
  private readonly workers: Worker[];
  private readonly ctl: Int32Array;
  /** Rejects when a worker fails (an error, or an exit before close()). */
  private readonly failed: Promise<never>;
  private closing = false;

  constructor(n: number, s: RecoveryShared) {
    this.ctl = new Int32Array(s.ctl);
    this.workers = [];
    try {
      for (let i = 0; i < n; i++) this.workers.push(new Worker(path.join(__dirname, 'recovery-worker.js'), { workerData: s }));
    } catch (err) {
      // A worker that cannot start (e.g. out of memory): the ones started are stopped.
      void this.close();
      throw err;
    }
    this.failed = new Promise<never>((_, reject) => {
      for (const w of this.workers) {
        w.on('error', reject);
        w.on('exit', (code) => {
          if (!this.closing) reject(new Error(`recovery worker exited (code ${code})`));
        });
      }
    });
    this.failed.catch(() => {});
  }

  /** Resolves once ctl[i] may differ from v (or at once if it does). */
  async wait(i: number, v: number): Promise<void> {
    const w = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.ctl, i, v);
    if (w.async) await Promise.race([w.value, this.failed]);
  }

  /** Every worker's scan (once every batch was published). */
  scans(): Promise<ScanResult[]> {
    return Promise.race([Promise.all(this.workers.map(async (w) => (await once(w, 'message'))[0] as ScanResult)), this.failed]);
  }

  /** Has every worker place the ranges it claims. */
  place(order: PlaceOrder): Promise<Placed[]> {
    const done = Promise.all(this.workers.map(async (w) => (await once(w, 'message'))[0] as Placed));
    for (const w of this.workers) w.postMessage(order);
    return Promise.race([done, this.failed]);
  }

  /** Stops every worker (waking those waiting for a batch). */
  async close(): Promise<void> {
    this.closing = true;
    Atomics.store(this.ctl, Ctl.Abort, 1);
    Atomics.store(this.ctl, Ctl.Published, 0x7fffffff);
    Atomics.notify(this.ctl, Ctl.Published);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** The threads' scans merged, the dirty entries checked (10.), duplicates decided (see the file comment). */
class Merged {
  readonly segValid: Uint16Array;
  readonly volumeBlocks = new Uint32Array(MAX_VOLUMES);
  readonly rewrite = new Set<number>();
  readonly late: number[];
  entries = 0;
  skipped = 0;
  best = -1;
  bestSeq = -1;
  mark = 0;
  verified = 0;
  torn = 0;
  private readonly g: Geometry;
  private readonly bda: BlockDescriptorArray;
  private readonly segSeq: Float64Array;
  /** Slots of the dirty entries recovered, ascending (some dropped by verify: flags 0). */
  private readonly dirty: Int32Array;
  /** Slots recovered from an older sector than their segment's newest (11.): its sequence number. */
  private readonly olderSector = new Map<number, number>();
  /** Slots recovered from a superseded entry -> their age (segment.ts ENTRY_AGE_SHIFT; ranked by pick()). */
  private readonly superseded = new Map<number, number>();

  constructor(s: RecoveryShared, bda: BlockDescriptorArray, scans: readonly ScanResult[]) {
    this.g = s.geometry;
    this.bda = bda;
    this.segValid = new Uint16Array(s.segValid);
    this.segSeq = new Float64Array(s.segSeq);
    for (const r of scans) {
      this.entries += r.entries;
      this.skipped += r.skipped;
      this.mark = Math.max(this.mark, r.mark);
      if (r.bestSeq > this.bestSeq || (r.bestSeq === this.bestSeq && r.best < this.best)) {
        this.best = r.best;
        this.bestSeq = r.bestSeq;
      }
      for (let v = 0; v < MAX_VOLUMES; v++) this.volumeBlocks[v] += r.volumeBlocks[v];
      for (const seg of r.rewrite) this.rewrite.add(seg);
      for (let i = 0; i < r.older.length; i += 2) this.olderSector.set(r.older[i], r.older[i + 1]);
      for (let i = 0; i < r.superseded.length; i += 2) this.superseded.set(r.superseded[i], r.superseded[i + 1]);
    }
    this.late = scans.flatMap((r) => r.late);
    this.dirty = Int32Array.from(scans.flatMap((r) => r.dirty)).sort();
  }

  /** The sequence number of the entry recovered in `slot` (its sector's). */
  private sealedAt(slot: number): number {
    return this.olderSector.get(slot) ?? this.segSeq[Math.floor(slot / this.g.blocksPerSegment)];
  }

  /** Leaves out the entry recovered in `slot` (flags 0, counts); its header is rewritten. */
  private drop(slot: number): void {
    const seg = Math.floor(slot / this.g.blocksPerSegment);
    this.bda.flags[slot] = 0;
    this.segValid[seg]--;
    this.volumeBlocks[this.bda.keyHi[slot]]--;
    this.entries--;
    this.skipped++;
    this.rewrite.add(seg);
  }

  /**
   * Reads the data of every dirty entry sealed above the durable mark (runs of adjacent slots,
   * READ_BATCH reads in flight) and drops those whose CRC-32C does not match (10.); returns a
   * map builder holding the dirty entries left.
   */
  async verify(engine: IoEngine, fd: number, tableCapacity: number): Promise<MapBuilder> {
    const { g, bda, mark } = this;
    const bps = g.blocksPerSegment;
    const bs = g.blockSize;
    const runs: number[] = [];
    for (const slot of this.dirty) {
      if (this.sealedAt(slot) <= mark) continue;
      if (runs.length > 0 && runs[runs.length - 2] + runs[runs.length - 1] === slot && slot % bps !== 0) runs[runs.length - 1]++;
      else runs.push(slot, 1);
    }
    const bad = new Uint8Array(bps);
    for (let r = 0; r < runs.length; r += 2 * READ_BATCH) {
      const batch = runs.slice(r, r + 2 * READ_BATCH);
      const bufs: Uint8Array[] = [];
      for (let j = 0; j < batch.length; j += 2) bufs.push(new Uint8Array(batch[j + 1] * bs));
      await Promise.all(bufs.map((b, j) => engine.readv(fd, [b], slotOffset(g, batch[2 * j]), true)));
      for (let j = 0; j < bufs.length; j++) {
        const first = batch[2 * j];
        const n = batch[2 * j + 1];
        this.verified += n;
        if (native.crc32cCheck(bufs[j], bs, bda.crc, first, bad) === 0) continue;
        for (let i = 0; i < n; i++) {
          if (bad[i] === 0) continue;
          this.drop(first + i);
          this.olderSector.delete(first + i);
          this.superseded.delete(first + i);
          this.torn++;
        }
      }
    }
    const builder = new MapBuilder(tableCapacity, Math.max(1, this.dirty.length));
    for (const slot of this.dirty) if ((bda.flags[slot] & FLAG_VALID) !== 0) builder.add(slot, bda.keyLo[slot], bda.keyHi[slot]);
    return builder;
  }

  /**
   * Of two entries of a key, the one that stays (AddressMap.finishBuilt): the newer copy (8.);
   * the other is dropped (its header rewritten).
   */
  pick(a: number, b: number): number {
    const [keep, drop] = this.newestThrough(a) >= this.newestThrough(b) ? [a, b] : [b, a];
    this.drop(drop);
    return keep;
  }

  /**
   * Up to which sequence number the entry recovered in `slot` held its key's newest copy (8.):
   * its seal, or for a superseded entry the last sequence number used before it was superseded
   * (seal - age) + 1/2: every entry of its key sealed at or below that named an older copy (or
   * this one), every one sealed after it a newer one. Age 0 (written by a build that did not
   * record it): below every other entry.
   */
  private newestThrough(slot: number): number {
    const age = this.superseded.get(slot);
    if (age === undefined) return this.sealedAt(slot);
    // Sequence numbers are below 2^52.
    return age === 0 ? this.sealedAt(slot) - 2 ** 52 : this.sealedAt(slot) - age + 0.5;
  }

  /** The dirty slots still recovered, ascending. */
  dirtyValid(): number[] {
    return Array.from(this.dirty).filter((slot) => (this.bda.flags[slot] & FLAG_VALID) !== 0);
  }
}
