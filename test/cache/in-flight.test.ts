import { strict as assert } from 'node:assert';
import { InFlightRanges, SMALL_RANGE } from '../../src/cache/in-flight';

describe('in-flight block ranges (race rules of CachedStore)', () => {
  it('a write poisons the overlapping reads in flight, not the others', () => {
    const r = new InFlightRanges();
    const readA = r.begin(0, 3, false); //  blocks 0..3  [RRRR....]
    const readB = r.begin(6, 7, false); //  blocks 6..7  [......RR]
    const write = r.begin(3, 4, true); //   blocks 3..4  [...WW...]
    assert.equal(readA.poisoned, true, 'read 0..3 overlaps the write at block 3');
    assert.equal(readB.poisoned, false);
    assert.equal(write.poisoned, false);
    const later = r.begin(4, 4, false);
    assert.equal(later.poisoned, true, 'a read starting under an in-flight write is poisoned');
    r.end(write);
    assert.equal(r.begin(4, 4, false).poisoned, false, 'after the write ends, reads are clean');
  });

  it('large ranges (discards) meet small ones both ways', () => {
    const r = new InFlightRanges();
    const small = r.begin(5000, 5000, false);
    const discard = r.begin(0, SMALL_RANGE * 100, true);
    assert.equal(small.poisoned, true);
    const read = r.begin(SMALL_RANGE * 100, SMALL_RANGE * 100 + 1, false);
    assert.equal(read.poisoned, true, 'overlaps the last block of the discard');
    const outside = r.begin(SMALL_RANGE * 100 + 1, SMALL_RANGE * 100 + 1, false);
    assert.equal(outside.poisoned, false);
    // size counts both kinds: 3 small ranges and the large one.
    assert.equal(r.size, 4);
    r.end(discard);
    assert.equal(r.size, 3);
    assert.equal(r.begin(10, 10, false).poisoned, false);
  });

  it('forgets every range it was given back', () => {
    const r = new InFlightRanges();
    const ops = Array.from({ length: 1000 }, (_, i) => r.begin(i % 50, (i % 50) + 2, i % 7 === 0));
    assert.equal(r.size, 1000);
    for (const op of ops) r.end(op);
    r.end(ops[0] as NonNullable<(typeof ops)[0]>);
    assert.equal(r.size, 0);
    assert.equal(r.begin(0, 60, false).poisoned, false);
  });
});
