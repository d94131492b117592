/**
 * Exhaustive race tests of CachedStore over a controllable backing store and cache device
 * (test/support): every interleaving of a few operations on one block or overlapping ranges —
 * read misses, partial and full hits, writes (aligned and partial), discards, write-zeroes, and
 * an "evictor" that inserts another volume's blocks until the log wraps, rewriting the segment
 * that holds our blocks (read-ahead, eviction, segment write) — each checked against the model:
 *   - every byte a read returns is a value the backing store held at some moment between the
 *     read's start and its completion (never an older generation, never another volume's data);
 *   - afterwards, every block the cache holds (RAM or device) equals the backing store, and a
 *     read of the whole volume through the cache equals the backing store.
 *
 * Cache: 3 segments of 4 blocks (12 slots), 2 RAM buffers. Setup caches blocks 0..3 of the
 * volume in segment 0, written to the device and no longer in RAM, and fills segments 1 and 2
 * with the other volume (segment 2 written, segment 1 emptied again; the hand about to wrap to
 * slot 0).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode } from '../../src/cache/cached-store';
import { deviceBytesFor, slotOffset } from '../../src/cache/segment';
import { ControlledStore } from '../support/controlled-store';
import { HeldIo } from '../support/held-io';
import { type Actor, explore, type Run, type RunResult } from '../support/interleavings';
import { MemDevice } from '../support/mem-device';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BS = 4096;
const SECTOR = 512;
const VOL = 8 * BS;
const DEVICE = deviceBytesFor(3, 4096, 16384);

/** What a scenario's actors may use. */
interface Env {
  store: CachedStore;
  backing: ControlledStore;
  cache: Cache;
  other: number;
}

type ActorSpec = (env: Env) => Actor;

interface Scenario {
  name: string;
  actors: ActorSpec[];
  /** Hold the cache device's I/O too (needed when the evictor or device hits take part). */
  device: boolean;
  /** State before the actors start (besides the common setup): e.g. block 4 cached in RAM. */
  prepare?: (env: Env) => Promise<void>;
}

let generation = 100;

function data(offset: number, len: number): Uint8Array {
  const d = new Uint8Array(len);
  stampBytes(d, offset, generation++);
  return d;
}

const read = (first: number, len: number): ActorSpec => (env) => ({
  label: `read [${first}, ${first + len})`,
  start: async () => {
    const out = new Uint8Array(len);
    await env.store.read(first, [out.subarray(0, len >> 1), out.subarray(len >> 1)]);
    return { read: first, out };
  },
});

const write = (first: number, len: number): ActorSpec => (env) => {
  const d = data(first, len);
  return { label: `write [${first}, ${first + len})`, start: () => env.store.write(first, [d]) };
};

const discard = (first: number, len: number): ActorSpec => (env) => ({
  label: `discard [${first}, ${first + len})`,
  start: () => env.store.discard(first, len),
});

const zeroes = (first: number, len: number): ActorSpec => (env) => ({
  label: `write-zeroes [${first}, ${first + len})`,
  start: () => env.store.writeZeroes(first, len, false),
});

/**
 * Inserts 5 blocks of the other volume: wraps the log, evicts segment 0's blocks (their REF bits
 * cleared before each block is placed, so CLOCK spares none of them) and rewrites segment 0.
 */
const evictor: ActorSpec = (env) => ({
  label: 'evictor',
  start: () => {
    const d = new Uint8Array(5 * BS).fill(0x5a);
    const bda = env.cache.map.bda;
    return env.cache.insert(env.other, 100, d, 5, () => {
      for (let i = 0; i < bda.size; i++) bda.unreference(i);
      return true;
    });
  },
});

