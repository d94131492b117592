/**
 * Crash-point model of recovery (recovery.ts): seeded random reads, writes, discards and
 * write-zeroes on two volumes sharing a small cache on a simulated device that loses unflushed
 * writes and tears them at 512-byte sectors (mem-device.ts). Crashes are injected at every
 * kind of step: the device stops at one of the next few device writes, whatever it is (a
 * segment write, a header rewrite that invalidates, a volume table save), the operation in
 * flight never completes. Two kinds of crash, drawn: a host crash (power cut: the device keeps
 * its durable bytes plus any subset or torn prefix of the unflushed writes; the next start
 * runs in another boot: every clean block recovered is dropped, none may come back) and a
 * process crash (the same boot: every completed write kept, the one in flight kept, lost or
 * torn; the cache comes back warm). Each crash is followed by a start that recovers the index
 * from the segment headers; then every block of both volumes is read through the cache and
 * compared with the backing store (the truth: its writes are applied when issued): a block
 * the cache brought back older than the backing store fails the test. Sometimes volume 0's
 * backing store also changes while the cache is down (a file's identity changes with it).
 * Sometimes the device fails half of its writes for a few steps: the cache is disabled until
 * the next crash, its writes kill nothing on the device any more, and recovery must bring
 * back nothing of before (the floor saved, or the superblock retired: a cold start). Once per
 * run, at a random step, the device refuses every write: a write of a block it holds (sealed,
 * named by a header) must then fail with EIO and never be issued, since nothing can make that
 * header dead; the crash that follows recovers the block, still right.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import type { VhostError } from '../../src/native/errors';
import { assertCountsAgree, MemStore, rng } from './helpers';
import { MemDevice } from '../support/mem-device';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BS = 4096;
const BLOCKS = 40;
const HOT = 12;
const DEVICE = deviceBytesFor(8, BS, 4 * BS);

interface Run {
  crashes: number;
  /** Crashes of a run whose cache had been disabled by a device write error and had completed
   * a write since (so nothing of before may come back). */
  disabledCrashes: number;
  /** Writes failed (EIO, never issued) because the device refused to record a write error. */
  refused: number;
  /** Runs of the step where the device refuses every write (one per run). */
  deadWrites: number;
  recovered: number;
  hitsAfterCrash: number;
  hostCrashes: number;
  /** Blocks still cached after a process crash's recovery (warm). */
  warmAfterProcessCrash: number;
  readsChecked: number;
}

