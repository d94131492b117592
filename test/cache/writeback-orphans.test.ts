/**
 * Orphaned write-back blocks (Cache.discardOrphanedDirty, CachedStore `discardDirty`): dirty
 * blocks written to one backing object, the volume then opened on another object under the
 * same name. Without the operator's flag the refusal (EBUSY) stands and nothing is lost; with
 * it they are discarded (counted), the new object's data is served and never overwritten by
 * them, and a crash right after the discard does not bring them back. Dirty blocks of the same
 * object are never discarded, flag or not.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { CachedStore } from '../../src/cache/cached-store';
import { deviceBytesFor } from '../../src/cache/segment';
import type { VhostError } from '../../src/native/errors';
import { MemStore, rng } from './helpers';
import { MemDevice } from '../support/mem-device';
import { stampBytes, stamped } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BS = 4096;
const BLOCKS = 64;
const DEVICE = deviceBytesFor(8, BS, 8 * BS);
/** File identities (backing-store.ts): OBJECT#STAMP. */
const OLD = 'file:1:2:gen=3:birth=4';
const NEW = 'file:1:2:gen=3:birth=9';

describe('write-back blocks of another backing object (orphaned)', function () {
  this.timeout(60000);
  let dir: string;
  let dev: MemDevice;
  let cache: Cache;
  const stores: CachedStore[] = [];

  const openCache = async (image?: Uint8Array): Promise<void> => {
    dev = new MemDevice(DEVICE, image);
    cache = await Cache.open({ path: path.join(dir, 'cache'), size: DEVICE, blockSize: BS, segmentSize: 8 * BS, buffers: 3, engine: dev });
  };
  const volume = async (back: MemStore, discardDirty?: boolean): Promise<CachedStore> => {
    const s = await CachedStore.open({ backing: back, cache, name: 'v', mode: 'writeback', readAhead: 0, discardDirty });
    stores.push(s);
    return s;
  };
  /** Volume v written in write-back on `old` (its backing store down: nothing destaged), then closed. */
  const leaveDirty = async (old: MemStore, blocks: number[]): Promise<void> => {
    old.writeHook = () => Promise.reject(new Error('backing store unreachable'));
    const s = await volume(old);
    for (const b of blocks) await s.write(b * BS, [stamped(b * BS, BS, 5)]);
    assert.equal(s.destager.dirty, blocks.length);
    await s.close();
    old.writeHook = null;
  };
  const readAll = async (s: CachedStore): Promise<Uint8Array> => {
    const out = new Uint8Array(BLOCKS * BS);
    await s.read(0, [out]);
    return out;
  };

  beforeEach(async () => {
    dir = tmpDir('orphans');
    await openCache();
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.destager.close();
    await cache.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('are refused without the flag; with it they are discarded (counted), the new object is served and never written with them, also after a crash', async () => {
    const old = new MemStore(BLOCKS * BS, `${OLD}#ctime=1`);
    await leaveDirty(old, [1, 2, 3, 40]);
    // The file deleted and re-created under the volume's name: other data.
    const next = new MemStore(BLOCKS * BS, `${NEW}#ctime=2`);
    stampBytes(next.data, 0, 7);
    const want = new Uint8Array(next.data);
    await assert.rejects(volume(next), (e: VhostError) => e.code === 'EBUSY' && /4 write-back blocks not yet written back belong to another backing store.*--discard-dirty/.test(e.message));
    assert.equal(cache.map.dirtyTotal, 4, 'the refusal keeps them');
    // Asking the cache to discard while the dirty blocks are the same object's changes nothing.
    assert.equal(await cache.discardOrphanedDirty('v', `${OLD}#ctime=9`, BLOCKS * BS), 0);
    assert.equal(cache.map.dirtyTotal, 4);

    const s = await volume(next, true);
    assert.equal(s.discardedDirty, 4);
    assert.equal(cache.map.dirtyTotal, 0);
    assert.deepEqual(await readAll(s), want, 'the new object is served, not the old dirty blocks');
    await s.flushCache();
    await s.flush();
    assert.deepEqual(next.data, want, 'nothing was destaged into the new object');

    // A crash right after: recovery does not bring the old dirty blocks back.
    await s.destager.close();
    const image = dev.crashImage(rng(3));
    await cache.abort();
    await openCache(image);
    assert.equal(cache.map.dirtyTotal, 0, 'the discarded blocks came back after a crash');
    const again = await volume(next);
    assert.equal(again.discardedDirty, 0);
    assert.deepEqual(await readAll(again), want);
  });

  it('dirty blocks of the same object are never discarded: the flag then changes nothing', async () => {
    const old = new MemStore(BLOCKS * BS, `${OLD}#ctime=1`);
    await leaveDirty(old, [5, 6]);
    // The same file, changed since (its stamp): the dirty blocks are its newest data.
    old.identity = `${OLD}#ctime=3`;
    const s = await volume(old, true);
    assert.equal(s.discardedDirty, 0);
    assert.equal(s.destager.dirty + s.destager.destaged, 2);
    const out = new Uint8Array(BS);
    await s.read(5 * BS, [out]);
    assert.deepEqual(out, new Uint8Array(stamped(5 * BS, BS, 5)));
  });
});