async function setup(mode: CacheMode, dir: string): Promise<{ env: Env; dev: MemDevice }> {
  const dev = new MemDevice(DEVICE);
  const backing = new ControlledStore(VOL);
  stampBytes(backing.data, 0, 1);
  // No rewrite gathering: a wall-clock timer would make the held operations depend on time.
  const cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, segmentSize: 16384, buffers: 2, engine: dev, rewriteDelayMs: 0 });
  const store = new CachedStore({ backing, cache, name: 'vol', mode: mode === 'none' ? 'writethrough' : mode });
  const other = cache.registerVolume('other', 'other-1', 64 * BS);
  await store.read(0, [new Uint8Array(4 * BS)]);
  await cache.log.quiesce();
  assert.equal(await cache.insert(other, 0, new Uint8Array(8 * BS).fill(0xa5), 8, () => true), 8);
  // Segment 2 written, segment 1 emptied: the evictor's only device I/O is segment 0's
  // read-ahead and rewrite (a small state space).
  assert.equal(await cache.log.flush(), true);
  cache.invalidate(other, 0, 4);
  for (let b = 0; b < 4; b++) {
    const slot = cache.map.peek(store.volume, b);
    assert.equal(slot, b);
    assert.equal(cache.log.ramBlock(slot), null, 'setup: block still in RAM');
  }
  if (mode !== 'none') return { env: { store, backing, cache, other }, dev };
  // Mode none over the same warm cache: the blocks cached by an earlier run must be dropped by writes.
  cache.unregisterVolume(store.volume, backing.identity);
  const none = new CachedStore({ backing, cache, name: 'vol', mode: 'none' });
  return { env: { store: none, backing, cache, other }, dev };
}

/** The model checks (see the file comment); throws on a violation. */
async function check(r: RunResult, env: Env, dev: MemDevice, snapshots: Uint8Array[]): Promise<void> {
  r.errors.forEach((e, j) => assert.equal(e, undefined, `actor ${j} failed: ${String(e)}`));
  for (let j = 0; j < r.results.length; j++) {
    const res = r.results[j] as { read?: number; out?: Uint8Array } | undefined;
    if (res?.out === undefined || res.read === undefined) continue;
    const { out, read: at } = res;
    for (let s = 0; s < out.byteLength; s += SECTOR) {
      const got = out.subarray(s, s + SECTOR);
      const from = r.started[j] - 1;
      let seen = false;
      for (let k = from; k <= r.settled[j] && !seen; k++) {
        seen = Buffer.compare(got, snapshots[k].subarray(at + s, at + s + SECTOR)) === 0;
      }
      assert.ok(seen, `read at ${at}: sector at ${at + s} holds bytes the backing store never held during the read (${Buffer.from(got.subarray(0, 8)).toString('hex')})`);
    }
  }
  const { cache, store, backing } = env;
  const bda = cache.map.bda;
  for (let slot = 0; slot < cache.map.slots; slot++) {
    if (!bda.isValid(slot)) continue;
    const block = bda.blockOf(slot);
    const want = bda.volumeOf(slot) === env.other ? null : backing.data.subarray(block * BS, (block + 1) * BS);
    if (want === null) continue;
    const ram = cache.log.ramBlock(slot);
    const held = ram ?? dev.image.subarray(slotOffset(cache.geometry, slot), slotOffset(cache.geometry, slot) + BS);
    assert.ok(Buffer.compare(held, want) === 0, `cache slot ${slot} (${ram ? 'RAM' : 'device'}) holds stale data for block ${block}`);
  }
  const all = new Uint8Array(VOL);
  await store.read(0, [all]);
  assert.ok(Buffer.compare(all, backing.data) === 0, 'a read of the whole volume after the race differs from the backing store');
  assert.equal(await cache.log.flush(), true);
  for (let b = 0; b < 8; b++) {
    const one = new Uint8Array(BS);
    await store.read(b * BS, [one]);
    assert.ok(Buffer.compare(one, backing.data.subarray(b * BS, (b + 1) * BS)) === 0, `block ${b} read after a flush differs`);
  }
}

