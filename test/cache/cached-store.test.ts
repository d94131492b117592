import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore, type CacheMode } from '../../src/cache/cached-store';
import { SUPERBLOCK_SIZE } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { FaultyEngine, gate, MemStore, stamp } from './helpers';

const BS = 4096;
const VOL = 64 * BS;

describe('cached store', () => {
  let dir: string;
  let engine: FaultyEngine;
  let cache: Cache;
  let mem: MemStore;

  async function open(mode: CacheMode = 'writethrough'): Promise<CachedStore> {
    cache = await Cache.open({
      path: path.join(dir, 'cache'),
      size: SUPERBLOCK_SIZE + 8 * (4096 + 16384),
      segmentSize: 16384,
      buffers: 4,
      engine,
    });
    return new CachedStore({ backing: mem, cache, name: 'vol', mode });
  }

  function block(offset: number, gen: number, len = BS): Uint8Array {
    const b = new Uint8Array(len);
    stamp(b, offset, gen);
    return b;
  }

  async function readBack(store: CachedStore, offset: number, len: number): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    await store.read(offset, [out]);
    return out;
  }

  /** Lets background insertions finish. */
  async function settle(): Promise<void> {
    await cache.log.quiesce();
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-store-'));
    engine = new FaultyEngine(new FsEngine());
    mem = new MemStore(VOL);
    stamp(mem.data, 0, 1);
  });

  afterEach(async () => {
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('writethrough: writes are cached, read misses insert, hits skip the backing store', async () => {
    const s = await open();
    await s.write(0, [block(0, 2, 2 * BS)]);
    await settle();
    const before = mem.reads;
    assert.deepEqual(await readBack(s, 0, 2 * BS), block(0, 2, 2 * BS));
    assert.equal(mem.reads, before);
    assert.deepEqual(await readBack(s, 8 * BS, BS), mem.data.subarray(8 * BS, 9 * BS));
    await settle();
    assert.deepEqual(await readBack(s, 8 * BS, BS), mem.data.subarray(8 * BS, 9 * BS));
    assert.equal(mem.reads, before + 1);
    const st = cache.stats();
    assert.equal(st.readHits, 3);
    assert.equal(st.reads, 4);
    assert.equal(st.volumes.vol.insertions, 3);
  });

  it('writearound and none: writes only invalidate; none never inserts', async () => {
    let s = await open('writearound');
    await s.read(0, [new Uint8Array(BS)]);
    await settle();
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    await s.write(0, [block(0, 5)]);
    assert.equal(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, BS), block(0, 5));
    await s.close();
    await cache.close();
    s = await open('none');
    await readBack(s, 4 * BS, BS);
    await settle();
    assert.equal(cache.map.peek(s.volume, 4), -1);
    // Warm from the writearound run: block 0 is cached, and a write in mode none drops it.
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    await s.write(100, [new Uint8Array(10).fill(9)]);
    assert.equal(cache.map.peek(s.volume, 0), -1);
  });

  it('partial and unaligned writes invalidate whole blocks and never merge stale data', async () => {
    const s = await open();
    await readBack(s, 0, 4 * BS);
    await settle();
    await s.write(BS + 100, [new Uint8Array(300).fill(0xaa), new Uint8Array(BS).fill(0xbb)]);
    const expect = new Uint8Array(mem.data.subarray(0, 4 * BS));
    assert.equal(cache.map.peek(s.volume, 1), -1);
    assert.equal(cache.map.peek(s.volume, 2), -1);
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, 4 * BS), expect);
    await settle();
    // Sub-block read of a cached block; and discard / write-zeroes.
    assert.deepEqual(await readBack(s, BS + 50, 1000), expect.subarray(BS + 50, BS + 1050));
    await s.discard(2 * BS, BS);
    await s.writeZeroes(3 * BS + 512, 512, false);
    expect.fill(0, 2 * BS, 3 * BS);
    expect.fill(0, 3 * BS + 512, 3 * BS + 1024);
    assert.deepEqual(await readBack(s, 0, 4 * BS), expect);
  });

  it('a write issued while a read miss of the same block is in flight wins', async () => {
    const s = await open();
    const held = gate();
    const reached = gate();
    mem.readHook = async () => {
      mem.readHook = null;
      reached.resolve();
      await held.promise;
    };
    const read = readBack(s, 0, BS);
    await reached.promise;
    // The backing read is in flight (its data is the old generation): write the block.
    await s.write(0, [block(0, 7)]);
    held.resolve();
    await read;
    await settle();
    assert.deepEqual(await readBack(s, 0, BS), block(0, 7));
    assert.deepEqual(mem.data.subarray(0, BS), block(0, 7));
  });

  it('a read miss overlapping a write still in flight inserts nothing stale', async () => {
    const s = await open('writearound');
    const held = gate();
    const reached = gate();
    mem.writeHook = async () => {
      mem.writeHook = null;
      reached.resolve();
      await held.promise;
    };
    const write = s.write(0, [block(0, 9)]);
    await reached.promise;
    // The read sees the old data in the backing store; it must not be cached.
    assert.deepEqual(await readBack(s, 0, BS), block(0, 1));
    await settle();
    held.resolve();
    await write;
    await settle();
    assert.deepEqual(await readBack(s, 0, BS), block(0, 9));
  });

  it('a guest changing its buffer during a write cannot make cache and backing store differ', async () => {
    const s = await open();
    const held = gate();
    const reached = gate();
    mem.writeHook = async () => {
      mem.writeHook = null;
      reached.resolve();
      await held.promise;
    };
    const guest = block(0, 11);
    const write = s.write(0, [guest]);
    await reached.promise;
    guest.fill(0xee);
    held.resolve();
    await write;
    await settle();
    assert.notEqual(cache.map.peek(s.volume, 0), -1);
    assert.deepEqual(await readBack(s, 0, BS), block(0, 11));
    assert.deepEqual(mem.data.subarray(0, BS), block(0, 11));
  });

  it('cache device errors fall back to the backing store; write errors turn the cache off', async () => {
    const s = await open();
    await readBack(s, 0, 40 * BS);
    await settle();
    await cache.log.flush();
    engine.failReads = true;
    assert.deepEqual(await readBack(s, 0, 40 * BS), mem.data.subarray(0, 40 * BS));
    assert.ok(cache.stats().readErrors > 0);
    engine.failReads = false;
    engine.failWrites = true;
    await readBack(s, 0, 64 * BS);
    await settle();
    await cache.log.flush();
    assert.equal(cache.stats().disabled, true);
    engine.failWrites = false;
    await s.write(0, [block(0, 3, 8 * BS)]);
    assert.deepEqual(await readBack(s, 0, 64 * BS), mem.data);
    assert.deepEqual(mem.data.subarray(0, 8 * BS), block(0, 3, 8 * BS));
  });
});
