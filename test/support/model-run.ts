/**
 * The randomized model run of the cache, shared by the CI slice (test/cache/model.test.ts) and
 * the long run (bench/model-long.ts).
 *
 * Two volumes share a small cache (10 segments of 4 blocks; volume 1 capped at 12 blocks). A
 * window of up to 6 operations is in flight at any time, on overlapping ranges (same-block
 * conflicts within and across batches: nothing keeps them disjoint); 90 % of the reads and half
 * of the writes fall in a hot region of 14 blocks, so most block reads hit. The backing store and the cache device are held (held-io.ts)
 * and their operations take effect and complete in a random order, so reads capture old data
 * while writes race with them.
 *
 * Three independent random streams: `seed` drives the workload, seed-derived `schedule` the
 * completion order, `faultSeed` the faults (cache-device read/write errors, crashes, clean
 * restarts); the timers (identity records, volume-table retries) run on a virtual clock
 * (virtual-clock.ts) stepped at every settle from a stream derived from `faultSeed`. A run is a
 * pure function of (mode, seed, faultSeed, ops), but for the metadata file of a clean close
 * (real file I/O): a timer still pending while it is written fires once nothing else moves.
 *
 * Faults:
 *   - crash in the middle of segment writes: the device freezes at a chosen write (it and all
 *     later I/O never complete) and the process "dies", drawn: with the host (power cut: the
 *     device keeps its durable bytes plus any subset / torn prefix of unflushed writes,
 *     mem-device.ts; the next start runs in another boot) or alone (every write that took
 *     effect kept, the frozen one kept, lost or torn; the same boot); backing writes in flight
 *     were applied or not; reads in flight are never answered;
 *   - crash in the middle of a clean close: the device freezes during the close's segment write,
 *     or the metadata save is cut (the file removed with a torn .tmp left, or torn in place);
 *   - clean restarts (warm), and read / write error bursts on the cache device (a write error
 *     turns the cache off; it is restarted 100 operations later).
 *
 * Model: a read must return, per 512-byte sector, the backing store's value when it started or
 * a value written by a write, discard or write-zeroes that overlapped it in time. At the end
 * every volume is read whole through the cache and compared with the backing store.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import { rng } from '../cache/helpers';
import { ControlledStore } from './controlled-store';
import { HeldIo, pumpHeld, settle } from './held-io';
import { MemDevice } from './mem-device';
import { stampBytes } from './stamps';
import { checkSectors, type ReadRec, SECTOR, type WriteRec } from './sector-model';
import { splitRandomly } from './scatter';
import { tmpDir } from './tmp';
import { VirtualClock } from './virtual-clock';

const BLOCKS = 96;
const HOT_BLOCKS = 14;
const WINDOW = 6;
const noop = (): void => {};

export interface ModelOptions {
  mode: CacheMode;
  seed: number;
  faultSeed: number;
  ops: number;
  /** Cache block size (default 4096); segments hold 4 blocks. */
  blockSize?: number;
  /** Fault injection (crashes, restarts, device errors); on by default. */
  faults?: boolean;
}

export interface ModelResult {
  ops: number;
  reads: number;
  checkedReads: number;
  blockReads: number;
  blockHits: number;
  hitRate: number;
  crashes: number;
  /** Crashes of the host (power cuts), among `crashes`. */
  hostCrashes: number;
  restarts: number;
  deviceErrors: number;
}

/** The command line that reruns one configuration. */
export function reproduction(o: ModelOptions): string {
  const bs = o.blockSize !== undefined && o.blockSize !== 4096 ? ` --block-size ${o.blockSize}` : '';
  return `node dist/bench/model-long.js --mode ${o.mode} --seed ${o.seed} --fault-seed ${o.faultSeed} --ops ${o.ops}${bs}${o.faults === false ? ' --no-faults' : ''}`;
}


class Incarnation {
  readonly io = new HeldIo();
  stores: CachedStore[] = [];
  constructor(
    readonly cache: Cache,
    readonly dev: MemDevice,
  ) {}
}

export async function runModel(o: ModelOptions): Promise<ModelResult> {
  try {
    return await run(o);
  } catch (err) {
    (err as Error).message += `\n  reproduce: ${reproduction(o)}`;
    throw err;
  }
}

