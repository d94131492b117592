import { strict as assert } from 'node:assert';
import { ADMIT_MIN, ADMIT_STEP, CacheMap, CLEANING_WINDOW, DECAY_STEP, GHOST_COUNT, MAX_COUNT, REGION_ADMIT, REGION_AGE, REGION_BLOCKS, SegmentChoice, TOP_DECAY } from '../../src/cache/cache-map';
import { AddressMap } from '../../src/cache/address-map';
import { BlockDescriptorArray, FLAG_DIRTY, FLAG_SHADOW, MAX_VOLUMES } from '../../src/cache/bda';
import { GhostHistory, GhostKind } from '../../src/cache/ghost';
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

  it('cleans: refills holes first, then the segment with the best cost-benefit; carries counted blocks forward', () => {
    // 4 segments of 4 slots; holes-first needs more than one segment's worth of holes.
    const m = new CacheMap(16, { segmentBlocks: 4 });
    for (let b = 0; b < 16; b++) insert(m, 0, b);
    // No hole left: the oldest segment (0) comes next; one round done.
    assert.equal(m.wraps, 1);
    m.lookup(0, 0);
    m.lookup(0, 1);
    m.lookup(0, 1);
    for (const b of [8, 9, 10, 13, 14]) assert.equal(m.invalidate(0, b), true);
    assert.equal(drawSlots(m, 4), ['>0*   1**  2    3', ' 4    5    6    7', ' ..   ..   ..   11', ' 12   ..   ..   15'].join('\n'));
    // 0 and 1 are carried forward (counters decremented), 2 and 3 evicted.
    assert.equal(insert(m, 0, 20), 2);
    assert.equal(insert(m, 0, 21), 3);
    // 5 holes: the hand went on to segment 2 (most holes) to refill its holes only.
    assert.equal(m.hand, 8);
    assert.equal(insert(m, 0, 22), 8);
    assert.equal(insert(m, 0, 23), 9);
    assert.equal(insert(m, 0, 24), 10);
    assert.equal(drawSlots(m, 4), [' 0    1*   20   21', ' 4    5    6    7', ' 22   23   24  >11', ' 12   ..   ..   15'].join('\n'));
    // 11 is left as it is; 2 holes are few: cost-benefit picks segment 1 (oldest, nothing to
    // carry) over 3 (younger) and 0 (young, one block to carry).
    assert.equal(insert(m, 0, 25), 4);
    // 4 was evicted just now: it comes back with one hit's counter (ghost history).
    assert.equal(insert(m, 0, 4), 5);
    assert.equal(drawSlots(m, 4), [' 0    1*   20   21', ' 25   4*  >6    7', ' 22   23   24   11', ' 12   ..   ..   15'].join('\n'));
    assert.equal(m.blocksCarried, 2);
    assert.equal(m.stats(0).ghostHits, 1);
    assert.equal(m.stats(0).evictions, 4);
  });

  it('passes a segment whose blocks are all carried forward without placing anything in it', () => {
    const m = new CacheMap(8, { segmentBlocks: 4, segmentChoice: SegmentChoice.Order });
    for (let b = 0; b < 8; b++) insert(m, 0, b);
    for (let b = 0; b < 4; b++) m.lookup(0, b);
    assert.equal(drawSlots(m, 4), ['>0*   1*   2*   3*', ' 4    5    6    7'].join('\n'));
    assert.equal(insert(m, 0, 9), 4);
    assert.equal(drawSlots(m, 4), [' 0    1    2    3', ' 9   >5    6    7'].join('\n'));
    assert.equal(m.segmentsSkipped, 1);
    assert.equal(m.blocksCarried, 4);
  });

  it('goes on in log order past several segments in a row whose blocks are all carried forward', () => {
    const m = new CacheMap(12, { segmentBlocks: 4, segmentChoice: SegmentChoice.Order });
    for (let b = 0; b < 12; b++) insert(m, 0, b);
    for (let b = 0; b < 12; b++) m.lookup(0, b);
    // Segments 0, 1 and 2 carried (counters used up), then 0 again: block 0 evicted.
    assert.equal(insert(m, 0, 20), 0);
    assert.equal(drawSlots(m, 4), [' 20  >1    2    3', ' 4    5    6    7', ' 8    9    10   11'].join('\n'));
    assert.deepEqual([m.segmentsSkipped, m.blocksCarried], [3, 12]);
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

describe('cache map: read-ahead blocks, counters, segment choice over many segments, warm load', () => {
  /** Inserts a read-ahead block the way the log does. */
  function prefetch(m: CacheMap, volume: number, block: number): number {
    const slot = m.findVictim(volume);
    m.assign(slot, volume, block, true);
    return slot;
  }

  it('a read-ahead block starts with one use, which its first hit takes; hits count up to MAX_COUNT', () => {
    const m = new CacheMap(8);
    prefetch(m, 0, 1);
    insert(m, 0, 2);
    assert.equal(drawSlots(m, 8), ' 1*   2   >..   ..   ..   ..   ..   ..');
    assert.deepEqual([m.stats(0).prefetched, m.stats(0).prefetchHits, m.stats(0).insertions], [1, 0, 2]);
    assert.equal(m.lookup(0, 1), 0);
    assert.equal(drawSlots(m, 8), ' 1*   2   >..   ..   ..   ..   ..   ..', 'the first hit of a read-ahead block adds nothing');
    assert.equal(m.stats(0).prefetchHits, 1);
    for (let k = 0; k < MAX_COUNT + 2; k++) m.lookup(0, 1);
    m.lookup(0, 2);
    assert.equal(drawSlots(m, 8), ' 1*** 2*  >..   ..   ..   ..   ..   ..');
    assert.equal(m.stats(0).prefetchHits, 1, 'only the first hit of a read-ahead block is a read-ahead hit');
  });

  it('an unread read-ahead block survives one pass of the hand, not two; one evicted recently comes back with one hit\'s counter', () => {
    // A ghost history larger than the map: no key of this test forgets another.
    const m = new CacheMap(4, { ghostEntries: 1024 });
    prefetch(m, 0, 1);
    for (const b of [2, 3, 4]) insert(m, 0, b);
    // The hand passes 1 (its use taken) and evicts 2; then evicts 1.
    assert.equal(insert(m, 0, 5), 1);
    assert.equal(drawSlots(m, 4), ' 1    5   >3    4');
    for (const b of [6, 7]) insert(m, 0, b);
    assert.equal(insert(m, 0, 8), 0);
    assert.equal(m.peek(0, 1), -1);
    // 1 was evicted just now: read ahead again, it starts with one hit's counter (GHOST_COUNT).
    prefetch(m, 0, 1);
    assert.equal(drawSlots(m, 4), ' 8    1*  >6    7');
    assert.deepEqual([m.stats(0).prefetched, m.stats(0).ghostHits], [2, 1]);
  });

  it(`past ${CLEANING_WINDOW} segments each choice examines a window of ${CLEANING_WINDOW} that rotates over the log`, () => {
    const S = CLEANING_WINDOW + 4;
    const m = new CacheMap(2 * S, { segmentBlocks: 2 });
    assert.equal(m.segments, S);
    // An empty map: every choice refills holes, the first segment with the most holes in its window.
    const entered: number[] = [];
    assert.equal(m.refillingHoles, false, 'the first segment is the start, not a choice');
    for (let b = 0; b < 12; b += 2) {
      entered.push(m.segmentOf(insert(m, 0, b)));
      insert(m, 0, b + 1);
    }
    assert.equal(m.refillingHoles, true);
    assert.deepEqual(entered, [0, 1, CLEANING_WINDOW, CLEANING_WINDOW - 4, CLEANING_WINDOW - 8, CLEANING_WINDOW - 12]);
    assert.deepEqual([m.segmentsCleaned, m.segmentsSkipped, m.wraps], [6, 0, 0]);
    assert.equal(m.upcomingHolesOnlyRefill, false, 'nothing chosen yet');
    assert.equal(m.segmentOf(m.hand), CLEANING_WINDOW - 16);
    assert.equal(m.upcomingSegment(), CLEANING_WINDOW - 20);
    assert.equal(m.upcomingHolesOnlyRefill, true);
  });

  it('holes are refilled first only past emptyTarget of the slots (and one segment)', () => {
    for (const [emptyTarget, holesFirst] of [
      [undefined, true],
      [1 / 4, false],
    ] as const) {
      // 16 segments of 4: 64 slots; 6 holes: 4 in segment 9, 1 in segment 2, 1 in segment 5.
      // Cost-benefit picks segment 2 (entered long ago, one hole).
      const m = new CacheMap(64, { segmentBlocks: 4, emptyTarget });
      for (let b = 0; b < 64; b++) insert(m, 0, b);
      for (const b of [36, 37, 38, 39, 8]) m.invalidate(0, b);
      m.invalidate(0, 20);
      assert.equal(m.upcomingSegment(), holesFirst ? 9 : 2, `emptyTarget ${emptyTarget}`);
      assert.equal(m.upcomingHolesOnlyRefill, holesFirst);
    }
  });

  it('a map built from a saved BDA chooses segments by the holes and counters it holds', () => {
    // 4 segments of 4, full; the hand in segment 0.
    const full = (): CacheMap => {
      const m = new CacheMap(16, { segmentBlocks: 4 });
      for (let b = 0; b < 16; b++) insert(m, 0, b);
      return m;
    };
    // Holes: 2 in segment 1, 3 in segment 2 (5 > one segment): segment 2's holes first.
    let m = full();
    for (const b of [4, 5, 8, 9, 10]) m.invalidate(0, b);
    let again = new CacheMap(16, { segmentBlocks: 4 }, m.bda, m.map.table);
    assert.equal(again.upcomingSegment(), 2);
    assert.equal(again.upcomingHolesOnlyRefill, true);
    // No holes; counters: segment 1 all hit, 2 half, 3 one block: 3 keeps least.
    m = full();
    for (const b of [4, 5, 6, 7, 8, 9, 12]) m.lookup(0, b);
    again = new CacheMap(16, { segmentBlocks: 4 }, m.bda, m.map.table);
    assert.equal(again.upcomingSegment(), 3);
    assert.equal(again.upcomingHolesOnlyRefill, false);
  });

  it('hits count toward the blocks a segment keeps: cost-benefit prefers the segment whose blocks were hit least', () => {
    const m = new CacheMap(16, { segmentBlocks: 4 });
    for (let b = 0; b < 16; b++) insert(m, 0, b);
    // Segment 1: every block hit; 2: block 8 hit three times (one block kept); 3: two blocks hit.
    for (const b of [4, 5, 6, 7, 8, 8, 8, 12, 13]) m.lookup(0, b);
    // Ages 4, 3, 2 (segments 1, 2, 3): scores 0, 3/5 x 3, 2/6 x 2.
    assert.equal(m.upcomingSegment(), 2);
  });

  it('segment 0 can be the next one refilled holes only', () => {
    const m = new CacheMap(16, { segmentBlocks: 4 });
    for (let b = 0; b < 20; b++) insert(m, 0, b);
    assert.equal(m.segmentOf(m.hand), 1);
    // 5 holes: 4 in segment 0, 1 in the current segment.
    for (const b of [16, 17, 18, 19, 5]) assert.ok(m.invalidate(0, b));
    assert.equal(m.upcomingSegment(), 0);
    assert.equal(m.upcomingHolesOnlyRefill, true);
  });

  it('options: the address map load factor; no ghost history with ghostEntries 0', () => {
    assert.equal(new CacheMap(70, { loadFactor: 0.5 }).map.capacity, new AddressMap(new BlockDescriptorArray(70), 0.5).capacity);
    assert.equal(new CacheMap(70).map.capacity, new AddressMap(new BlockDescriptorArray(70)).capacity);
    assert.notEqual(new CacheMap(70, { loadFactor: 0.5 }).map.capacity, new CacheMap(70).map.capacity);
    const m = new CacheMap(2, { ghostEntries: 0 });
    assert.equal(m.ghost, null);
    for (const b of [1, 2, 3]) insert(m, 0, b);
    // 1 was evicted just now: without a history it comes back with no counter.
    insert(m, 0, 1);
    assert.equal(drawSlots(m, 2), '>3    1');
    assert.equal(m.stats(0).ghostHits, 0);
  });

  it('byteLength counts every structure: BDA, address map, ghost history, admission regions, the three per-segment and two per-volume arrays', () => {
    for (const ghostEntries of [undefined, 0]) {
      const m = new CacheMap(64, { segmentBlocks: 16, ghostEntries });
      const ghost = m.ghost === null ? 0 : m.ghost.byteLength;
      // One byte per region score entry (at least 1024; none without a ghost history); per
      // segment: blocks kept (Uint16), valid slots (Uint16), entry stamp (Float64); per volume
      // id: blocks (Uint32), cap (Float64).
      const regions = m.ghost === null ? 0 : 1024;
      const parts = { keys: 64 * 5, crc: 64 * 4, flags: 64, addressMap: m.map.byteLength, ghost, regions, segments: m.segments * (2 + 2 + 8), volumes: MAX_VOLUMES * (4 + 8) };
      assert.deepEqual(m.ramParts(), parts);
      assert.equal(m.bda.byteLength, parts.keys + parts.crc + parts.flags);
      assert.equal(m.byteLength, m.bda.byteLength + m.map.byteLength + ghost + regions + parts.segments + parts.volumes);
    }
    assert.ok(new CacheMap(64).ghost!.byteLength > 0);
  });
});

describe('cache map: adaptive decay (ARC\'s p as the decay period)', () => {
  it('a block back from the ghost history starts at one hit\'s counter, one a write re-inserted at the top, which holds TOP_DECAY carries', () => {
    const m = new CacheMap(8, { ghostEntries: 4096 });
    for (let b = 0; b < 4; b++) insert(m, 0, b);
    // A write of 1: invalidated, then re-inserted by the write itself at the top.
    assert.equal(m.invalidate(0, 1), true);
    assert.equal(insert(m, 0, 1), 4);
    for (const b of [5, 6, 7]) insert(m, 0, b);
    // 0 evicted once-seen by 8; back at once (a miss of a recently evicted block): one hit's counter.
    assert.equal(insert(m, 0, 8), 0);
    assert.equal(insert(m, 0, 0), 1);
    assert.deepEqual([m.count(1), m.count(4)], [GHOST_COUNT, MAX_COUNT]);
    assert.equal(drawSlots(m, 8), ' 8    0*  >2    3    1*** 5    6    7');
    // The hand evicts 2 and 3, carries 1 (at the top: no decrement on its first turn), evicts 5.
    for (const b of [9, 10, 11]) insert(m, 0, b);
    assert.equal(drawSlots(m, 8), ' 8    0*   9    10   1*** 11  >6    7');
    // A second round: 0 (counter 1) decays at its first carry, 1 is still at the top.
    for (const b of [12, 13, 14, 15, 16, 17]) insert(m, 0, b);
    assert.equal(drawSlots(m, 8), ' 14   0    15   16   1*** 17  >12   13');
    assert.equal(m.blocksCarried, 3);
  });

  it('decrements a carried block\'s counter on one carry in decayPeriod', () => {
    const m = new CacheMap(4);
    for (let b = 0; b < 4; b++) insert(m, 0, b);
    for (let b = 0; b < 4; b++) {
      m.lookup(0, b);
      m.lookup(0, b);
    }
    assert.equal(drawSlots(m, 4), '>0**  1**  2**  3**');
    m.decayPeriod = 2;
    // Carries 0 (kept at 2), 1 (-> 1), 2 (kept), 3 (-> 1), 0 (kept), 1 (-> 0), 2, 3 (-> 0),
    // 0 (kept): 1 is the first block at 0. With a period of 1 every carry decrements and 0
    // would go first.
    assert.equal(insert(m, 0, 9), 1);
    assert.equal(drawSlots(m, 4), ' 0**  9   >2**  3');
    assert.equal(m.blocksCarried, 9);
  });

  it('lengthens the period when a block evicted after reuse comes back and shortens it for a once-seen one', () => {
    const m = new CacheMap(2, { ghostEntries: 4096 });
    insert(m, 0, 10);
    insert(m, 0, 11);
    m.lookup(0, 10);
    // 10 is carried (its counter decays to 0), 11 (never hit) is evicted once-seen.
    assert.equal(insert(m, 0, 12), 1);
    // 10 goes now, as reused (it was hit).
    assert.equal(insert(m, 0, 13), 0);
    assert.deepEqual([...m.ghost!.count], [1, 1, 0, 0]);
    assert.equal(m.decayPeriod, 1);
    // A reused block back: the frequency side was too short. Its slot's block (12, once-seen)
    // left first, so ARC's weight is once / reused = 2 / max(1, 0).
    assert.equal(insert(m, 0, 10), 1);
    assert.equal(m.decayPeriod, 1 + 2 * DECAY_STEP);
    assert.equal(drawSlots(m, 2), '>13   10*');
    assert.deepEqual([...m.ghost!.count], [2, 0, 0, 0]);
    // A once-seen block back: shorter, by DECAY_STEP x max(1, reused / once).
    m.decayPeriod = 2;
    assert.equal(insert(m, 0, 11), 0);
    assert.equal(m.decayPeriod, 2 - DECAY_STEP);
    assert.equal(m.stats(0).ghostHits, 2);
    // Never below 1.
    m.decayPeriod = 1;
    insert(m, 0, 13);
    assert.equal(m.stats(0).ghostHits, 3);
    assert.equal(m.decayPeriod, 1);
  });

  it('a write\'s own re-insertion of the block it invalidated is a ghost hit that does not adapt', () => {
    // 16 slots: a one-block invalidation probes the map (and leaves a ghost entry).
    const m = new CacheMap(16, { ghostEntries: 4096 });
    for (let b = 0; b < 4; b++) insert(m, 0, b);
    m.decayPeriod = 2;
    assert.equal(m.invalidate(0, 1), true);
    assert.deepEqual([...m.ghost!.count], [0, 0, 1, 0]);
    assert.equal(insert(m, 0, 1), 4);
    assert.equal(m.stats(0).ghostHits, 1);
    assert.equal(m.count(4), 3);
    assert.equal(m.decayPeriod, 2);
  });

  it('ghost history: remembers the kind a key left with and counts the entries of each kind', () => {
    const g = new GhostHistory(1);
    const key = (b: number): [number, number] => [b, 1];
    g.add(...key(5), GhostKind.Once);
    assert.deepEqual([...g.count], [1, 0, 0, 0]);
    // One entry: a second key overwrites the first (and its count).
    g.add(...key(6), GhostKind.Reused);
    assert.deepEqual([...g.count], [0, 1, 0, 0]);
    assert.equal(g.take(...key(5)), -1);
    assert.equal(g.has(...key(6)), true);
    assert.equal(g.take(...key(6)), GhostKind.Reused);
    assert.equal(g.take(...key(6)), -1);
    assert.equal(g.has(...key(6)), false);
    assert.deepEqual([...g.count], [0, 0, 0, 0]);
    g.add(...key(7), GhostKind.Invalidated);
    assert.equal(g.take(...key(7)), GhostKind.Invalidated);
    g.add(...key(8), GhostKind.Refused);
    assert.deepEqual([...g.count], [0, 0, 0, 1]);
    assert.equal(g.take(...key(8)), GhostKind.Refused);
  });
});

describe('cache map: adaptive admission of read misses', () => {
  /** A read miss as the log places it: asked to admit(), then inserted if admitted. */
  function readMiss(m: CacheMap, volume: number, block: number): boolean {
    if (!m.admit(volume, block)) return false;
    insert(m, volume, block);
    return true;
  }

  it('refuses first touches past the admission share, admits them when read again, writes always', () => {
    const m = new CacheMap(8);
    m.admitShare = 0.5;
    // Credit 0.5, 1, 0.5, 1: every other first touch is admitted.
    for (const b of [10, 11, 12, 13]) readMiss(m, 0, b);
    assert.equal(drawSlots(m, 8), ' 11   13  >..   ..   ..   ..   ..   ..');
    assert.deepEqual([m.stats(0).firstTouchesRefused, m.stats(0).refusedGhostHits], [2, 0]);
    // 10 read again: a second touch, admitted (counter 0, as a first touch would have been);
    // the share rises by one step (no reused ghosts: the ratio is at least 1).
    assert.equal(readMiss(m, 0, 10), true);
    assert.equal(m.count(2), 0);
    assert.deepEqual([m.stats(0).refusedGhostHits, m.stats(0).ghostHits], [1, 0]);
    assert.equal(m.admitShare, 0.5 + ADMIT_STEP);
    // A write's block is inserted without asking (the log does not call admit() for it).
    insert(m, 0, 20);
    // Credit 0.5 + step, then 1 + 2 steps: 14 refused, 15 admitted.
    assert.deepEqual([readMiss(m, 0, 14), readMiss(m, 0, 15)], [false, true]);
    assert.equal(drawSlots(m, 8), ' 11   13   10   20   15  >..   ..   ..');
    // Without a ghost history nothing is refused.
    const plain = new CacheMap(8, { ghostEntries: 0 });
    plain.admitShare = ADMIT_MIN;
    for (const b of [1, 2, 3]) assert.equal(plain.admit(0, b), true);
  });

  it('a region whose refused blocks came back REGION_ADMIT times admits its first touches, and the next region\'s, until the scores age', () => {
    const m = new CacheMap(64, { ghostEntries: 1 << 16 });
    m.admitShare = 0;
    const region = (r: number, k: number): number => r * REGION_BLOCKS + k;
    for (let k = 0; k < REGION_ADMIT; k++) assert.equal(readMiss(m, 0, region(0, k)), false);
    // A first touch of region 0 or 1 is still refused (no refused block came back yet).
    assert.equal(m.admit(0, region(1, 500)), false);
    for (let k = 0; k < REGION_ADMIT; k++) assert.equal(readMiss(m, 0, region(0, k)), true);
    assert.equal(m.stats(0).refusedGhostHits, REGION_ADMIT);
    m.admitShare = 0;
    // Regions 0 and 1 of volume 0 now admit; region 5, and region 0 of volume 1, do not.
    assert.deepEqual([m.admit(0, region(0, 900)), m.admit(0, region(1, 7)), m.admit(0, region(5, 0)), m.admit(1, region(0, 900))], [true, true, false, false]);
    // Scores halve at every REGION_AGE x 1024th first-touch decision (1024: the table's entries
    // at this size; second touches are no decision), before it is made: REGION_ADMIT + 5 were
    // made so far, so region 0 admits a block (not remembered: a first touch each time) until
    // then, and then its score is REGION_ADMIT / 2.
    let admitted = 0;
    while (admitted < 2 * REGION_AGE * 1024 && m.admit(0, region(0, 901))) admitted++;
    assert.equal(admitted, REGION_AGE * 1024 - (REGION_ADMIT + 5) - 1);
    assert.equal(m.stats(0).firstTouchesRefused, REGION_ADMIT + 3);
  });

  it('a refused ghost back raises the share, a reused ghost back lowers it, by ADMIT_STEP times the ratio of the ghosts (within ADMIT_MIN..1)', () => {
    const m = new CacheMap(8, { ghostEntries: 4096 });
    const ghost = (b: number, kind: GhostKind): void => m.ghost!.add(b, 0, kind);
    m.admitShare = 0.5;
    // Back refused, with 1 refused and 3 reused ghosts left: up by 3 steps.
    for (const [b, kind] of [[10, GhostKind.Refused], [11, GhostKind.Refused], [12, GhostKind.Reused], [13, GhostKind.Reused], [14, GhostKind.Reused]] as const) ghost(b, kind);
    insert(m, 0, 10);
    assert.equal(m.admitShare, 0.5 + 3 * ADMIT_STEP);
    // Back reused, with 1 refused and 2 reused left: down by one step.
    insert(m, 0, 12);
    assert.equal(m.admitShare, 0.5 + 2 * ADMIT_STEP);
    // Back once-seen: the share does not move (the decay period does).
    ghost(15, GhostKind.Once);
    insert(m, 0, 15);
    assert.equal(m.admitShare, 0.5 + 2 * ADMIT_STEP);
    m.admitShare = ADMIT_MIN;
    ghost(16, GhostKind.Reused);
    insert(m, 0, 16);
    assert.equal(m.admitShare, ADMIT_MIN);
    m.admitShare = 1;
    ghost(17, GhostKind.Refused);
    insert(m, 0, 17);
    assert.equal(m.admitShare, 1);
  });
});

describe('cache map: write-back accounting, drop notifications, segment edge cases (mutation-found gaps)', () => {
  function put(m: CacheMap, volume: number, block: number, dirty = false): number {
    const slot = m.findVictim(volume);
    m.assign(slot, volume, block, false, dirty);
    return slot;
  }

  it('counts dirty blocks per volume; markClean of a dirty slot reports it once; a map rebuilt from the BDA finds them again', () => {
    const m = new CacheMap(8);
    const cleaned: number[] = [];
    m.onClean = (slot) => cleaned.push(slot);
    put(m, 0, 0, true);
    put(m, 0, 1);
    put(m, 0, 2, true);
    put(m, 1, 0, true);
    assert.equal(drawSlots(m, 8), ' 0d   1    2d   1:0d>..   ..   ..   ..');
    assert.deepEqual([m.dirtyBlocks(0), m.dirtyBlocks(1), m.dirtyBlocks(2), m.dirtyTotal], [2, 1, 0, 3]);
    // Not dirty, or not valid: nothing to clean.
    m.markClean(1);
    m.markClean(5);
    assert.deepEqual(cleaned, []);
    m.markClean(0);
    m.markClean(0);
    assert.deepEqual(cleaned, [0]);
    assert.deepEqual([m.dirtyBlocks(0), m.dirtyTotal], [1, 2]);
    assert.equal(drawSlots(m, 8), ' 0    1    2d   1:0d>..   ..   ..   ..');
    const again = new CacheMap(8, undefined, m.bda, m.map.table);
    assert.deepEqual([again.dirtyBlocks(0), again.dirtyBlocks(1), again.dirtyTotal], [1, 1, 2]);
    assert.deepEqual([...again.dirty.get(0)!.keys(), ...again.dirty.get(1)!.keys()], [2, 3]);
  });

  it('tells onDrop why each slot goes: evicted, superseded dirty copy (SHADOW), dropped (RESERVED if dirty); not for a dropped volume', () => {
    const m = new CacheMap(8);
    const drops: [number, boolean, boolean][] = [];
    m.onDrop = (slot, evicted, superseded) => drops.push([slot, evicted, superseded]);
    const cleaned: number[] = [];
    m.onClean = (slot) => cleaned.push(slot);
    for (let b = 0; b < 4; b++) put(m, 0, b, b >= 2);
    // A clean block replaced by a dirty copy: a plain drop, not a superseded dirty one.
    assert.equal(put(m, 0, 0, true), 4);
    // A dirty block replaced by a newer dirty copy: superseded, its slot SHADOW.
    assert.equal(put(m, 0, 2, true), 5);
    // A write drops dirty block 3: RESERVED.
    assert.ok(m.invalidate(0, 3));
    assert.equal(drawSlots(m, 8), ' ..   1    S    R    0d   2d  >..   ..');
    assert.deepEqual(drops, [
      [0, false, false],
      [2, false, true],
      [3, false, false],
    ]);
    assert.deepEqual(cleaned, [2, 3]);
    assert.deepEqual([m.dirtyBlocks(0), m.dirtyTotal], [2, 2]);
    // Filling the last two slots and going round: block 1 (clean, no counter) is evicted.
    put(m, 0, 6);
    put(m, 0, 7);
    assert.equal(put(m, 0, 8), 0);
    assert.equal(put(m, 0, 9), 1);
    assert.deepEqual(drops.slice(3), [[1, true, false]]);
    // A volume dropped at once (its epoch): no notification, every slot free (dirty ones too).
    drops.length = 0;
    assert.equal(m.dropVolume(0), 6);
    assert.deepEqual(drops, []);
    assert.equal(drawSlots(m, 8).replace('>', ' '), ' ..   ..   S    R    ..   ..   ..   ..');
    assert.equal(m.dirtyTotal, 0);
  });

  it('a failed device range drops its clean blocks only (a dirty block is the only copy of its data)', () => {
    const m = new CacheMap(8);
    for (let b = 0; b < 6; b++) put(m, 0, b, b % 2 === 1);
    assert.equal(m.dropSlots(0, 4), 2);
    assert.equal(drawSlots(m, 8), ' ..   1d   ..   3d   4    5d  >..   ..');
    assert.equal(m.volumeBlocks[0], 4);
  });

  it('a volume at its cap evicts its own clean blocks only; with only dirty ones it grows past the cap', () => {
    const m = new CacheMap(8);
    m.volumeCap[1] = 2;
    put(m, 1, 0, true);
    put(m, 1, 1);
    put(m, 0, 5);
    assert.equal(put(m, 1, 2), 1, 'its clean block, not the dirty one before it');
    assert.equal(put(m, 1, 3, true), 1);
    assert.equal(drawSlots(m, 8), ' 1:0d 1:3d>5    ..   ..   ..   ..   ..');
    // Both its blocks are dirty: the hand goes on as for any volume (5 has no counter: evicted).
    assert.equal(put(m, 1, 4), 2);
    assert.equal(m.volumeBlocks[1], 3);
  });

  it('a volume at its cap finds its one block just behind the hand (the search wraps round the log)', () => {
    const m = new CacheMap(8);
    for (let b = 0; b < 3; b++) put(m, 0, b);
    put(m, 1, 0);
    m.volumeCap[1] = 1;
    assert.equal(put(m, 1, 1), 3);
    assert.equal(drawSlots(m, 8), ' 0    1    2    1:1 >..   ..   ..   ..');
  });

  it('passes pinned slots many times over while it carries a block whose counter decays: the pinned count restarts at each block', () => {
    const m = new CacheMap(4);
    for (let b = 0; b < 3; b++) put(m, 0, b, true);
    put(m, 0, 3);
    for (let k = 0; k < MAX_COUNT; k++) m.lookup(0, 3);
    assert.equal(drawSlots(m, 4), '>0d   1d   2d   3***');
    // Ten rounds carry 3 past 3 pinned slots each (counter 3 for TOP_DECAY rounds, then 2, 1);
    // the eleventh evicts it.
    assert.equal(m.findVictim(0), 3);
    assert.equal(m.blocksCarried, TOP_DECAY + MAX_COUNT - 1);
    // 3 left the blocks its segment keeps once, when its counter reached 0 (not at 3 -> 2 -> 1):
    // the count a map rebuilt from the BDA finds.
    const keep = (x: CacheMap) => [...(x as unknown as { segKeep: Uint16Array }).segKeep];
    assert.deepEqual(keep(m), keep(new CacheMap(4, {}, m.bda, m.map.table)));
  });

  it(`a counter at the top decays at one decay of a top counter in ${TOP_DECAY}: the credit restarts after each, not at a lower counter's decay`, () => {
    // Two blocks at the top, carried in turn past 2 pinned slots: the 8th carry decays 3 (the
    // credit is then 0 again); 2 gets credits 1-3 while 3 decays to 0 and is evicted.
    const two = new CacheMap(4);
    for (const [b, dirty] of [[0, true], [1, true], [2, false], [3, false]] as const) put(two, 0, b, dirty);
    for (let k = 0; k < MAX_COUNT; k++) for (const b of [2, 3]) two.lookup(0, b);
    assert.equal(two.findVictim(0), 3);
    assert.equal(two.blocksCarried, TOP_DECAY + 5);
    assert.equal(drawSlots(two, 4), ' 0d   1d   2***>3');
    // One block at the top, a block with one use decaying between its carries: the top one
    // leaves the top at its 8th carry and, its counter run down, is evicted at the 6th
    // insertion (with the credit restarting at each decay of the other, it would stay on top).
    const one = new CacheMap(4);
    for (const [b, dirty] of [[0, false], [1, false], [2, true], [3, true]] as const) put(one, 0, b, dirty);
    for (let k = 0; k < MAX_COUNT; k++) one.lookup(0, 0);
    one.lookup(0, 1);
    const slots: number[] = [];
    for (let k = 0; k < 8; k++) {
      slots.push(put(one, 0, 10 + k));
      one.lookup(0, 10 + k);
    }
    assert.deepEqual(slots, [1, 1, 1, 1, 1, 0, 1, 0]);
    assert.equal(drawSlots(one, 4), ' 17* >16*  2d   3d');
  });

  it('a holes-only refill whose holes are all pinned passes a log\'s worth of valid blocks, then takes one', () => {
    const m = new CacheMap(6, { segmentBlocks: 2 });
    for (const [b, dirty] of [[4, false], [7, true], [0, true], [7, false], [6, true], [6, true], [0, false]] as const) put(m, 0, b, dirty);
    assert.equal(drawSlots(m, 2), [' 0   >R', ' R    7', ' S    6d'].join('\n'));
    // 3 holes (more than one segment's worth): every choice refills holes only, and every hole
    // is pinned. The hand passes 7, 0, 7, 0, 7, 0 (6 slots' worth), then takes 7.
    assert.equal(put(m, 0, 4), 3);
    assert.equal(m.refillingHoles, true);
    // 4 was evicted before: back with one hit's counter.
    assert.equal(drawSlots(m, 2), ['>0    R', ' R    4*', ' S    6d'].join('\n'));
  });

  it('pinned holes past the holes-first threshold: a holes-only refill that finds none free is followed by a cost-benefit choice, not a circle of the log per insertion', () => {
    // 32 segments of 4, full of clean blocks; 8 blocks written twice in write-back leave 8
    // SHADOW slots (invalid, pinned: more than max(128 / 64, 4) holes) next to their dirty copies.
    const m = new CacheMap(128, { segmentBlocks: 4 });
    for (let b = 0; b < 128; b++) put(m, 0, b);
    for (let b = 1000; b < 1008; b++) {
      put(m, 0, b, true);
      put(m, 0, b, true);
    }
    const pinned = [...m.bda.flags].filter((f) => (f & (FLAG_SHADOW | FLAG_DIRTY)) !== 0).length;
    assert.equal(pinned, 16);
    const entered = m.segmentsCleaned;
    for (let b = 2000; b < 2064; b++) put(m, 0, b);
    // 64 blocks fill 16 segments' worth; each holes-only attempt costs at most one segment
    // more. Entering a pinned hole's segment after another went round the whole log (32
    // segments) for every block: about 2,000 segments entered.
    assert.ok(m.segmentsCleaned - entered <= 48, `${m.segmentsCleaned - entered} segments entered for 64 insertions`);
  });

  it('a counter that decays to 0 as the hand carries its block makes its segment cheaper to clean', () => {
    const full = new CacheMap(6, { segmentBlocks: 2 });
    for (let b = 0; b < 6; b++) put(full, 0, b);
    for (const b of [0, 1, 4, 5]) full.lookup(0, b);
    // Warm start, the hand in segment 2: segments 0 and 2 hot, 1 cold.
    const m = new CacheMap(6, { segmentBlocks: 2 }, full.bda, full.map.table);
    m.hand = 4;
    assert.equal(drawSlots(m, 2), [' 0*   1*', ' 2    3', '>4*   5*'].join('\n'));
    // 4 and 5 are carried (counters down to 0), segment 1 refilled; then segment 2, cold now,
    // scores above segment 0 (still hot).
    for (const b of [10, 11, 12]) put(m, 0, b);
    assert.equal(drawSlots(m, 2), [' 0*   1*', ' 10   11', ' 12  >5'].join('\n'));
  });

  it('a read-ahead block counts once among the blocks its segment keeps, also when back from the ghost history', () => {
    for (const recent of [false, true]) {
      const full = new CacheMap(6, { segmentBlocks: 2 });
      for (let b = 0; b < 6; b++) put(full, 0, b);
      full.lookup(0, 0);
      full.lookup(0, 1);
      // Warm start, the hand in segment 2; block 20 read ahead (left the cache recently or not).
      const m = new CacheMap(6, { segmentBlocks: 2, ghostEntries: 4096 }, full.bda, full.map.table);
      m.hand = 4;
      if (recent) m.ghost!.add(20, 0, GhostKind.Once);
      const slot = m.findVictim(0);
      m.assign(slot, 0, 20, true);
      for (const b of [21, 22, 23]) put(m, 0, b);
      // Segment 2 keeps one block of two: it scores above segment 0 (both kept) and comes next.
      assert.equal(drawSlots(m, 2), [' 0*   1*', ' 22   23', '>20*  21'].join('\n'), `recently evicted: ${recent}`);
    }
  });

  it('a kept block dropped no longer counts among the blocks its segment keeps', () => {
    const full = new CacheMap(8, { segmentBlocks: 2 });
    for (let b = 0; b < 8; b++) put(full, 0, b);
    for (const b of [0, 1, 4, 5, 6]) full.lookup(0, b);
    const m = new CacheMap(8, { segmentBlocks: 2 }, full.bda, full.map.table);
    m.hand = 2;
    assert.ok(m.invalidate(0, 4));
    assert.equal(drawSlots(m, 2), [' 0*   1*', '>2    3', ' ..   5*', ' 6*   7'].join('\n'));
    // As old as each other: segment 2 scores (2 x 1 hole + 0 cold) / (2 + 1 kept) = 2/3,
    // segment 3 (1 cold) / (2 + 1 kept) = 1/3, segment 0 nothing.
    assert.equal(m.upcomingSegment(), 2);
  });

  it('an invalidation of up to a quarter of the slots (a write) leaves ghosts of its blocks; a larger one (a discard, a BDA scan) does not', () => {
    const m = new CacheMap(16, { ghostEntries: 4096 });
    for (let b = 0; b < 12; b++) put(m, 0, b);
    assert.equal(m.invalidateRange(0, 0, 4), 4);
    assert.equal(m.invalidateRange(0, 4, 5), 5);
    for (const b of [0, 4]) put(m, 0, b);
    // 0 is back with the full counter (a ghost of a write's block); 4 as a new block.
    assert.deepEqual([m.count(m.peek(0, 0)), m.count(m.peek(0, 4)), m.stats(0).ghostHits], [MAX_COUNT, 0, 1]);
  });

  it('adapts the decay period by the ratio of the other kind\'s ghosts to this kind\'s', () => {
    const m = new CacheMap(8, { ghostEntries: 4096 });
    const ghost = (b: number, kind: GhostKind): void => m.ghost!.add(b, 0, kind);
    m.decayPeriod = 4;
    // Back once-seen, with 1 once-seen and 2 reused ghosts left: shorter by 2 steps.
    for (const [b, kind] of [[10, GhostKind.Once], [11, GhostKind.Once], [12, GhostKind.Reused], [13, GhostKind.Reused]] as const) ghost(b, kind);
    put(m, 0, 10);
    assert.equal(m.decayPeriod, 4 - 2 * DECAY_STEP);
    // Back reused, with 2 once-seen and 2 reused left: longer by one step.
    for (const [b, kind] of [[14, GhostKind.Once], [15, GhostKind.Reused]] as const) ghost(b, kind);
    put(m, 0, 12);
    assert.equal(m.decayPeriod, 4 - DECAY_STEP);
  });

  it('a last segment shorter than the others: the hand leaves it at the end of the log; segmentBlocks is clipped to the slots', () => {
    const m = new CacheMap(10, { segmentBlocks: 4, segmentChoice: SegmentChoice.Order });
    assert.deepEqual([m.segments, m.segmentOf(9)], [3, 2]);
    for (let b = 0; b < 10; b++) assert.equal(put(m, 0, b), b);
    assert.equal(m.hand, 0);
    assert.deepEqual([m.wraps, m.segmentsCleaned], [1, 3]);
    const one = new CacheMap(4, { segmentBlocks: 16 });
    assert.deepEqual([one.segmentBlocks, one.segments], [4, 1]);
  });

  it('with two segments the hand alternates (no holes-only refill); holes first needs strictly more than the threshold', () => {
    const two = new CacheMap(8, { segmentBlocks: 4 });
    for (let b = 0; b < 8; b++) put(two, 0, b);
    for (const b of [0, 1, 4, 5, 6]) two.invalidate(0, b);
    assert.equal(two.upcomingSegment(), 1);
    assert.equal(two.upcomingHolesOnlyRefill, false);
    // 16 segments of 4: holes first takes more than max(64 / 64, 4) = 4 holes; 4 are not enough.
    const m = new CacheMap(64, { segmentBlocks: 4 });
    for (let b = 0; b < 64; b++) put(m, 0, b);
    for (const b of [36, 37, 38, 39]) m.invalidate(0, b);
    // Cost-benefit: segment 9 (4 holes, entered 8 segments ago) scores 2 x 8, as much as
    // segment 1 (full, entered 16 ago) 1 x 16: the first in the window wins.
    assert.equal(m.upcomingSegment(), 1);
    assert.equal(m.upcomingHolesOnlyRefill, false);
  });

  it('a warm start (map rebuilt from the BDA, hand restored): equal scores go to the first segment of the window; one whose blocks are all carried is skipped', () => {
    const full = new CacheMap(16, { segmentBlocks: 4 });
    for (let b = 0; b < 16; b++) put(full, 0, b);
    // No counters, no holes, every segment as old: segment 1 (the first other than the hand's).
    let m = new CacheMap(16, { segmentBlocks: 4 }, full.bda, full.map.table);
    assert.equal(m.upcomingSegment(), 1);
    // Every block hit: all scores 0; from segment 2, the window's first is 0, not the next one.
    for (let b = 0; b < 16; b++) full.lookup(0, b);
    m = new CacheMap(16, { segmentBlocks: 4 }, full.bda, full.map.table);
    m.hand = 8;
    assert.equal(m.upcomingSegment(), 0);
    // In log order from segment 0: every segment is carried forward (each counts as skipped,
    // the first one too), then block 0 goes.
    m = new CacheMap(16, { segmentBlocks: 4, segmentChoice: SegmentChoice.Order }, full.bda, full.map.table);
    assert.equal(m.findVictim(0), 0);
    assert.deepEqual([m.segmentsSkipped, m.blocksCarried], [4, 16]);
  });

  it(`the cleaning window wraps past the last segment: holes there are found (${CLEANING_WINDOW + 4} segments)`, () => {
    const S = CLEANING_WINDOW + 4;
    const m = new CacheMap(2 * S, { segmentBlocks: 2 });
    for (let b = 0; b < 2 * S + 2; b++) put(m, 0, b);
    // The next window starts at segment CLEANING_WINDOW and wraps: segments S-4..S-1, 0.. .
    // 130 holes (more than 1/64 of the slots) in segments 100..164, all in the wrapped part.
    for (let s = 200; s < 330; s++) assert.ok(m.invalidate(0, m.bda.blockOf(s)));
    assert.equal(m.upcomingSegment(), 100);
    assert.equal(m.upcomingHolesOnlyRefill, true);
  });
});
