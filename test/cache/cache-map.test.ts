import { strict as assert } from 'node:assert';
import { CacheMap } from '../../src/cache/cache-map';
import { drawSlots } from './helpers';

/** Inserts the way the log does: victim first, then assign. */
function insert(m: CacheMap, volume: number, block: number): number {
  const slot = m.findVictim(volume);
  m.assign(slot, volume, block);
  return slot;
}

describe('cache map CLOCK', () => {
  it('places, spares and evicts as drawn', () => {
    const m = new CacheMap(8);
    for (let b = 10; b <= 15; b++) insert(m, 0, b);
    assert.equal(drawSlots(m, 8), ' 10   11   12   13   14   15  >..   ..');
    assert.equal(m.lookup(0, 11), 1);
    assert.equal(m.lookup(0, 13), 3);
    assert.equal(m.lookup(0, 99), -1);
    assert.equal(drawSlots(m, 8), ' 10   11*  12   13*  14   15  >..   ..');
    insert(m, 0, 16);
    insert(m, 0, 17);
    assert.equal(m.wraps, 1);
    assert.equal(drawSlots(m, 8), '>10   11*  12   13*  14   15   16   17');
    // 10 has no REF: evicted at once.
    assert.equal(insert(m, 0, 18), 0);
    // 11 is spared (REF cleared), 12 evicted.
    assert.equal(insert(m, 0, 19), 2);
    assert.equal(drawSlots(m, 8), ' 18   11   19  >13*  14   15   16   17');
    // 13 spared, 14 evicted.
    assert.equal(insert(m, 0, 20), 4);
    assert.equal(m.invalidate(0, 15), true);
    assert.equal(m.invalidate(0, 15), false);
    // An invalid slot is taken without eviction.
    assert.equal(insert(m, 0, 21), 5);
    assert.equal(drawSlots(m, 8), ' 18   11   19   13   20   21  >16   17');
    const s = m.stats(0);
    assert.deepEqual(
      { insertions: s.insertions, evictions: s.evictions, invalidations: s.invalidations, invalidateHits: s.invalidateHits },
      { insertions: 12, evictions: 3, invalidations: 2, invalidateHits: 1 },
    );
    assert.equal(m.volumeBlocks[0], 8);
    assert.equal(m.map.size, 8);
  });

  it('spares every slot once before evicting (all referenced)', () => {
    const m = new CacheMap(4);
    for (let b = 0; b < 4; b++) insert(m, 0, b);
    for (let b = 0; b < 4; b++) m.lookup(0, b);
    assert.equal(drawSlots(m, 4), '>0*   1*   2*   3*');
    assert.equal(insert(m, 0, 9), 0);
    assert.equal(drawSlots(m, 4), ' 9   >1    2    3');
    assert.equal(m.wraps, 2);
  });

  it('enforces a hard per-volume cap and gives capped volumes no second chance', () => {
    const m = new CacheMap(8);
    m.volumeCap[1] = 2;
    for (const b of [1, 2, 3]) insert(m, 0, b);
    insert(m, 1, 1);
    insert(m, 1, 2);
    assert.equal(drawSlots(m, 8), ' 1    2    3    1:1  1:2 >..   ..   ..');
    // Volume 1 is at its cap: its next block replaces one of its own, not a free slot.
    assert.equal(insert(m, 1, 3), 3);
    assert.equal(drawSlots(m, 8), ' 1    2    3    1:3 >1:2  ..   ..   ..');
    assert.equal(m.volumeBlocks[1], 2);
    // A referenced block of a volume at its cap is not spared by the hand.
    m.lookup(1, 2);
    assert.equal(insert(m, 0, 4), 4);
    assert.equal(drawSlots(m, 8), ' 1    2    3    1:3  4   >..   ..   ..');
    assert.equal(m.stats(1).evictions, 2);
  });

  it('invalidates large ranges by scanning and drops volumes and slot ranges', () => {
    const m = new CacheMap(16);
    for (let b = 0; b < 8; b++) insert(m, 0, b);
    for (let b = 0; b < 8; b++) insert(m, 1, b);
    assert.equal(m.invalidateRange(0, 2, 1000), 6);
    assert.equal(m.volumeBlocks[0], 2);
    assert.equal(m.dropVolume(1), 8);
    assert.equal(m.map.size, 2);
    assert.equal(m.dropSlots(0, 16), 2);
    assert.equal(m.map.size, 0);
  });
});

describe('cache map: re-insertion, large invalidations, warm load (mutation-found gaps)', () => {
  it('re-inserting a cached key moves it: the old slot is dropped, the block counted once', () => {
    const m = new CacheMap(8);
    for (let b = 0; b < 3; b++) insert(m, 0, b);
    assert.equal(insert(m, 0, 1), 3);
    assert.equal(drawSlots(m, 8), ' 0    ..   2    1   >..   ..   ..   ..');
    assert.equal(m.peek(0, 1), 3);
    assert.equal(m.volumeBlocks[0], 3);
    assert.equal(m.invalidate(0, 1), true);
    assert.equal(m.peek(0, 1), -1, 'no stale copy left behind');
  });

  it('a large invalidation (BDA scan) drops exactly its range of its volume', () => {
    const m = new CacheMap(16);
    for (let b = 0; b < 8; b++) insert(m, 0, b);
    for (let b = 0; b < 8; b++) insert(m, 1, b);
    assert.equal(m.invalidateRange(0, 2, 5), 5);
    assert.equal(drawSlots(m, 16), '>0    1    ..   ..   ..   ..   ..   7    1:0  1:1  1:2  1:3  1:4  1:5  1:6  1:7');
    assert.equal(m.volumeBlocks[0], 3);
    assert.equal(m.volumeBlocks[1], 8);
  });

  it('a map built from a saved BDA counts each volume\'s blocks', () => {
    const m = new CacheMap(8);
    for (let b = 0; b < 3; b++) insert(m, 0, b);
    insert(m, 2, 7);
    const again = new CacheMap(8, undefined, m.bda, m.map.table);
    assert.deepEqual([again.volumeBlocks[0], again.volumeBlocks[1], again.volumeBlocks[2]], [3, 0, 1]);
    assert.equal(again.peek(2, 7), 3);
  });
});
