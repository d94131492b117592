import { strict as assert } from 'node:assert';
import { AddressMap, MapBuilder } from '../../src/cache/address-map';
import { BlockDescriptorArray, MAX_BLOCK_NUMBER, MAX_VOLUMES } from '../../src/cache/bda';
import { checkTable, rng } from './helpers';

describe('cache BDA', () => {
  it('keys a volume id below MAX_VOLUMES and 32-bit block numbers in 10 bytes per slot; valid and REF flags', () => {
    const bda = new BlockDescriptorArray(4);
    bda.set(0, MAX_VOLUMES - 1, MAX_BLOCK_NUMBER);
    bda.set(1, 7, 5);
    assert.equal(bda.volumeOf(0), 255);
    assert.equal(bda.blockOf(0), 2 ** 32 - 1);
    assert.equal(bda.volumeOf(1), 7);
    assert.equal(bda.blockOf(1), 5);
    assert.equal(bda.isValid(1), true);
    assert.equal(bda.isReferenced(1), false);
    bda.reference(1);
    assert.equal(bda.isReferenced(1), true);
    bda.unreference(1);
    assert.equal(bda.isReferenced(1), false);
    assert.equal(bda.countValid(0, 4), 2);
    bda.clear(0);
    assert.equal(bda.isValid(0), false);
    assert.equal(bda.byteLength, 4 * 10);
  });
});

/** Blocks of volume 1 whose keys have home position `home` in `map`, the first `n` from `from`. */
function blocksWithHome(map: AddressMap, home: number, n: number, from = 0): number[] {
  const out: number[] = [];
  for (let b = from; out.length < n; b++) if (map.home(b, 1) === home) out.push(b);
  return out;
}

/**
 * One step of a map checked against a Map model: the lookup of (v, b) must agree; a present key
 * is removed when `remove` (its slot freed), an absent one added in a free slot.
 */
function modelStep(map: AddressMap, bda: BlockDescriptorArray, model: Map<string, number>, free: number[], v: number, b: number, remove: boolean): void {
  const key = `${v}/${b}`;
  const have = model.get(key);
  assert.equal(map.get(v, b), have ?? -1);
  if (have !== undefined && remove) {
    assert.equal(map.remove(have), true);
    bda.clear(have);
    model.delete(key);
    free.push(have);
  } else if (have === undefined && free.length > 0) {
    const idx = free.pop() as number;
    bda.set(idx, v, b);
    map.add(idx);
    model.set(key, idx);
  }
}

