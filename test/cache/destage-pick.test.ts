/**
 * The destager's elevator (destage.ts pickRound): which dirty blocks a round takes, drawn on a
 * small example, then checked against the plain definition (every candidate sorted, `max` taken
 * from the cursor on, wrapping) on random sets, ranges and cursors.
 */
import { strict as assert } from 'node:assert';
import { Rng } from '../../src/bench/rng';
import { pickRound } from '../../src/cache/destage';

/** The definition: sort every [block, slot] in range, take max from the cursor on (wrapping), sort. */
function reference(dirty: Map<number, number>, blockOf: (s: number) => number, first: number, last: number, cursor: number, max: number): number[][] {
  const all = [...dirty.keys()].map((s) => [blockOf(s), s]).filter(([b]) => b >= first && b <= last);
  all.sort((x, y) => x[0] - y[0]);
  let from = all.findIndex(([b]) => b >= cursor);
  if (from < 0) from = 0;
  const out: number[][] = [];
  for (let j = 0; j < all.length && out.length < max; j++) out.push(all[(from + j) % all.length]);
  return out.sort((x, y) => x[0] - y[0]);
}

describe('destage: the elevator (pickRound)', () => {
  // Slot s holds block blocks[s].
  const blocks = [40, 7, 93, 12, 55, 3, 70, 21];
  const dirty = new Map(blocks.map((_, s) => [s, 0]));
  const blockOf = (s: number): number => blocks[s];
  const taken = (cursor: number, max: number, first = 0, last = Infinity): string =>
    pickRound(dirty, blockOf, first, last, cursor, max)
      .map(([b]) => b)
      .join(' ');

  it('takes the blocks from the cursor on, wrapping to the lowest, in block order', () => {
    assert.equal(taken(0, 3), '3 7 12');
    assert.equal(taken(22, 3), '40 55 70');
    assert.equal(taken(56, 4), '3 7 70 93');
    assert.equal(taken(94, 2), '3 7');
    assert.equal(taken(41, 8), '3 7 12 21 40 55 70 93');
    assert.equal(taken(41, 100), '3 7 12 21 40 55 70 93');
    // Only blocks in [first, last]: 12 21 40 55; from 50 on: 55, then 12 21.
    assert.equal(taken(50, 3, 10, 60), '12 21 55');
    assert.equal(taken(0, 3, 94, 100), '');
    assert.deepEqual(pickRound(new Map(), blockOf, 0, Infinity, 0, 4), []);
  });

  it('matches the definition on random sets, ranges and cursors (seeded)', () => {
    const rng = new Rng(20261203);
    for (let run = 0; run < 400; run++) {
      const n = rng.int(run < 50 ? 8 : 3000);
      const span = 1 + rng.int(run % 3 === 0 ? 64 : 2 ** 40);
      const used = new Set<number>();
      const map = new Map<number, number>();
      const at = new Map<number, number>();
      for (let s = 0; s < n; s++) {
        const b = rng.int(span);
        if (used.has(b)) continue;
        used.add(b);
        const slot = rng.int(1 << 30);
        if (map.has(slot)) continue;
        map.set(slot, 0);
        at.set(slot, b);
      }
      const of = (s: number): number => at.get(s) as number;
      const first = rng.int(2) === 0 ? 0 : rng.int(span);
      const last = rng.int(2) === 0 ? Infinity : first + rng.int(span);
      const cursor = rng.int(span + 2);
      const max = 1 + rng.int(300);
      assert.deepEqual(pickRound(map, of, first, last, cursor, max), reference(map, of, first, last, cursor, max), `run ${run}`);
    }
  });
});
