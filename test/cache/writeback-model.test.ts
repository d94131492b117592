/**
 * Randomized model of write-back under held I/O (the write-back counterpart of
 * test/support/model-run.ts): two write-back volumes share a small cache (10 segments of 4
 * blocks; volume 1 capped at 12 blocks, small dirty limits, so the destager runs all the time
 * and writes wait for room), read-ahead on. A window of up to 6 operations is in flight:
 * reads (whole, partial, scatter lists, sequential runs for read-ahead) overlap anything,
 * writes, discards and write-zeroes overlap reads and each other's neighbours but never a
 * write-like operation in flight on the same sector (so the newest acknowledged data is one
 * value per sector), guest flushes and whole-volume destages (flushCache) go in between. Every
 * backing store and cache-device operation is held (held-io.ts) and takes effect and completes
 * in a random order, so destage rounds, read-ahead, group commits, header rewrites and the
 * guest's requests race. Timers (destage pace, clean marks, identity) run on a virtual clock.
 *
 * Faults: crashes (the process dies: the device keeps its durable bytes plus any subset or torn
 * prefix of its unflushed writes, backing writes in flight were applied or not, the dead
 * process writes nothing more), some at one of the next device writes (in the middle of a
 * commit or a header rewrite), and clean restarts.
 *
 * Model: a read returns, per 512-byte sector, the newest acknowledged data when it started or
 * the data of a write-like operation that overlapped it in time. After a crash every sector of
 * both volumes read through the recovered cache holds the newest acknowledged data or the data
 * of an operation in flight at the crash (that is the truth from then on). At the end both
 * volumes are read whole, then destaged: the backing stores must equal the model.
 *
 * Four random streams: the workload (`seed`), the completion order and the virtual clock (both
 * derived from `seed`), the faults (`faultSeed`). A run is a pure function of (seed,
 * faultSeed, ops): a failure prints the VBC_WBMODEL_RUN line that reruns it (seeded-runs.ts).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackingStore } from '../../src/backing/backing-store';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import { rng } from './helpers';
import { ControlledStore } from '../support/controlled-store';
import { HeldIo, pumpHeld, settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';
import { splitRandomly } from '../support/scatter';
import { rerun, type SeededRun, seededRunsFromEnv } from '../support/seeded-runs';
import { checkSectors, type ReadRec, SECTOR, type WriteRec } from '../support/sector-model';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';
import { VirtualClock } from '../support/virtual-clock';

const BS = 4096;
const BLOCKS = 48;
const HOT = 12;
/** Not a multiple of the block size: the tail block is never cached. */
const VOL_SIZE = BLOCKS * BS + 1536;
const DEVICE = deviceBytesFor(10, BS, 4 * BS);
const WINDOW = 6;
const ENV = 'VBC_WBMODEL_RUN';
const FILE = 'dist/test/cache/writeback-model.test.js';
const noop = (): void => {};

/** The backing store as one incarnation of the daemon sees it: a dead process does nothing more. */
class IncarnationStore implements BackingStore {
  dead = false;
  private readonly never = new Promise<never>(noop);
  constructor(private readonly back: ControlledStore) {}
  get kind(): string {
    return this.back.kind;
  }
  get size(): number {
    return this.back.size;
  }
  get readOnly(): boolean {
    return this.back.readOnly;
  }
  get location(): string {
    return this.back.location;
  }
  get identity(): string {
    return this.back.identity;
  }
  get changesVisible(): boolean {
    return this.back.changesVisible;
  }
  get features(): BackingStore['features'] {
    return this.back.features;
  }
  currentIdentity(): Promise<string> {
    return this.back.currentIdentity();
  }
  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.dead ? this.never : this.back.read(offset, bufs);
  }
  write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.dead ? this.never : this.back.write(offset, bufs);
  }
  flush(): Promise<void> {
    return this.dead ? this.never : this.back.flush();
  }
  discard(offset: number, length: number): Promise<void> {
    return this.dead ? this.never : this.back.discard(offset, length);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.dead ? this.never : this.back.writeZeroes(offset, length);
  }
  close(): Promise<void> {
    return this.back.close();
  }
}

class Incarnation {
  readonly io = new HeldIo();
  stores: CachedStore[] = [];
  views: IncarnationStore[] = [];
  constructor(
    readonly cache: Cache,
    readonly dev: MemDevice,
  ) {}
}

interface WbModelResult {
  ops: number;
  checkedReads: number;
  crashes: number;
  restarts: number;
  destaged: number;
  recoveredDirty: number;
  flushCaches: number;
  readHits: number;
  timers: number;
}