describe('cache address map', () => {
  for (const distBits of [32, 1]) {
    it(`draws Robin Hood placement and backward-shift removal across the end of the table (displacement field of ${distBits === 32 ? 'all spare' : distBits} bits)`, () => {
      const bda = new BlockDescriptorArray(6);
      const map = new AddressMap(bda, 0.85, undefined, distBits);
      assert.equal(map.capacity, 9);
      // Keys A, B, C with home 7, D with home 8, E with home 0: runs across the end of the table.
      const [a, b, c] = blocksWithHome(map, 7, 3);
      const [d] = blocksWithHome(map, 8, 1);
      const [e] = blocksWithHome(map, 0, 1);
      const put = (slot: number, block: number) => {
        bda.set(slot, 1, block);
        map.add(slot);
      };
      // Cells: slot/displacement, position 0 first.
      put(0, d);
      put(1, e);
      put(2, a);
      assert.equal(checkTable(map, bda), '1/0 . . . . . . 2/0 0/0');
      // B (home 7) passes A (as displaced as B would be there) and takes 8 from D (richer), D
      // takes 0 from E, E goes to 1.
      put(3, b);
      assert.equal(checkTable(map, bda), '0/1 1/1 . . . . . 2/0 3/1');
      // C takes 0 from D (displaced 1 < 2), D takes 1 from E, E goes to 2.
      put(4, c);
      assert.equal(checkTable(map, bda), '4/2 0/2 1/2 . . . . 2/0 3/1');
      assert.equal(map.get(1, e), 1);
      assert.equal(map.get(1, c), 4);
      // A leaves: everything after it moves back by one, until the empty position 3.
      assert.equal(map.remove(2), true);
      bda.clear(2);
      assert.equal(checkTable(map, bda), '0/1 1/1 . . . . . 3/0 4/1');
      // The lookup of A stops at E (home 0, displaced 1 at position 1, where A would be 3).
      assert.equal(map.get(1, a), -1);
      assert.equal(map.remove(0), true);
      bda.clear(0);
      // E is back home; the shift stops at the empty position 1.
      assert.equal(checkTable(map, bda), '1/0 . . . . . . 3/0 4/1');
      assert.equal(map.remove(0), false);
      assert.equal(map.size, 3);
    });

    it(`agrees with a model in every reachable state of a full small table (displacement field of ${distBits === 32 ? 'all spare' : distBits} bits)`, () => {
      // 7 slots, 9 positions; 10 keys whose homes pile up at the end of the table and wrap.
      const slots = 7;
      const bda = new BlockDescriptorArray(slots);
      const probe = new AddressMap(bda, 0.99, undefined, distBits);
      assert.equal(probe.capacity, 9);
      const homes = [8, 8, 8, 7, 0, 0, 1, 7, 4, 8];
      const used = new Map<number, number>();
      const keys = homes.map((h) => {
        const b = blocksWithHome(probe, h, 1, used.get(h) ?? 0)[0];
        used.set(h, b + 1);
        return b;
      });
      // A state: which key each slot holds (-1: none) and the table; explored once per table.
      type State = { holder: number[]; table: Int32Array };
      const seen = new Set<string>();
      const todo: State[] = [{ holder: new Array<number>(slots).fill(-1), table: new Int32Array(9).fill(-1) }];
      let transitions = 0;
      while (todo.length > 0) {
        const st = todo.pop() as State;
        for (let op = 0; op < 2 * keys.length; op++) {
          const k = op % keys.length;
          const holder = st.holder.slice();
          for (let s = 0; s < slots; s++) {
            if (holder[s] >= 0) bda.set(s, 1, keys[holder[s]]);
            else bda.clear(s);
          }
          const map = new AddressMap(bda, 0.99, st.table.slice(), distBits);
          const at = holder.indexOf(k);
          if (op < keys.length) {
            // Add key k: present -> addUnlessPresent names its slot and changes nothing.
            const free = holder.indexOf(-1);
            if (at >= 0) {
              if (free < 0) continue;
              bda.set(free, 1, keys[k]);
              assert.equal(map.addUnlessPresent(free), at);
              bda.clear(free);
              assert.deepEqual(map.table, st.table);
              continue;
            }
            if (free < 0) continue;
            bda.set(free, 1, keys[k]);
            if (op % 2 === 0) map.add(free);
            else assert.equal(map.addUnlessPresent(free), -1);
            holder[free] = k;
          } else {
            // Remove key k: absent -> false, nothing changed.
            if (at < 0) {
              for (let s = 0; s < slots; s++) {
                if (holder[s] >= 0) continue;
                bda.set(s, 1, keys[k]);
                assert.equal(map.remove(s), false);
                bda.clear(s);
                break;
              }
              assert.deepEqual(map.table, st.table);
              continue;
            }
            assert.equal(map.remove(at), true);
            bda.clear(at);
            holder[at] = -1;
          }
          transitions++;
          checkTable(map, bda);
          keys.forEach((b, j) => assert.equal(map.get(1, b), holder.indexOf(j), `key ${j}`));
          // The same layout of keys with other slot numbers behaves alike: one state.
          const id = Array.from(map.table, (x) => (x === -1 ? '.' : holder[map.slotOf(x)])).join(',');
          if (!seen.has(id)) {
            seen.add(id);
            todo.push({ holder, table: map.table.slice() });
          }
        }
      }
      // Every layout Robin Hood placement reaches with these homes, each left by every operation.
      assert.equal(seen.size, 4820);
      assert.equal(transitions, 43554);
    });
  }

  it('agrees with a Map under random adds and removes at high load (seeded), saturated displacements included', () => {
    for (const [lf, distBits] of [
      [0.85, 32],
      [0.97, 32],
      [0.9, 2],
    ]) {
      const n = 5000;
      const bda = new BlockDescriptorArray(n);
      const map = new AddressMap(bda, lf, undefined, distBits);
      const model = new Map<string, number>();
      const free: number[] = [];
      for (let i = n - 1; i >= 0; i--) free.push(i);
      const r = rng(42);
      for (let step = 0; step < 60000; step++) {
        const v = Math.floor(r() * 3) * 127;
        const b = Math.floor(r() * 8000) * (v === 254 ? 2 ** 19 : 1);
        modelStep(map, bda, model, free, v, b, model.has(`${v}/${b}`) && r() < 0.3);
      }
      assert.equal(free.length, 0, 'the table was filled');
      checkTable(map, bda);
      for (const [key, idx] of model) {
        const [v, b] = key.split('/').map(Number);
        assert.equal(map.get(v, b), idx);
      }
    }
  });

  it('MapBuilder + addBuilt build a valid Robin Hood table in one pass: the key of every valid slot found, a key met twice keeps the slot pick() chose, runs wrap past the end, a builder sized too small places the rest one by one, later adds and removes agree with a Map', () => {
    const r = rng(7);
    let wrapped = 0;
    let late = 0;
    let ranges = 0;
    for (let trial = 0; trial < 336; trial++) {
      // Small tables whose keys pile up at the end (runs wrap), then larger random ones, then
      // tables of several ranges of 2^16 homes (runs cross from one range into the next).
      const small = trial < 300;
      const n = small ? 2 + Math.floor(r() * 14) : trial < 330 ? 3000 + Math.floor(r() * 3000) : 70000 + Math.floor(r() * 20000);
      const lf = [0.5, 0.85, 0.99][trial % 3];
      const distBits = trial % 4 === 0 ? 2 : 32;
      const bda = new BlockDescriptorArray(n);
      const map = new AddressMap(bda, lf, undefined, distBits);
      const cap = map.capacity;
      if (cap > 2 ** 16) ranges++;
      // A pool of keys fewer than the slots: some keys are met twice or more.
      const pool: [number, number][] = [];
      const poolSize = Math.max(1, Math.floor(n * (0.5 + r() * 0.6)));
      for (let i = 0; i < poolSize; i++) {
        if (small && r() < 0.7) {
          const home = [cap - 1, cap - 2, 0, 1][Math.floor(r() * 4)];
          pool.push([1, blocksWithHome(map, home, 1, Math.floor(r() * 1000))[0]]);
        } else {
          pool.push([Math.floor(r() * 3) * 127, Math.floor(r() * 2 ** 32)]);
        }
      }
      const rank = Array.from({ length: n }, () => r());
      for (let i = 0; i < n; i++) {
        const [v, b] = pool[Math.floor(r() * pool.length)];
        bda.set(i, v, b);
      }
      // Some slots not valid: not added.
      for (let i = 0; i < n; i++) if (r() < 0.1) bda.clear(i);
      const winner = new Map<string, number>();
      for (let i = 0; i < n; i++) {
        if (!bda.isValid(i)) continue;
        const key = `${bda.keyHi[i]}/${bda.keyLo[i]}`;
        const w = winner.get(key);
        if (w === undefined || rank[i] > rank[w]) winner.set(key, i);
      }
      let picks = 0;
      const valid = bda.countValid(0, n);
      // Every fifth builder is sized for half the slots: ranges overflow, the rest go late. Every
      // other trial spreads the indexes over 3 builders (recovery.ts: one per thread).
      const builders = Array.from({ length: trial % 2 === 0 ? 1 : 3 }, () => new MapBuilder(map.capacity, trial % 5 === 4 ? Math.ceil(n / 2) : n));
      for (let i = 0; i < n; i++) if (bda.isValid(i)) builders[Math.floor(r() * builders.length)].add(i, bda.keyLo[i], bda.keyHi[i]);
      if (trial % 5 === 4) late += builders.reduce((k, b) => k + b.late.length, 0);
      map.addBuilt(builders, (a, b) => {
        picks++;
        assert.equal(`${bda.keyHi[a]}/${bda.keyLo[a]}`, `${bda.keyHi[b]}/${bda.keyLo[b]}`, 'pick() of two keys');
        const [keep, drop] = rank[a] >= rank[b] ? [a, b] : [b, a];
        bda.clear(drop);
        return keep;
      });
      assert.equal(picks, valid - winner.size);
      assert.equal(map.size, winner.size);
      if (map.table[0] !== -1 && map.distanceAt(0, map.table[0]) > 0) wrapped++;
      checkTable(map, bda);
      const model = new Map<string, number>();
      for (const [key, slot] of winner) {
        const [v, b] = key.split('/').map(Number);
        assert.equal(map.get(v, b), slot, `key ${key}`);
        model.set(key, slot);
      }
      // The layout takes further adds and removes.
      const free: number[] = [];
      for (let i = 0; i < n; i++) if (!bda.isValid(i)) free.push(i);
      for (let step = 0; step < (small ? 40 : 4000); step++) {
        const [v, b] = r() < 0.5 ? pool[Math.floor(r() * pool.length)] : [1, Math.floor(r() * 2 ** 32)];
        modelStep(map, bda, model, free, v, b, model.has(`${v}/${b}`) && r() < 0.5);
      }
      checkTable(map, bda);
    }
    assert.ok(wrapped > 20, `runs wrapped past the end in ${wrapped} tables`);
    assert.ok(late > 1000, `${late} indexes over their range's room placed one by one`);
    assert.equal(ranges, 6, 'tables of 2 or more ranges');
  });

  it('costs 4 / loadFactor bytes per block; entries hold the slot in the bit length of the slot count', () => {
    const bda = new BlockDescriptorArray(1000);
    const map = new AddressMap(bda, 0.85);
    assert.equal(map.capacity, Math.ceil(1000 / 0.85) + 1);
    assert.equal(map.byteLength, 4 * map.capacity);
    assert.equal(map.slotBits, 10);
    assert.equal(map.distMax, 2 ** 22 - 1);
    // 2^24 slots need 25 bits (slot 2^24 - 1 must differ from an empty entry's low bits).
    assert.equal(32 - Math.clz32(2 ** 24), 25);
  });
});