async function exploreScenario(s: Scenario, mode: CacheMode): Promise<number> {
  const dir = tmpDir('races');
  let current: { env: Env; dev: MemDevice; snapshots: Uint8Array[] } | null = null;
  try {
    return await explore(
      async () => {
        const { env, dev } = await setup(mode, dir);
        await s.prepare?.(env);
        await env.cache.log.quiesce();
        const io = new HeldIo();
        env.backing.io = io;
        if (s.device) dev.io = io;
        const snapshots = [new Uint8Array(env.backing.data)];
        current = { env, dev, snapshots };
        const run: Run = {
          io,
          actors: s.actors.map((a) => a(env)),
          observe: (event) => (snapshots[event] = new Uint8Array(env.backing.data)),
        };
        return run;
      },
      async (r) => {
        const { env, dev, snapshots } = current!;
        env.backing.io = null;
        dev.io = null;
        try {
          await check(r, env, dev, snapshots);
        } finally {
          await env.cache.abort();
        }
      },
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const B = BS;
const scenarios: Scenario[] = [
  // One block.
  { name: 'read miss x write (block 5)', device: false, actors: [read(5 * B, B), write(5 * B, B)] },
  { name: 'read miss x discard (block 5)', device: false, actors: [read(5 * B, B), discard(5 * B, B)] },
  { name: 'read miss x write-zeroes (block 5)', device: false, actors: [read(5 * B, B), zeroes(5 * B, B)] },
  { name: 'read miss x write x write (block 5)', device: false, actors: [read(5 * B, B), write(5 * B, B), write(5 * B, B)] },
  { name: 'read miss x read miss x write (block 5)', device: false, actors: [read(5 * B, B), read(5 * B, B), write(5 * B, B)] },
  { name: 'read miss x partial write x discard (block 5)', device: false, actors: [read(5 * B, B), write(5 * B + 1024, 512), discard(5 * B, B)] },
  {
    name: 'RAM hit x write x read miss (block 5 cached in RAM)',
    device: false,
    prepare: async (env) => void (await env.store.read(5 * B, [new Uint8Array(B)])),
    actors: [read(5 * B, B), write(5 * B, B), read(5 * B, B)],
  },
  // Overlapping ranges.
  { name: 'read miss [4, 7) x unaligned write [5.5, 6.5)', device: false, actors: [read(4 * B, 3 * B), write(5 * B + 2048, B)] },
  { name: 'read miss [5, 7) x write [6, 8) x discard [4, 6)', device: false, actors: [read(5 * B, 2 * B), write(6 * B, 2 * B), discard(4 * B, 2 * B)] },
  // Segment rewrites and eviction (the cache device is held too).
  { name: 'full device hit (block 2) x evictor', device: true, actors: [read(2 * B, B), evictor] },
  { name: 'partial hit [3, 5) x evictor', device: true, actors: [read(3 * B, 2 * B), evictor] },
  { name: 'read miss (block 6) x evictor', device: true, actors: [read(6 * B, B), evictor] },
  { name: 'device hit (block 1) x write (block 1)', device: true, actors: [read(1 * B, B), write(1 * B, B)] },
  { name: 'device hit [1, 3) x write-zeroes (block 2)', device: true, actors: [read(1 * B, 2 * B), zeroes(2 * B, B)] },
  { name: 'partial write (block 2) x evictor', device: true, actors: [write(2 * B + 512, 1024), evictor] },
];

describe('cached store races: every interleaving checked against the model', function () {
  this.timeout(600000);
  for (const mode of ['writethrough', 'writearound', 'none'] as CacheMode[]) {
    describe(mode, () => {
      for (const s of scenarios) {
        if (mode === 'none' && s.device) continue;
        it(s.name, async () => {
          const runs = await exploreScenario(s, mode);
          if (process.env.VBC_RACE_STATS) console.log(`${mode} ${s.name}: ${runs} interleavings`);
          assert.ok(runs > 1);
        });
      }
    });
  }
});
