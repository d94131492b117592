/**
 * The cache in front of an NBD export when the export fails or changes (issue 10, item 6),
 * against MemNbdServer (volatile write cache, held writes, crashes, size changes), with data
 * stamped with offset and generation. Every read must return what the server holds now.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdStore } from '../../src/backing/nbd/nbd-store';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { FsEngine } from '../../src/io/fs-engine';
import type { VhostError } from '../../src/native/errors';
import { MemNbdServer } from './nbd-mem-server';
import { tmpDir } from '../support/tmp';
import { BLOCK, unixUri } from './nbd-servers';
import { stampBytes, stampGeneration, stamped } from '../support/stamps';

const SIZE = 1 << 20;

describe('cache over an NBD export that fails or changes', function () {
  this.timeout(30_000);
  let dir: string;
  let server: MemNbdServer;
  let engine: FsEngine;
  const caches: Cache[] = [];
  const stores: NbdStore[] = [];

  async function openCache(): Promise<Cache> {
    const c = await Cache.open({ path: path.join(dir, 'cache'), size: 4 << 20, segmentSize: 65536, engine });
    caches.push(c);
    return c;
  }

  async function openStore(cache: Cache): Promise<{ nbd: NbdStore; cached: CachedStore }> {
    const nbd = await NbdStore.open(unixUri(server.path), { backingTimeoutMs: 400, reconnectMinMs: 10, reconnectMaxMs: 50 });
    stores.push(nbd);
    return { nbd, cached: new CachedStore({ backing: nbd, cache, name: 'n' }) };
  }

  async function readBlock(s: CachedStore, block: number): Promise<Buffer> {
    const b = Buffer.alloc(BLOCK);
    await s.read(block * BLOCK, [b]);
    return b;
  }

  /** Reads `block` and checks it against the server's current content. */
  async function readsServer(s: CachedStore, block: number, what: string): Promise<void> {
    const got = await readBlock(s, block);
    const want = server.content(block * BLOCK, BLOCK);
    assert.ok(got.equals(want), `${what}: block ${block} read generation ${stampGeneration(got)}, the server holds ${stampGeneration(want)}`);
  }

  /** Waits (event loop turns, bounded) until the cache holds `block` of the volume. */
  async function inserted(cache: Cache, s: CachedStore, block: number): Promise<void> {
    for (let i = 0; i < 1000 && cache.map.lookup(s.volume, block) < 0; i++) await new Promise((r) => setImmediate(r));
  }

  /** Reads `block` twice; the second read is a cache hit. */
  async function cacheIt(cache: Cache, s: CachedStore, block: number): Promise<void> {
    await readBlock(s, block);
    await inserted(cache, s, block);
    const hits = cache.stats().readHits;
    await readsServer(s, block, 'cached');
    assert.equal(cache.stats().readHits, hits + 1, `block ${block} is cached`);
  }

  beforeEach(async () => {
    dir = tmpDir('nbd-cache');
    engine = new FsEngine();
    server = new MemNbdServer(path.join(dir, 'nbd.sock'), SIZE);
    stampBytes(server.durable, 0, 1);
    await server.listen();
  });

  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close().catch(() => undefined);
    for (const c of caches.splice(0)) await c.abort();
    await server.close();
    engine.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a write that timed out and was applied late by the server leaves no older data cached', async () => {
    const cache = await openCache();
    const { cached } = await openStore(cache);
    await cacheIt(cache, cached, 0);
    server.holdWrites = true;
    await assert.rejects(cached.write(0, [stamped(0, BLOCK, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
    // The server has not applied it yet: reads see generation 1 and must not cache it.
    await readsServer(cached, 0, 'before the late write');
    await inserted(cache, cached, 0);
    server.releaseHeld();
    await readsServer(cached, 0, 'after the late write');
    // A successful flush settles the block: it is cached again.
    await cached.flush();
    await cacheIt(cache, cached, 0);
  });

  it('a failed write leaves its blocks uninsertable until a later write covering them succeeds', async () => {
    const cache = await openCache();
    const { cached } = await openStore(cache);
    server.holdWrites = true;
    await assert.rejects(cached.write(BLOCK, [stamped(BLOCK, 2 * BLOCK, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
    await readsServer(cached, 1, 'unsettled');
    await inserted(cache, cached, 1);
    server.releaseHeld();
    await readsServer(cached, 1, 'after the late write');
    await cached.write(BLOCK, [stamped(BLOCK, BLOCK, 3)]);
    // Block 1 is settled by the write (it covers it whole), block 2 is not.
    await cacheIt(cache, cached, 1);
    await readBlock(cached, 2);
    await inserted(cache, cached, 2);
    const hits = cache.stats().readHits;
    await readsServer(cached, 2, 'still unsettled');
    assert.equal(cache.stats().readHits, hits, 'block 2 is not cached');
  });

  it('hundreds of failed writes (a long outage) stay uninsertable until a flush', async () => {
    const cache = await openCache();
    const { cached } = await openStore(cache);
    server.holdWrites = true;
    // 300 sector writes over blocks 0..37: more failures than are held one by one.
    const writes = Array.from({ length: 300 }, (_, k) => cached.write(k * 512, [Buffer.alloc(512, 0xee)]));
    for (const w of writes) await assert.rejects(w, (e: VhostError) => e.code === 'ETIMEDOUT');
    server.releaseHeld();
    for (const b of [0, 20, 37]) {
      await readsServer(cached, b, 'unsettled');
      await inserted(cache, cached, b);
      const hits = cache.stats().readHits;
      await readsServer(cached, b, 'unsettled, again');
      assert.equal(cache.stats().readHits, hits, `block ${b} is not cached`);
    }
    await cached.flush();
    await cacheIt(cache, cached, 37);
  });

  it('a fenced store (export size changed) serves nothing from the cache', async () => {
    const cache = await openCache();
    const { cached } = await openStore(cache);
    await cacheIt(cache, cached, 0);
    server.size = 2 * SIZE;
    server.crash();
    // An uncached read waits for the reconnect, which fences the store.
    await assert.rejects(readBlock(cached, 9), (e: VhostError) => e.code === 'EIO');
    await assert.rejects(readBlock(cached, 0), (e: VhostError) => e.code === 'EIO');
  });

  it('blocks written since the last successful flush are dropped when the connection is lost', async () => {
    const cache = await openCache();
    const { cached } = await openStore(cache);
    await cacheIt(cache, cached, 4);
    await cached.flush();
    await cached.write(0, [stamped(0, 2 * BLOCK, 2)]);
    await cacheIt(cache, cached, 0);
    // The server restarts and loses its unflushed writes.
    server.crash();
    await readsServer(cached, 9, 'uncached, after the reconnect');
    await readsServer(cached, 0, 'written, not flushed');
    await readsServer(cached, 1, 'written, not flushed');
    // Flushed blocks stay cached.
    const hits = cache.stats().readHits;
    await readsServer(cached, 4, 'flushed');
    assert.equal(cache.stats().readHits, hits + 1, 'block 4 is still cached');
  });

  it('no cached block of the volume survives a failed final flush into the saved metadata', async () => {
    let cache = await openCache();
    let { cached } = await openStore(cache);
    await cached.write(0, [stamped(0, 4 * BLOCK, 2)]);
    await cacheIt(cache, cached, 0);
    server.failFlush = true;
    await assert.rejects(cached.flush(), (e: VhostError) => e.code === 'EIO');
    await cached.close();
    await cache.close();
    caches.pop();
    server.crash();
    server.failFlush = false;
    cache = await openCache();
    assert.equal(cache.warm, true, 'the cache restarted warm');
    ({ cached } = await openStore(cache));
    for (let b = 0; b < 4; b++) await readsServer(cached, b, 'after the restart');
  });
});