async function run(o: ModelOptions): Promise<ModelResult> {
  const BS = o.blockSize ?? 4096;
  // Not a multiple of the block size: the tail block is never cached.
  const VOL_SIZE = BLOCKS * BS + 1536;
  const DEVICE = deviceBytesFor(10, BS, 4 * BS);
  const w = rng(o.seed);
  const sched = rng((o.seed ^ 0x9e3779b9) >>> 0);
  const f = rng(o.faultSeed);
  const clock = new VirtualClock((o.faultSeed ^ 0xc10c) >>> 0);
  const faults = o.faults !== false;
  const dir = tmpDir('model');
  const cachePath = path.join(dir, 'cache');
  const backs = [new ControlledStore(VOL_SIZE, 'a'), new ControlledStore(VOL_SIZE, 'b')];
  for (const b of backs) stampBytes(b.data, 0, 0);
  const res: ModelResult = { ops: 0, reads: 0, checkedReads: 0, blockReads: 0, blockHits: 0, hitRate: 0, crashes: 0, hostCrashes: 0, restarts: 0, deviceErrors: 0 };
  let gen = 1;
  let readFail = 0;
  let writeFail = 0;
  const writesInFlight = new Set<WriteRec>();
  const readsInFlight = new Set<ReadRec>();
  let inflight = new Set<Promise<void>>();
  /** The first operation that failed (a read that did not check, an error): thrown by the loop. */
  let failure: unknown = null;

  /** The host boot the daemon runs in: a host crash starts another one. */
  let boot = 0;
  const open = async (image?: Uint8Array): Promise<Incarnation> => {
    const dev = new MemDevice(DEVICE, image);
    dev.readError = () => readFail > 0 && f() < readFail;
    dev.writeError = () => writeFail > 0 && f() < writeFail;
    // The device must be readable at open (an unreadable cache device fails Cache.open).
    // A write error burst ends with the incarnation it disabled.
    const saved = readFail;
    readFail = writeFail = 0;
    const cache = await Cache.open({ path: cachePath, size: DEVICE, blockSize: BS, segmentSize: 4 * BS, buffers: 3, engine: dev, bootId: `boot-${boot}` });
    readFail = saved;
    const inc = new Incarnation(cache, dev);
    dev.io = inc.io;
    for (const b of backs) b.io = inc.io;
    inc.stores = backs.map(
      (b, i) => new CachedStore({ backing: b, cache, name: `v${i}`, mode: o.mode, maxBytes: i === 1 ? 12 * BS : undefined }),
    );
    return inc;
  };
  const account = (c: Cache): void => {
    const st = c.stats();
    res.blockReads += st.reads;
    res.blockHits += st.readHits;
    res.deviceErrors += st.readErrors + st.writeErrors;
  };

  /** Drives held I/O (a random completion order) and the clock until `until` settles; false if it cannot (a frozen device). */
  const pumpUntil = (inc: Incarnation, until: Promise<unknown>): Promise<boolean> => pumpHeld(inc.io, clock, sched, () => inc.dev.frozen, until);

  /** The process dies now: nothing more completes; returns the next incarnation. */
  const crash = async (inc: Incarnation): Promise<Incarnation> => {
    inc.dev.freeze();
    // Backing writes in flight were applied by the server or not.
    for (const h of inc.io.pending) if (h.kind === 'write' && !h.done && f() < 0.5 && h.label.startsWith('backing')) h.effect();
    inc.io.pending.length = 0;
    for (const b of backs) b.io = null;
    account(inc.cache);
    fs.closeSync((inc.cache as unknown as { fd: number }).fd);
    writesInFlight.clear();
    readsInFlight.clear();
    inflight = new Set();
    res.crashes++;
    if (f() < 0.5) {
      boot++;
      res.hostCrashes++;
      return open(inc.dev.crashImage(f));
    }
    return open(inc.dev.processCrashImage(f));
  };

  /** Clean close, possibly cut in the middle (see the file comment); returns the next incarnation. */
  const restart = async (inc: Incarnation): Promise<Incarnation> => {
    assert.ok(await pumpUntil(inc, Promise.all(inflight)), 'operations never finished before a restart');
    const cut = f();
    if (cut < 0.25) inc.dev.freezeAtWrite = inc.dev.writes + 1;
    const closed = (async () => {
      for (const s of inc.stores) await s.close();
      await inc.cache.close();
    })();
    if (!(await pumpUntil(inc, closed))) return crash(inc);
    account(inc.cache);
    res.restarts++;
    const meta = `${cachePath}.meta`;
    if (cut >= 0.25 && cut < 0.4 && fs.existsSync(meta)) {
      // Cut before the rename: no metadata, a torn temporary file.
      const bytes = fs.readFileSync(meta);
      fs.writeFileSync(`${meta}.tmp`, bytes.subarray(0, Math.floor(f() * bytes.byteLength)));
      fs.unlinkSync(meta);
    } else if (cut >= 0.4 && cut < 0.5 && fs.existsSync(meta)) {
      // A file system without atomic rename: the metadata itself torn.
      const bytes = fs.readFileSync(meta);
      fs.writeFileSync(meta, bytes.subarray(0, Math.floor(f() * bytes.byteLength)));
    }
    for (const b of backs) b.io = null;
    return open(new Uint8Array(inc.dev.image));
  };

  const checkRead = (r: ReadRec, out: Uint8Array, at: string): void => {
    res.checkedReads++;
    checkSectors(r.v, r.start, out, r.snap, r.concurrent, `${at}: read [${r.start}, ${r.end})`, "the backing store's data when the read started", "an overlapping write's");
  };

  const issue = (inc: Incarnation, i: number): void => {
    const v = w() < 0.5 ? 0 : 1;
    const s = inc.stores[v];
    const back = backs[v];
    const kind = w();
    const hot = kind < 0.7 ? 0.9 : 0.5;
    const firstBlock = w() < hot ? Math.floor(w() * HOT_BLOCKS) : Math.floor(w() * (BLOCKS + 1));
    const lastBlock = Math.min(BLOCKS, firstBlock + Math.floor(w() * 4));
    const start = firstBlock * BS + (w() < 0.25 ? SECTOR * Math.floor(w() * 8) : 0);
    let end = Math.min((lastBlock + 1) * BS, VOL_SIZE);
    if (w() < 0.25) end = Math.max(start + SECTOR, end - SECTOR * Math.floor(w() * 8));
    if (end > VOL_SIZE || end <= start) return;
    const len = end - start;
    res.ops++;
    let p: Promise<void>;
    if (kind < 0.7) {
      res.reads++;
      const out = new Uint8Array(len);
      const r: ReadRec = { v, start, end, snap: new Uint8Array(back.data.subarray(start, end)), concurrent: [] };
      for (const x of writesInFlight) if (x.v === v && x.start < end && x.end > start) r.concurrent.push(x);
      readsInFlight.add(r);
      p = s.read(start, splitRandomly(out, w)).then(() => {
        if (!readsInFlight.delete(r)) return; // crashed meanwhile: never answered
        checkRead(r, out, `op ${i}`);
      });
    } else {
      let x: WriteRec;
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
      p = p.then(() => void writesInFlight.delete(x));
    }
    const tracked: Promise<void> = p.then(noop, (err: unknown) => void (failure ??= err)).finally(() => inflight.delete(tracked));
    inflight.add(tracked);
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
    let disabledAt = -1;
    for (let i = 0; i < o.ops; i++) {
      if (failure !== null) throw failure;
      if (faults) {
        const p = f();
        if (p < 0.0005) inc = await restart(inc);
        else if (p < 0.001) {
          // Crash at one of the next device writes (mid segment write), or now if none comes.
          inc.dev.freezeAtWrite = inc.dev.writes + 1 + Math.floor(f() * 3);
          freezeArmed = i + 200;
        } else if (p < 0.002) readFail = readFail > 0 ? 0 : 0.1;
        else if (p < 0.0022) writeFail = writeFail > 0 ? 0 : 0.3;
      }
      // A write error turned the cache off (pass-through): the operator restarts it a bit later.
      if (!inc.cache.log.disabled) disabledAt = -1;
      else if (disabledAt < 0) disabledAt = i;
      else if (i - disabledAt >= 100) inc = await restart(inc);
      if (inc.dev.frozen || i === freezeArmed) {
        freezeArmed = -1;
        inc = await crash(inc);
      }
      issue(inc, i);
      // Let held I/O progress; keep at most WINDOW operations in flight.
      const target = 1 + Math.floor(w() * WINDOW);
      while (inflight.size >= target && !inc.dev.frozen) {
        await settle();
        clock.step();
        if (inflight.size < target) break;
        if (!inc.io.stepRandom(sched)) break;
      }
    }
    readFail = writeFail = 0;
    if (!(await pumpUntil(inc, Promise.all(inflight)))) inc = await crash(inc);
    if (failure !== null) throw failure;
    for (let v = 0; v < 2; v++) {
      const out = new Uint8Array(VOL_SIZE);
      assert.ok(await pumpUntil(inc, inc.stores[v].read(0, [out])), 'final read never finished');
      const at = Buffer.compare(out, backs[v].data);
      if (at !== 0) {
        let b = 0;
        while (out[b] === backs[v].data[b]) b++;
        assert.fail(`final read of volume ${v} differs from the backing store at byte ${b}`);
      }
    }
    const st = inc.cache.stats();
    assert.ok(st.volumes.v1.blocks <= 12, 'volume cap exceeded');
    account(inc.cache);
    await pumpUntil(inc, inc.cache.log.quiesce());
    res.hitRate = res.blockReads > 0 ? res.blockHits / res.blockReads : 0;
    return res;
  } finally {
    for (const b of backs) b.io = null;
    inc.dev.io = null;
    try {
      if (inc.dev.frozen) fs.closeSync((inc.cache as unknown as { fd: number }).fd);
      else {
        await clock.until(inc.io.drain());
        await clock.until(inc.cache.abort());
      }
    } finally {
      clock.uninstall();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}