async function crashRun(seed: number, steps: number): Promise<Run> {
  const r = rng(seed);
  const dir = tmpDir('crash');
  const cachePath = path.join(dir, 'cache');
  const backs = [new MemStore(BLOCKS * BS, 'a'), new MemStore(BLOCKS * BS, 'b')];
  backs.forEach((b, v) => stampBytes(b.data, 0, v));
  let gen = 10;
  const run: Run = { crashes: 0, disabledCrashes: 0, refused: 0, deadWrites: 0, recovered: 0, hitsAfterCrash: 0, hostCrashes: 0, warmAfterProcessCrash: 0, readsChecked: 0 };
  /** The host boot the daemon runs in: a host crash starts another one. */
  let boot = 0;
  /** Steps left during which the device fails half of its writes. */
  let failing = 0;
  /** Write-like operations started and completed while the cache was disabled, since the last start. */
  let writesDisabled = 0;
  /** The step from which the device, once, refuses every write (deadWrite). */
  const deadAt = Math.floor(steps / 3 + (r() * steps) / 3);
  let dev = new MemDevice(DEVICE);
  let cache!: Cache;
  let stores: CachedStore[] = [];
  const open = async (): Promise<void> => {
    cache = await Cache.open({ path: cachePath, size: DEVICE, blockSize: BS, segmentSize: 4 * BS, buffers: 3, engine: dev, bootId: `boot-${boot}` });
    stores = backs.map((b, v) => new CachedStore({ backing: b, cache, name: `v${v}`, mode: v === 0 ? 'writethrough' : 'writearound', readAhead: 0 }));
  };
  /** Every block of both volumes through the cache equals the backing store. */
  const verify = async (at: string): Promise<void> => {
    for (let v = 0; v < 2; v++) {
      for (let b = 0; b < BLOCKS; b++) {
        const out = new Uint8Array(BS);
        await stores[v].read(b * BS, [out]);
        run.readsChecked++;
        assert.deepEqual(out, backs[v].data.subarray(b * BS, (b + 1) * BS), `${at}: volume ${v} block ${b} differs from the backing store`);
      }
    }
  };
  const crash = async (step: number): Promise<void> => {
    dev.freeze();
    // The process dies: nothing completes, its descriptors close (the lock goes with them).
    fs.closeSync((cache as unknown as { fd: number }).fd);
    run.crashes++;
    const disabled = cache.log.disabled;
    const wroteDisabled = writesDisabled > 0;
    if (wroteDisabled) run.disabledCrashes++;
    failing = 0;
    writesDisabled = 0;
    if (r() < 0.2) {
      // Changed behind the cache's back while it was down; a file's identity shows it.
      const b = Math.floor(r() * BLOCKS);
      stampBytes(backs[0].data.subarray(b * BS, (b + 1) * BS), b * BS, gen++);
      backs[0].identity = `${backs[0].identity}'`;
    }
    const host = r() < 0.5;
    if (host) {
      boot++;
      run.hostCrashes++;
    }
    dev = new MemDevice(DEVICE, host ? dev.crashImage(r) : dev.processCrashImage(r));
    await open();
    // A disabled run may have retired the superblock (the device is formatted: cold).
    assert.ok(cache.recovery !== null || disabled, `step ${step}: no recovery after a crash`);
    if (cache.recovery !== null) {
      assertCountsAgree(cache.map, `step ${step}`);
      assert.equal(cache.recovery.hostCrash, host, `step ${step}: crash kind`);
      // No write-back volume here: after a host crash nothing is kept.
      if (host) assert.equal(cache.map.map.size, 0, `step ${step}: clean blocks recovered after a host crash`);
      else run.warmAfterProcessCrash += cache.map.map.size;
    }
    // A write completed while disabled waited until that was durable.
    if (wroteDisabled) assert.equal(cache.map.map.size, 0, `step ${step}: blocks recovered after a write error`);
    run.recovered += cache.recovery?.entries ?? 0;
    const before = cache.stats().readHits;
    await verify(`step ${step}, after crash ${run.crashes}`);
    run.hitsAfterCrash += cache.stats().readHits - before;
  };
  /**
   * The device refuses every write from now on: a write of a block whose sealed header is on
   * the device fails with EIO and the backing store is untouched; then the process dies.
   * False (nothing done) when the cache holds no block.
   */
  const deadWrite = async (step: number): Promise<boolean> => {
    dev.writeError = null;
    dev.freezeAtWrite = Infinity;
    assert.ok(await cache.log.flush(), `step ${step}: flush before the dead device failed`);
    const held: [number, number][] = [];
    for (let v = 0; v < 2; v++) for (let b = 0; b < BLOCKS; b++) if (cache.map.peek(stores[v].volume, b) >= 0) held.push([v, b]);
    if (held.length === 0) return false;
    const [v, b] = held[Math.floor(r() * held.length)];
    const before = backs[v].data.slice(b * BS, (b + 1) * BS);
    dev.writeError = () => true;
    const data = new Uint8Array(BS);
    stampBytes(data, b * BS, gen++);
    await stores[v].write(b * BS, [data]).then(
      () => assert.fail(`step ${step}: a write was issued while the device refused to record the write error`),
      (err: VhostError) => assert.equal(err.code, 'EIO', `step ${step}: ${err.message}`),
    );
    assert.deepEqual(backs[v].data.subarray(b * BS, (b + 1) * BS), before, `step ${step}: the refused write reached the backing store`);
    run.refused++;
    run.deadWrites++;
    dev.freeze();
    await crash(step);
    return true;
  };
  await open();
  try {
    for (let step = 0; step < steps; step++) {
      if (step >= deadAt && run.deadWrites === 0 && failing === 0 && !cache.log.disabled && (await deadWrite(step))) continue;
      if (r() < 0.03) dev.freezeAtWrite = dev.writes + 1 + Math.floor(r() * 4);
      // A disabled cache hardly writes any more: its process dies between two steps.
      if (cache.log.disabled && r() < 0.1) {
        dev.freeze();
        await crash(step);
        continue;
      }
      if (failing === 0 && r() < 0.01) failing = 5 + Math.floor(r() * 20);
      dev.writeError = failing > 0 && failing-- > 0 ? () => r() < 0.5 : null;
      const v = r() < 0.6 ? 0 : 1;
      const s = stores[v];
      const first = r() < 0.7 ? Math.floor(r() * HOT) : Math.floor(r() * BLOCKS);
      const n = Math.min(BLOCKS - first, 1 + Math.floor(r() * 3));
      const kind = r();
      const startedDisabled = cache.log.disabled;
      let op: Promise<void>;
      if (kind < 0.45) {
        const out = new Uint8Array(n * BS);
        op = s.read(first * BS, [out]).then(() => {
          run.readsChecked++;
          assert.deepEqual(out, backs[v].data.subarray(first * BS, (first + n) * BS), `step ${step}: volume ${v} read of blocks ${first}..${first + n - 1}`);
        });
      } else if (kind < 0.85) {
        const data = new Uint8Array(n * BS);
        stampBytes(data, first * BS, gen++);
        op = s.write(first * BS, [data]);
      } else if (kind < 0.93) {
        op = s.discard(first * BS, n * BS);
      } else {
        op = s.writeZeroes(first * BS, n * BS, false);
      }
      // Settles at once unless it waits on the stopped device (then it never does).
      let done = false;
      void op.then(
        () => (done = true),
        () => (done = true),
      );
      while (!done && !dev.frozen) await new Promise((res) => setImmediate(res));
      if (done) {
        await op.then(
          () => {
            if (kind >= 0.45 && startedDisabled) writesDisabled++;
          },
          (err: VhostError) => {
            // Only a write the disabled cache could not make safe, never issued.
            assert.ok(err.code === 'EIO' && kind >= 0.45 && cache.log.disabled, `step ${step}: ${err.message}`);
            run.refused++;
          },
        );
      }
      if (dev.frozen) await crash(step);
    }
    // A crash armed at the last step and not reached: none during the final check.
    dev.freezeAtWrite = Infinity;
    await verify('end');
    return run;
  } finally {
    if (dev.frozen) fs.closeSync((cache as unknown as { fd: number }).fd);
    else await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('cache recovery after crashes at every step (seeded crash-point model)', function () {
  this.timeout(300000);
  for (const seed of [1, 2, 3, 4]) {
    it(`seed ${seed}: 1500 steps, every block checked after each crash`, async () => {
      const res = await crashRun(seed, 1500);
      if (process.env.VBC_MODEL_STATS) console.log(seed, JSON.stringify(res));
      assert.ok(res.crashes >= 10, `only ${res.crashes} crashes`);
      assert.ok(res.hostCrashes > 0 && res.hostCrashes < res.crashes, `${res.hostCrashes} host crashes of ${res.crashes}`);
      assert.ok(res.warmAfterProcessCrash > 0, 'nothing recovered after a process crash');
      assert.ok(res.disabledCrashes > 0, 'no crash after writes made while the cache was disabled');
      assert.equal(res.deadWrites, 1, 'the device never refused every write');
      // Recovery is warm: blocks come back and are hit (each one verified above).
      assert.ok(res.recovered > res.crashes, `${res.recovered} entries recovered over ${res.crashes} crashes`);
      assert.ok(res.hitsAfterCrash > 0, 'no hit after a crash');
    });
  }
});
