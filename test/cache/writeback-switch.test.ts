/**
 * Cache-mode switches at run time (CachedStore.setMode) and the destage pace (destage.ts):
 *   - a seeded model run: batches of concurrent reads, whole and partial writes, discards and
 *     write-zeroes, with switches between every mode started in the middle of them (not waited
 *     for while the batches go on); every read is checked sector by sector against the newest
 *     acknowledged data (stamped), a switch out of write-back resolves with nothing dirty and
 *     the dirty count never grows meanwhile beyond the write-back writes that were in flight;
 *     at the end the backing store (after a flush) and reads through the cache equal the model;
 *   - a backing store down during a switch out of write-back: the switch fails with a clear
 *     error, no block is lost, and the dirty blocks reach the backing store once it is back;
 *   - into write-back: at once, yet a write-back write waits for the writes of the old mode in
 *     flight under its blocks, and the next guest flush flushes the backing store;
 *   - rounds never overlap: a discard of a dirty block waiting, with the destage loop, for a
 *     round of other blocks gets the next round; the loop's waits for it and finds the block
 *     clean, so no older copy reaches the backing store after the discard;
 *   - destaging yields to guest I/O: a guest miss that arrives while destage writes are in
 *     flight is served before any further destage write is issued, and the destage writes in
 *     flight stay within WRITES_IN_FLIGHT (event-driven: held operations, no timing).
 * The model runs replay from their seed: the destage pace, clean-mark and identity timers run
 * on a virtual clock (test/support/virtual-clock.ts) stepped once per loop turn from a stream
 * derived from the seed; a failure prints the VBC_WBSWITCH_RUN line that reruns it, and the
 * same variable takes a seed range for soaks (test/support/seeded-runs.ts).
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode } from '../../src/cache/cached-store';
import { WRITES_IN_FLIGHT } from '../../src/cache/destage';
import { deviceBytesFor } from '../../src/cache/segment';
import { CACHE_MODES } from '../../src/config/config';
import type { VhostError } from '../../src/native/errors';
import { gate, MemStore, rng } from './helpers';
import { settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';
import { rerun, type SeededRun, seededRunsFromEnv } from '../support/seeded-runs';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';
import { VirtualClock } from '../support/virtual-clock';
import { waitFor } from '../support/wait';

const BS = 4096;
const SECTOR = 512;
const BLOCKS = 40;
const HOT = 12;

interface SwitchRun {
  switches: number;
  /** Switches out of write-back that found dirty blocks (and destaged them). */
  drainedSwitches: number;
  /** Writes that went through the range lock and destaged dirty blocks of their range first. */
  destaged: number;
  sectorsChecked: number;
  /** Destage rounds run, virtual timers fired. */
  rounds: number;
  timers: number;
  /** sha256 of the run as it happened: the dirty count at every turn, every read's bytes. */
  digest: string;
}

const ENV = 'VBC_WBSWITCH_RUN';
const FILE = 'dist/test/cache/writeback-switch.test.js';

async function switchRun(seed: number, batches: number): Promise<SwitchRun> {
  try {
    return await runSwitches(seed, batches);
  } catch (err) {
    (err as Error).message += `\n  reproduce: ${rerun(ENV, { seed, size: batches }, FILE)}`;
    throw err;
  }
}

