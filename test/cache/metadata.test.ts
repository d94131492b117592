import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { SUPERBLOCK_SIZE } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { MemStore, stamp } from './helpers';

const BS = 4096;

describe('cache metadata and warm restart', () => {
  let dir: string;
  let cache: Cache | null = null;
  const engine = new FsEngine();

  const open = (segmentSize = 16384) =>
    Cache.open({
      path: path.join(dir, 'cache'),
      size: SUPERBLOCK_SIZE + 8 * (4096 + 16384),
      segmentSize,
      engine,
    });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-meta-'));
  });

  afterEach(async () => {
    if (cache) await cache.abort();
    cache = null;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function populate(mem: MemStore): Promise<CachedStore> {
    cache = await open();
    const s = new CachedStore({ backing: mem, cache, name: 'a' });
    await s.read(0, [new Uint8Array(20 * BS)]);
    await cache.log.quiesce();
    return s;
  }

  it('a clean close restores the map; the metadata is consumed at open', async () => {
    const mem = new MemStore(32 * BS);
    stamp(mem.data, 0, 1);
    let s = await populate(mem);
    await s.close();
    await (cache as Cache).close();
    assert.ok(fs.existsSync(path.join(dir, 'cache.meta')));
    cache = await open();
    assert.equal(cache.warm, true);
    assert.equal(fs.existsSync(path.join(dir, 'cache.meta')), false);
    s = new CachedStore({ backing: mem, cache, name: 'a' });
    const before = mem.reads;
    const out = new Uint8Array(20 * BS);
    await s.read(0, [out]);
    assert.equal(mem.reads, before);
    assert.deepEqual(out, mem.data.subarray(0, 20 * BS));
    assert.equal(cache.stats().readHits, 20);
  });

  it('a crash after a warm start leaves a cold cache', async () => {
    const mem = new MemStore(32 * BS);
    const s = await populate(mem);
    await s.close();
    await (cache as Cache).close();
    cache = await open();
    assert.equal(cache.warm, true);
    await (cache as Cache).abort();
    cache = await open();
    assert.equal(cache.warm, false);
    assert.equal(cache.map.map.size, 0);
  });

  it('a changed identity drops the volume; a changed geometry or corrupt file means cold', async () => {
    const mem = new MemStore(32 * BS);
    let s = await populate(mem);
    await s.close();
    await (cache as Cache).close();
    cache = await open();
    mem.identity = 'mem-2';
    s = new CachedStore({ backing: mem, cache, name: 'a' });
    assert.equal(cache.map.volumeBlocks[s.volume], 0);
    await s.close();
    await cache.close();

    s = await populate(mem);
    await s.close();
    await (cache as Cache).close();
    const meta = path.join(dir, 'cache.meta');
    const bytes = fs.readFileSync(meta);
    bytes[bytes.length - 10] ^= 1;
    fs.writeFileSync(meta, bytes);
    cache = await open();
    assert.equal(cache.warm, false);
    await cache.abort();

    s = await populate(mem);
    await s.close();
    await (cache as Cache).close();
    cache = await open(8192);
    assert.equal(cache.warm, false);
  });
});
