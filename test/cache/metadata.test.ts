import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache, type CacheOptions } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { computeGeometry, deviceBytesFor } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { MemStore } from './helpers';
import { stampBytes } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BS = 4096;
const BLOCKS = 20;

describe('cache metadata and warm restart', () => {
  let dir: string;
  let cache: Cache | null = null;
  const engine = new FsEngine();
  const cachePath = () => path.join(dir, 'cache');

  const open = (o: Partial<CacheOptions> = {}) =>
    Cache.open({ path: cachePath(), size: deviceBytesFor(8, 4096, 16384), segmentSize: 16384, engine, ...o });

  beforeEach(() => {
    dir = tmpDir('meta');
  });

  afterEach(async () => {
    if (cache) await cache.abort();
    cache = null;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Caches blocks 0..BLOCKS-1 of `mem` as volume 'a' and closes cleanly. */
  async function populate(mem: MemStore, o: Partial<CacheOptions> = {}): Promise<void> {
    cache = await open(o);
    const s = new CachedStore({ backing: mem, cache, name: 'a' });
    await s.read(0, [new Uint8Array(BLOCKS * BS)]);
    await cache.log.quiesce();
    await s.close();
    await cache.close();
    cache = null;
  }

  /** Reads blocks 0..BLOCKS-1 of volume 'a' through a new store on `cache`. */
  async function readAll(mem: MemStore): Promise<Uint8Array> {
    const s = new CachedStore({ backing: mem, cache: cache as Cache, name: 'a' });
    const out = new Uint8Array(BLOCKS * BS);
    await s.read(0, [out]);
    return out;
  }

  /** The metadata area's bytes on the device. */
  function area(): Buffer {
    const fd = fs.openSync(cachePath(), 'r');
    try {
      const g = (cache as Cache).geometry;
      const b = Buffer.alloc(g.metadataBytes);
      fs.readSync(fd, b, 0, b.length, g.metadataOffset);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  }

  it('a clean close restores the map from the metadata area of the cache device (no file)', async () => {
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem);
    assert.deepEqual(fs.readdirSync(dir), ['cache']);
    cache = await open();
    assert.equal(cache.warm, true);
    const before = mem.reads;
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
    assert.equal(mem.reads, before);
    assert.equal(cache.stats().readHits, BLOCKS);
  });

  it('stays warm when only the device survives (a block device after a reboot: no file next to it)', async () => {
    // Issue 10 (4): `--cache /dev/nvme0n1p3` kept its metadata in /dev/nvme0n1p3.meta on devtmpfs.
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem);
    const moved = path.join(dir, 'after-reboot');
    fs.copyFileSync(cachePath(), moved);
    for (const f of fs.readdirSync(dir)) if (f !== 'after-reboot') fs.rmSync(path.join(dir, f));
    cache = await open({ path: moved });
    assert.equal(cache.warm, true);
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
    assert.equal(cache.stats().readHits, BLOCKS);
  });

  it('a cache on a block device (loop) stays warm across a detach and re-attach (a reboot) @host', async () => {
    const image = path.join(dir, 'loop.img');
    fs.writeFileSync(image, Buffer.alloc(deviceBytesFor(8, 4096, 16384)));
    const attach = () => execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
    let dev = attach();
    try {
      const mem = new MemStore(32 * BS);
      stampBytes(mem.data, 0, 1);
      await populate(mem, { path: dev, size: undefined });
      execFileSync('losetup', ['--detach', dev]);
      // A reboot empties devtmpfs: nothing next to the device node survives.
      fs.rmSync(`${dev}.meta`, { force: true });
      dev = attach();
      cache = await open({ path: dev, size: undefined });
      assert.equal(cache.warm, true);
      assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
      assert.equal(cache.stats().readHits, BLOCKS);
      await cache.abort();
      cache = null;
    } finally {
      execFileSync('losetup', ['--detach', dev]);
    }
  });

  it('an old metadata file (another --cache-metadata, a symlink to the cache) is refused', async () => {
    // Issue 10 (4): run 1 saves m1; run 2 reaches the same device under another name (its own
    // metadata file) and rewrites the slots with other blocks; run 3 must not trust m1.
    const m1 = path.join(dir, 'm1');
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem, { metadataPath: m1 });
    const link = path.join(dir, 'link');
    fs.symlinkSync(cachePath(), link);
    const other = new MemStore(32 * BS);
    stampBytes(other.data, 0, 2);
    cache = await open({ path: link, metadataPath: path.join(dir, 'm2') });
    assert.equal(cache.warm, false);
    const s = new CachedStore({ backing: other, cache, name: 'a' });
    await s.read(0, [new Uint8Array(BLOCKS * BS)]);
    await cache.log.quiesce();
    await s.close();
    await cache.close();
    cache = await open({ metadataPath: m1 });
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
    assert.equal(cache.warm, false, 'stale metadata file refused');
  });

  it('a metadata file is accepted when it is the one bound to the device', async () => {
    const meta = path.join(dir, 'meta');
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem, { metadataPath: meta });
    cache = await open({ metadataPath: meta });
    assert.equal(cache.warm, true);
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
    assert.equal(cache.stats().readHits, BLOCKS);
  });

  it('an old copy of the metadata area put back is refused (generation)', async () => {
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem);
    cache = await open();
    const old = area();
    await cache.abort();
    // Another clean run caches other data in the same slots (its store changed: another identity).
    const other = new MemStore(32 * BS, 'mem-2');
    stampBytes(other.data, 0, 2);
    cache = await open();
    assert.equal(cache.warm, false, 'the aborted run left stale metadata');
    const s = new CachedStore({ backing: other, cache, name: 'a', mode: 'writethrough' });
    await s.read(0, [new Uint8Array(BLOCKS * BS)]);
    await cache.log.quiesce();
    await s.close();
    await cache.close();
    const fd = fs.openSync(cachePath(), 'r+');
    fs.writeSync(fd, old, 0, old.length, (cache as Cache).geometry.metadataOffset);
    fs.closeSync(fd);
    cache = await open();
    assert.equal(cache.warm, false);
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
  });

  it('a crash (no clean close) after a warm start: the index is recovered from the segment headers', async () => {
    const mem = new MemStore(32 * BS);
    stampBytes(mem.data, 0, 1);
    await populate(mem);
    cache = await open();
    assert.equal(cache.warm, true);
    await cache.abort();
    cache = await open();
    assert.equal(cache.warm, false, 'the metadata is stale');
    assert.deepEqual(cache.recovery && { entries: cache.recovery.entries, skipped: cache.recovery.skipped }, { entries: BLOCKS, skipped: 0 });
    assert.equal(cache.map.map.size, BLOCKS);
    assert.deepEqual(await readAll(mem), mem.data.subarray(0, BLOCKS * BS));
    assert.equal(cache.stats().readHits, BLOCKS);
  });

  it('a changed identity drops the volume; a changed geometry or corrupt metadata means cold', async () => {
    const mem = new MemStore(32 * BS);
    await populate(mem);
    cache = await open();
    mem.identity = 'mem-2';
    const s = new CachedStore({ backing: mem, cache, name: 'a' });
    assert.equal(cache.map.volumeBlocks[s.volume], 0);
    await s.close();
    await cache.close();

    await populate(mem);
    const fd = fs.openSync(cachePath(), 'r+');
    const b = Buffer.alloc(1);
    const at = computeGeometry(deviceBytesFor(8, 4096, 16384), 4096, 16384).metadataOffset + 200;
    fs.readSync(fd, b, 0, 1, at);
    b[0] ^= 1;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
    cache = await open();
    assert.equal(cache.warm, false);
    await cache.abort();

    await populate(mem);
    cache = await open({ segmentSize: 8192 });
    assert.equal(cache.warm, false);
  });
});