async function runSwitches(seed: number, batches: number): Promise<SwitchRun> {
  const r = rng(seed);
  // The timers (destage pace, clean marks, identity) on a clock of the seed's own stream.
  const clock = new VirtualClock((seed ^ 0x5eed) >>> 0);
  const hash = createHash('sha256');
  const dir = tmpDir('wbswitch');
  const DEVICE = deviceBytesFor(10, BS, 8 * BS);
  const back = new MemStore(BLOCKS * BS, 'a');
  stampBytes(back.data, 0, 1);
  const model = new Uint8Array(back.data);
  // Backing I/O completes after a random number of event-loop turns: destage rounds, old-mode
  // writes and new ones overlap.
  const delay = async (): Promise<void> => {
    for (let k = Math.floor(r() * 3); k > 0; k--) await new Promise<void>((res) => setImmediate(res));
  };
  back.readHook = delay;
  back.writeHook = delay;
  const dev = new MemDevice(DEVICE);
  const cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, blockSize: BS, segmentSize: 8 * BS, buffers: 3, engine: dev });
  const s = new CachedStore({ backing: back, cache, name: 'v', mode: 'writeback', readAhead: 0, dirtyLimitBlocks: 12, backingTimeoutMs: 20000 });
  clock.install();
  const run: SwitchRun = { switches: 0, drainedSwitches: 0, destaged: 0, sectorsChecked: 0, rounds: 0, timers: 0, digest: '' };
  let gen = 10;
  let switching: Promise<void> | null = null;
  /** Most dirty blocks allowed while a switch out of write-back is destaging. */
  let dirtyCap = Infinity;
  /** Blocks of the write-back writes in flight (they may still become dirty after a switch). */
  let wbInFlight = 0;
  const check = (start: number, got: Uint8Array, at: string): void => {
    hash.update(got);
    for (let o = 0; o < got.byteLength; o += SECTOR) {
      run.sectorsChecked++;
      const abs = start + o;
      assert.equal(
        Buffer.compare(got.subarray(o, o + SECTOR), model.subarray(abs, abs + SECTOR)),
        0,
        `${at}: sector at ${abs} holds ${Buffer.from(got.subarray(o, o + 8)).toString('hex')}, the newest acknowledged data is ${Buffer.from(model.subarray(abs, abs + 8)).toString('hex')}`,
      );
    }
  };
  try {
    for (let batch = 0; batch < batches; batch++) {
      // Disjoint block ranges within a batch: every read has one right answer, the model's.
      const taken = new Set<number>();
      const ops: Promise<void>[] = [];
      const n = 1 + Math.floor(r() * 5);
      const switchAt = switching === null && r() < 0.15 ? Math.floor(r() * n) : -1;
      for (let j = 0; j < n; j++) {
        if (j === switchAt) {
          const to = CACHE_MODES[Math.floor(r() * CACHE_MODES.length)] as CacheMode;
          const from = s.mode;
          run.switches++;
          const leaving = from === 'writeback' && to !== 'writeback';
          if (leaving && s.destager.dirty + wbInFlight > 0) run.drainedSwitches++;
          if (leaving) dirtyCap = s.destager.dirty + wbInFlight;
          const p = s.setMode(to).then(() => {
            if (leaving) assert.equal(s.destager.dirty, 0, `batch ${batch}: the switch to ${to} resolved with dirty blocks`);
          });
          switching = p.finally(() => {
            switching = null;
            dirtyCap = Infinity;
          });
        }
        const first = r() < 0.7 ? Math.floor(r() * HOT) : Math.floor(r() * BLOCKS);
        const count = Math.min(BLOCKS - first, 1 + Math.floor(r() * 3));
        let free = true;
        for (let b = first; b < first + count; b++) free &&= !taken.has(b);
        if (!free) continue;
        for (let b = first; b < first + count; b++) taken.add(b);
        const start = first * BS + (r() < 0.3 ? SECTOR * Math.floor(r() * 8) : 0);
        const end = Math.max(start + SECTOR, (first + count) * BS - (r() < 0.3 ? SECTOR * Math.floor(r() * 7) : 0));
        const kind = r();
        if (kind < 0.4) {
          const out = new Uint8Array(end - start);
          ops.push(s.read(start, [out]).then(() => check(start, out, `batch ${batch}: read in mode ${s.mode}`)));
          continue;
        }
        let data: Uint8Array | null = null;
        let op: Promise<void>;
        const wb = s.mode === 'writeback';
        if (kind < 0.9) {
          data = new Uint8Array(end - start);
          stampBytes(data, start, gen++);
          op = s.write(start, [data]);
        } else if (kind < 0.95) {
          op = s.discard(start, end - start);
        } else {
          op = s.writeZeroes(start, end - start, false);
        }
        if (wb) wbInFlight += count;
        ops.push(
          op.then(() => {
            if (wb) wbInFlight -= count;
            if (data === null) model.fill(0, start, end);
            else model.set(data, start);
          }),
        );
      }
      let done = false;
      void Promise.all(ops).finally(() => (done = true));
      while (!done) {
        assert.ok(s.destager.dirty <= dirtyCap, `batch ${batch}: ${s.destager.dirty} dirty blocks while switching out of write-back, ${dirtyCap} when it started`);
        hash.update(`${s.destager.dirty} `);
        await clock.turn();
      }
      await Promise.all(ops);
      // Sometimes the batches wait for the switch; otherwise it goes on under the next ones.
      if (switching !== null && r() < 0.3) await clock.until(switching);
    }
    if (switching !== null) await clock.until(switching);
    run.destaged = s.destager.destaged;
    // Through the cache, then on the backing store once everything is written back.
    const out = new Uint8Array(BLOCKS * BS);
    await clock.until(s.read(0, [out]));
    check(0, out, 'final read through the cache');
    await clock.until(s.flushCache());
    await clock.until(s.flush());
    assert.equal(Buffer.compare(back.data, model), 0, 'the backing store after a flush differs from the acknowledged data');
    run.rounds = s.destager.rounds;
    run.timers = clock.fired;
    run.digest = hash.digest('hex');
    return run;
  } finally {
    back.readHook = back.writeHook = null;
    try {
      await clock.until(s.destager.close());
      await clock.until(cache.abort());
    } finally {
      clock.uninstall();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

describe('cache-mode switches at run time', function () {
  this.timeout(120000);

  // VBC_WBSWITCH_RUN=SEED[..LAST][:BATCHES] runs those instead (seeded-runs.ts): the line a
  // failure prints, or a soak over fresh seeds.
  const only = seededRunsFromEnv(ENV, 400);
  const runs: SeededRun[] = only ?? [1, 2, 3, 4].map((seed) => ({ seed, size: 400 }));
  for (const { seed, size } of runs) {
    it(`seed ${seed}: ${size} batches with switches between every mode in the middle of them; every read is the newest acknowledged data, the backing store equals it after a flush`, async function () {
      // Soaks run longer runs (about 1 s per 400 batches alone, several times that under load).
      this.timeout(Math.max(120000, size * 1000));
      const res = await switchRun(seed, size);
      if (process.env.VBC_MODEL_STATS) console.log(seed, JSON.stringify(res));
      assert.ok(res.switches >= size / 20, `only ${res.switches} switches`);
      assert.ok(res.drainedSwitches >= 3, `only ${res.drainedSwitches} switches out of write-back had dirty blocks to destage`);
      assert.ok(res.destaged > 0, 'nothing destaged');
    });
  }
  if (only !== null) return;

  it('a seed replays exactly: the destage timers run on the virtual clock, so the dirty count at every turn and every read are the same', async () => {
    const a = await switchRun(5, 150);
    const b = await switchRun(5, 150);
    assert.ok(a.timers > 0 && a.rounds > 0, JSON.stringify(a));
    assert.deepEqual(b, a);
    const c = await switchRun(6, 150);
    assert.notEqual(c.digest, a.digest);
  });

  describe('one volume', () => {
    let dir: string;
    let cache: Cache;
    let back: MemStore;
    let store: CachedStore;
    const DEVICE = deviceBytesFor(8, BS, 8 * BS);
    const open = async (mode: CacheMode, o: { timeoutMs?: number; yieldMaxMs?: number; limit?: number } = {}): Promise<void> => {
      cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, blockSize: BS, segmentSize: 8 * BS, buffers: 3, engine: new MemDevice(DEVICE) });
      store = new CachedStore({ backing: back, cache, name: 'v', mode, readAhead: 0, dirtyLimitBlocks: o.limit ?? 32, backingTimeoutMs: o.timeoutMs ?? 20000, ...(o.yieldMaxMs !== undefined ? { yieldMaxMs: o.yieldMaxMs } : {}) });
    };
    const block = (b: number, gen: number): Uint8Array => {
      const d = new Uint8Array(BS);
      stampBytes(d, b * BS, gen);
      return d;
    };
    const onBacking = (b: number): Uint8Array => back.data.subarray(b * BS, (b + 1) * BS);

    beforeEach(() => {
      dir = tmpDir('wbswitch');
      back = new MemStore(128 * BS);
    });
    /** Backing operations a test holds (released at the end whatever happened). */
    let held: { kind: string; offset: number; release: () => void }[] = [];
    afterEach(async () => {
      back.readHook = back.writeHook = null;
      for (const h of held.splice(0)) h.release();
      await store.destager.close();
      await cache.abort();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('a backing store down during a switch out of write-back: the switch fails saying what is not written back, nothing is lost, the blocks reach it once it is back', async () => {
      await open('writeback', { timeoutMs: 300 });
      // Down from the start: the background destaging writes nothing back before the switch.
      let down = true;
      back.writeHook = () => (down ? Promise.reject(new Error('backing store unreachable')) : Promise.resolve());
      for (const b of [2, 3, 9]) await store.write(b * BS, [block(b, 1)]);
      assert.equal(store.destager.dirty, 3);
      await assert.rejects(store.setMode('writethrough'), (e: VhostError) => {
        assert.match(e.message, /now in mode writethrough, but 3 write-back blocks are not written back yet.*backing store unreachable/);
        return true;
      });
      assert.equal(store.mode, 'writethrough');
      assert.equal(store.destager.dirty, 3);
      for (const b of [2, 3, 9]) {
        assert.deepEqual(onBacking(b), new Uint8Array(BS), `block ${b} is not on the backing store`);
        const out = new Uint8Array(BS);
        await store.read(b * BS, [out]);
        assert.deepEqual(out, block(b, 1), `block ${b} still reads its acknowledged data`);
      }
      // A write-through write of a dirty block fails while the store is down; the dirty data stays.
      await assert.rejects(store.write(3 * BS + SECTOR, [new Uint8Array(SECTOR)]), /backing store unreachable/);
      assert.equal(store.destager.dirty, 3);
      down = false;
      await store.setMode('writethrough');
      assert.equal(store.destager.dirty, 0);
      for (const b of [2, 3, 9]) assert.deepEqual(onBacking(b), block(b, 1), `block ${b} on the backing store`);
    });

    it('while switching out of write-back, a partial write of a dirty block goes to the backing store after the dirty data (merged there, not lost)', async () => {
      await open('writeback');
      await store.write(5 * BS, [block(5, 1)]);
      // Destage writes held: the switch cannot finish before the partial write arrives.
      const held = gate();
      back.writeHook = () => held.promise;
      const switched = store.setMode('writearound');
      const part = new Uint8Array(SECTOR).fill(0xab);
      const wrote = store.write(5 * BS + 2 * SECTOR, [part]);
      await settle();
      held.resolve();
      await Promise.all([switched, wrote]);
      const want = block(5, 1);
      want.set(part, 2 * SECTOR);
      assert.deepEqual(onBacking(5), want);
      const out = new Uint8Array(BS);
      await store.read(5 * BS, [out]);
      assert.deepEqual(out, want);
    });

    it('into write-back at once; the next guest flush flushes the backing store (the write-through writes before it are not flushed yet)', async () => {
      await open('writethrough');
      let flushes = 0;
      back.flush = () => {
        flushes++;
        return Promise.resolve();
      };
      await store.write(3 * BS, [block(3, 1)]);
      await store.setMode('writeback');
      await store.flush();
      assert.equal(flushes, 1);
      // Nothing written since: a write-back flush waits for nothing.
      await store.flush();
      assert.equal(flushes, 1);
    });

    it('into write-back at once, yet a write-back write waits for the write-through write in flight under its block (it merges with that data)', async () => {
      await open('writethrough');
      const held = gate();
      back.writeHook = () => held.promise;
      const old = store.write(7 * BS, [block(7, 1)]);
      await settle();
      await store.setMode('writeback');
      assert.equal(store.mode, 'writeback');
      // A partial write-back write of the same block: it merges with block 7 as written above.
      const part = new Uint8Array(SECTOR).fill(0xcd);
      let partDone = false;
      const wb = store.write(7 * BS, [part]).then(() => (partDone = true));
      await settle();
      assert.equal(partDone, false, 'the write-back write completed while the write-through write under its block was in flight');
      held.resolve();
      await Promise.all([old, wb]);
      back.writeHook = null;
      const want = block(7, 1);
      want.set(part, 0);
      const out = new Uint8Array(BS);
      await store.read(7 * BS, [out]);
      assert.deepEqual(out, want);
      await store.flushCache();
      assert.deepEqual(onBacking(7), want);
    });

    it('a discard destaging its dirty block while a round of others is in flight: when that round ends, the loop starts no round of the block beside the discard\'s (none writes it back after the discard)', async () => {
      // Below the watermarks: only the discard presses destaging.
      await open('writeback', { limit: 128 });
      held = [];
      let discards = 0;
      back.writeHook = (offset: number): Promise<void> => new Promise<void>((release) => held.push({ kind: 'write', offset, release }));
      // The discard lands as it is issued: a backing write still held lands after it.
      back.discard = (offset: number, length: number): Promise<void> => {
        discards++;
        back.data.fill(0, offset, offset + length);
        return Promise.resolve();
      };
      await store.write(2 * BS, [block(2, 1)]);
      await waitFor(() => held.length === 1, 'the round of block 2 issued');
      // Dirty after that round picked its blocks; the discard waits for the round to end.
      await store.write(7 * BS, [block(7, 1)]);
      const discarded = store.discard(7 * BS, BS);
      await settle();
      assert.equal(discards, 0);
      held.shift()?.release();
      await waitFor(() => held.length > 0, 'block 7 written back before the discard');
      await settle();
      assert.deepEqual(
        held.map((h) => h.offset / BS),
        [7],
        'one backing write of block 7 in flight (the round of the discard), none of another round',
      );
      // The discard's round ends, the discard reaches the backing store; what else is held lands after it.
      held.shift()?.release();
      await discarded;
      back.writeHook = null;
      for (const h of held.splice(0)) h.release();
      await waitFor(() => store.destager.dirty === 0, 'every block destaged');
      await store.destager.idle();
      assert.deepEqual(onBacking(7), new Uint8Array(BS), 'block 7 on the backing store after the discard');
      const out = new Uint8Array(BS);
      await store.read(7 * BS, [out]);
      assert.deepEqual(out, new Uint8Array(BS), 'block 7 reads zeros after the discard');
    });

    it('destaging yields to guest I/O: a guest miss arriving while destage writes are in flight is read before any further destage write, and at most WRITES_IN_FLIGHT are in flight', async () => {
      // No starvation guard during the test: only the guest going idle lets destaging go on.
      // A dirty limit far above what is written: destaging is never pressed (watermarks).
      await open('writeback', { yieldMaxMs: 3_600_000, limit: 128 });
      // Held backing I/O: destage writes and the guest's read, in issue order.
      held = [];
      const hold = (kind: string) => (offset: number): Promise<void> => new Promise<void>((release) => held.push({ kind, offset, release }));
      back.writeHook = hold('write');
      back.readHook = hold('read');
      // Every other block: one backing write per block, more than WRITES_IN_FLIGHT of them.
      const blocks = Array.from({ length: WRITES_IN_FLIGHT + 4 }, (_, i) => 2 * i);
      await Promise.all(blocks.map((b) => store.write(b * BS, [block(b, 1)])));
      await waitFor(() => held.length > 0, 'destage writes issued');
      await settle();
      const firstWrites = held.length;
      assert.equal(firstWrites, WRITES_IN_FLIGHT, 'the first round issues WRITES_IN_FLIGHT writes at once (no more)');
      // A guest read miss (an odd block: never written).
      const out = new Uint8Array(BS);
      const read = store.read(1 * BS, [out]);
      await waitFor(() => held.some((h) => h.kind === 'read'), 'the guest read issued');
      // The destage writes in flight complete; none is issued while the guest read waits.
      while (held[0]?.kind === 'write') {
        held.shift()?.release();
        await settle();
        const after = held.slice(held.findIndex((h) => h.kind === 'read') + 1);
        assert.ok(after.every((h) => h.kind !== 'write'), 'a destage write was issued while the guest read was pending');
      }
      assert.ok(store.destager.dirty > 0, 'destaging is not over');
      held.shift()?.release();
      await read;
      assert.deepEqual(out, onBacking(1));
      // The guest is idle again: destaging goes on and ends.
      back.readHook = null;
      back.writeHook = null;
      for (const h of held.splice(0)) h.release();
      await waitFor(() => store.destager.dirty === 0, 'every block destaged');
      assert.ok(store.destager.maxWritesInFlight <= WRITES_IN_FLIGHT, `${store.destager.maxWritesInFlight} destage writes were in flight at once`);
      for (const b of blocks) assert.deepEqual(onBacking(b), block(b, 1), `block ${b} on the backing store`);
    });
  });
});