async function wbModel(run: SeededRun): Promise<WbModelResult> {
  try {
    return await wbModelRun(run.seed, Number(run.more ?? run.seed + 1000), run.size);
  } catch (err) {
    (err as Error).message += `\n  reproduce: ${rerun(ENV, { ...run, more: run.more ?? `${run.seed + 1000}` }, FILE)}`;
    throw err;
  }
}

async function wbModelRun(seed: number, faultSeed: number, ops: number): Promise<WbModelResult> {
  const w = rng(seed);
  const sched = rng((seed ^ 0x9e3779b9) >>> 0);
  const f = rng(faultSeed);
  const clock = new VirtualClock((seed ^ 0x5eed) >>> 0);
  const dir = tmpDir('wbmodel');
  const cachePath = path.join(dir, 'cache');
  const backs = [new ControlledStore(VOL_SIZE, 'a'), new ControlledStore(VOL_SIZE, 'b')];
  backs.forEach((b, v) => stampBytes(b.data, 0, v));
  const model = backs.map((b) => new Uint8Array(b.data));
  const res: WbModelResult = { ops: 0, checkedReads: 0, crashes: 0, restarts: 0, destaged: 0, recoveredDirty: 0, flushCaches: 0, readHits: 0, timers: 0 };
  let gen = 10;
  const writesInFlight = new Set<WriteRec>();
  const readsInFlight = new Set<ReadRec>();
  let inflight = new Set<Promise<void>>();
  let failure: unknown = null;
  const cursor = [0, 0];

  const open = async (image?: Uint8Array): Promise<Incarnation> => {
    const dev = new MemDevice(DEVICE, image);
    // Every crash here is a power cut (crashImage: unflushed writes lost), so the host boots
    // again: another boot id (cache-format.md "Crash kinds").
    const bootId = `boot-${res.crashes}`;
    const cache = await Cache.open({ path: cachePath, size: DEVICE, blockSize: BS, segmentSize: 4 * BS, buffers: 3, engine: dev, bootId });
    const inc = new Incarnation(cache, dev);
    dev.io = inc.io;
    for (const b of backs) b.io = inc.io;
    inc.views = backs.map((b) => new IncarnationStore(b));
    const opening = Promise.all(
      inc.views.map((b, v) =>
        CachedStore.open({ backing: b, cache, name: `v${v}`, mode: 'writeback', maxBytes: v === 1 ? 12 * BS : undefined, dirtyLimitBlocks: v === 0 ? 10 : 5 }),
      ),
    );
    assert.ok(await pumpUntil(inc, opening), 'the volumes never opened');
    inc.stores = await opening;
    return inc;
  };

  /** Drives held I/O (a random completion order) and the clock until `until` settles; false if it cannot (a frozen device). */
  const pumpUntil = (inc: Incarnation, until: Promise<unknown>): Promise<boolean> => pumpHeld(inc.io, clock, sched, () => inc.dev.frozen, until);

  /** The process dies now (see the file comment); returns the recovered incarnation, checked. */
  const crash = async (inc: Incarnation, at: string): Promise<Incarnation> => {
    inc.dev.freeze();
    for (const h of inc.io.pending) if (h.kind === 'write' && !h.done && h.label.startsWith('backing') && f() < 0.5) h.effect();
    inc.io.pending.length = 0;
    for (const view of inc.views) view.dead = true;
    for (const s of inc.stores) void s.destager.close();
    fs.closeSync((inc.cache as unknown as { fd: number }).fd);
    res.crashes++;
    res.destaged += inc.stores.reduce((n, s) => n + s.destager.destaged, 0);
    const pending = [...writesInFlight];
    writesInFlight.clear();
    readsInFlight.clear();
    inflight = new Set();
    const next = await open(inc.dev.crashImage(f));
    res.recoveredDirty += next.cache.map.dirtyTotal;
    for (let v = 0; v < 2; v++) {
      const out = new Uint8Array(VOL_SIZE);
      assert.ok(await pumpUntil(next, next.stores[v].read(0, [out])), 'read after a crash never finished');
      checkSectors(v, 0, out, model[v], pending, `${at}, after crash ${res.crashes}`);
      // What the cache holds now is the truth from here on (each sector checked above).
      model[v].set(out);
    }
    return next;
  };

  /** Clean close and warm start. */
  const restart = async (inc: Incarnation): Promise<Incarnation> => {
    // A crash armed at one of the next device writes may come first.
    if (!(await pumpUntil(inc, Promise.all(inflight)))) return crash(inc, 'before a restart');
    const closed = (async () => {
      for (const s of inc.stores) await s.close();
      await inc.cache.close();
    })();
    if (!(await pumpUntil(inc, closed))) return crash(inc, 'in a clean close');
    res.restarts++;
    res.destaged += inc.stores.reduce((n, s) => n + s.destager.destaged, 0);
    for (const b of backs) b.io = null;
    return open(new Uint8Array(inc.dev.image));
  };

  const track = (inc: Incarnation, p: Promise<void>): void => {
    const tracked: Promise<void> = p
      .then(noop, (err: unknown) => {
        // Once its device froze the process is dead: what its operations do then (a timer's
        // rejection) is not the guest's.
        if (!inc.dev.frozen) failure ??= err;
      })
      .finally(() => inflight.delete(tracked));
    inflight.add(tracked);
  };

  const issue = (inc: Incarnation, i: number): void => {
    const v = w() < 0.6 ? 0 : 1;
    const s = inc.stores[v];
    const kind = w();
    if (kind < 0.02) {
      res.ops++;
      track(inc, s.flush());
      return;
    }
    if (kind < 0.03) {
      res.ops++;
      res.flushCaches++;
      track(inc, s.flushCache());
      return;
    }
    const sequential = kind < 0.15;
    const firstBlock = sequential ? cursor[v] : w() < 0.8 ? Math.floor(w() * HOT) : Math.floor(w() * (BLOCKS + 1));
    const lastBlock = Math.min(BLOCKS, firstBlock + Math.floor(w() * 4));
    if (sequential) cursor[v] = lastBlock + 1 > BLOCKS - 4 ? 0 : lastBlock + 1;
    const start = firstBlock * BS + (!sequential && w() < 0.3 ? SECTOR * Math.floor(w() * 8) : 0);
    let end = Math.min((lastBlock + 1) * BS, VOL_SIZE);
    if (!sequential && w() < 0.3) end = Math.max(start + SECTOR, end - SECTOR * Math.floor(w() * 8));
    if (end > VOL_SIZE || end <= start) return;
    const len = end - start;
    res.ops++;
    if (kind < 0.6) {
      const out = new Uint8Array(len);
      const r: ReadRec = { v, start, end, snap: model[v].slice(start, end), concurrent: [] };
      for (const x of writesInFlight) if (x.v === v && x.start < end && x.end > start) r.concurrent.push(x);
      readsInFlight.add(r);
      track(
        inc,
        s.read(start, splitRandomly(out, w)).then(() => {
          if (!readsInFlight.delete(r)) return; // crashed meanwhile: never answered
          res.checkedReads++;
          checkSectors(v, start, out, r.snap, r.concurrent, `op ${i}: read [${start}, ${end})`);
        }),
      );
      return;
    }
    // Write-like operations never overlap one in flight (one newest value per sector).
    for (const x of writesInFlight) if (x.v === v && x.start < end && x.end > start) return;
    let x: WriteRec;
    let p: Promise<void>;
    if (kind < 0.88) {
      const data = new Uint8Array(len);
      stampBytes(data, start, gen++);
      x = { v, start, end, data };
      p = s.write(start, splitRandomly(data, w));
    } else if (kind < 0.94) {
      x = { v, start, end, data: null };
      p = s.discard(start, len);
    } else {
      x = { v, start, end, data: null };
      p = s.writeZeroes(start, len, w() < 0.5);
    }
    writesInFlight.add(x);
    for (const r of readsInFlight) if (r.v === v && r.start < end && r.end > start) r.concurrent.push(x);
    track(
      inc,
      p.then(() => {
        if (!writesInFlight.delete(x)) return; // crashed meanwhile
        if (x.data === null) model[v].fill(0, start, end);
        else model[v].set(x.data, start);
      }),
    );
  };

  clock.install();
  let inc: Incarnation;
  try {
    inc = await open();
  } catch (err) {
    clock.uninstall();
    throw err;
  }
  try {
    let freezeArmed = -1;
    for (let i = 0; i < ops; i++) {
      // A device frozen meanwhile: the process died then (its timers that fired since do not count).
      if (inc.dev.frozen) {
        freezeArmed = -1;
        inc = await crash(inc, `op ${i}`);
      }
      if (failure !== null) throw failure;
      const p = f();
      if (p < 0.001) inc = await restart(inc);
      else if (p < 0.002) inc = await crash(inc, `op ${i}`);
      else if (p < 0.004) {
        // Crash at one of the next device writes (a commit, a header rewrite), or soon if none comes.
        inc.dev.freezeAtWrite = inc.dev.writes + 1 + Math.floor(f() * 3);
        freezeArmed = i + 100;
      }
      if (i === freezeArmed) {
        freezeArmed = -1;
        inc = await crash(inc, `op ${i}`);
      }
      issue(inc, i);
      const target = 1 + Math.floor(w() * WINDOW);
      while (inflight.size >= target && !inc.dev.frozen) {
        await settle();
        clock.step();
        if (inflight.size < target) break;
        if (!inc.io.stepRandom(sched)) break;
      }
    }
    if (!(await pumpUntil(inc, Promise.all(inflight)))) inc = await crash(inc, 'the end');
    // A crash armed in the last operations that has not come yet comes now, as the loop would
    // have made it come: the final checks run on a device that no longer freezes.
    else if (inc.dev.freezeAtWrite !== Infinity) inc = await crash(inc, 'the end (armed)');
    if (failure !== null) throw failure;
    for (let v = 0; v < 2; v++) {
      const out = new Uint8Array(VOL_SIZE);
      assert.ok(await pumpUntil(inc, inc.stores[v].read(0, [out])), 'final read never finished');
      checkSectors(v, 0, out, model[v], [], 'final read');
    }
    for (const s of inc.stores) assert.ok(await pumpUntil(inc, s.flushCache()), 'the final destage never finished');
    for (let v = 0; v < 2; v++) {
      const at = backs[v].data.findIndex((b, k) => b !== model[v][k]);
      assert.equal(at, -1, `volume ${v}: the backing store after the final destage differs from the acknowledged data at byte ${at}`);
    }
    res.destaged += inc.stores.reduce((n, s) => n + s.destager.destaged, 0);
    res.readHits = inc.cache.stats().readHits;
    res.timers = clock.fired;
    return res;
  } finally {
    try {
      for (const b of backs) b.io = null;
      inc.dev.io = null;
      if (inc.dev.frozen) fs.closeSync((inc.cache as unknown as { fd: number }).fd);
      else {
        // Operations still held complete (new ones are not held any more) while it closes.
        const closed = (async () => {
          for (const s of inc.stores) await s.destager.close();
          await inc.cache.abort();
        })();
        await clock.until(Promise.all([closed, inc.io.drain()]));
      }
    } finally {
      clock.uninstall();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

describe('write-back randomized model under held I/O (seeded)', function () {
  this.timeout(600000);
  // VBC_WBMODEL_RUN=SEED[..LAST][:OPS[:FAULT_SEED]] runs those instead (seeded-runs.ts; fault
  // seed default: seed + 1000).
  const only = seededRunsFromEnv(ENV, 4000);
  // Seed 135 (fault seed 1135): volume 0's round marked volume 1's block clean in a slot the
  // round had watched before it was dropped and refilled, and volume 1's round watched again;
  // a host crash then dropped the block, never destaged (Cache.watchDestage's owner).
  // Seed 310 (fault seed 1310): a crash armed in the last 100 operations froze the device during
  // the final read, which then never finished (the harness, not the cache: see 'the end (armed)').
  const runs: SeededRun[] = only ?? [
    ...[1, 2, 3].map((seed) => ({ seed, size: 4000 })),
    { seed: 135, size: 4000, more: '1135' },
    { seed: 310, size: 4000, more: '1310' },
  ];
  for (const run of runs) {
    it(`seed ${run.seed}${run.more !== undefined ? `, fault seed ${run.more}` : ''}: ${run.size} operations racing destage rounds, read-ahead and commits, with crashes and restarts`, async () => {
      const r = await wbModel(run);
      if (process.env.VBC_MODEL_STATS) console.log(run.seed, JSON.stringify(r));
      assert.ok(r.checkedReads > run.size / 3, `only ${r.checkedReads} reads checked`);
      assert.ok(r.destaged > 0 && r.timers > 0, JSON.stringify(r));
      if (run.size >= 4000) assert.ok(r.crashes > 0 && r.restarts > 0 && r.recoveredDirty > 0, JSON.stringify(r));
    });
  }
  if (only !== null) return;

  it('a seed replays exactly', async () => {
    const a = await wbModel({ seed: 4, size: 1500 });
    assert.deepEqual(await wbModel({ seed: 4, size: 1500 }), a);
  });
});
