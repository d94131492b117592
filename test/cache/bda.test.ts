import { strict as assert } from 'node:assert';
import { AddressMap } from '../../src/cache/address-map';
import { BlockDescriptorArray, MAX_BLOCK_NUMBER } from '../../src/cache/bda';
import { rng } from './helpers';

describe('cache BDA', () => {
  it('packs volume id and 48-bit block numbers, valid and REF flags', () => {
    const bda = new BlockDescriptorArray(4);
    bda.set(0, 65535, MAX_BLOCK_NUMBER);
    bda.set(1, 7, 2 ** 32 + 5);
    assert.equal(bda.volumeOf(0), 65535);
    assert.equal(bda.blockOf(0), MAX_BLOCK_NUMBER);
    assert.equal(bda.volumeOf(1), 7);
    assert.equal(bda.blockOf(1), 2 ** 32 + 5);
    assert.equal(bda.isValid(1), true);
    assert.equal(bda.isReferenced(1), false);
    bda.reference(1);
    assert.equal(bda.isReferenced(1), true);
    bda.unreference(1);
    assert.equal(bda.isReferenced(1), false);
    assert.equal(bda.countValid(0, 4), 2);
    bda.clear(0);
    assert.equal(bda.isValid(0), false);
    assert.equal(bda.byteLength, 4 * 13);
  });
});

describe('cache address map', () => {
  it('draws a probe run and repairs it by backward shift on removal', () => {
    // Three slots whose keys share a home position, in a tiny table.
    const bda = new BlockDescriptorArray(8);
    const map = new AddressMap(bda, 0.7);
    const cap = map.capacity;
    const home = (v: number, b: number) => {
      bda.set(7, v, b);
      const m = new AddressMap(bda, 0.7);
      m.add(7);
      return m.table.indexOf(7);
    };
    // Find three blocks of volume 1 with the same home.
    const byHome = new Map<number, number[]>();
    let colliding: number[] = [];
    for (let b = 0; colliding.length < 3; b++) {
      const h = home(1, b);
      const l = byHome.get(h) ?? [];
      l.push(b);
      byHome.set(h, l);
      if (l.length === 3) colliding = l;
    }
    bda.clear(7);
    const h = home(1, colliding[0]);
    bda.clear(7);
    colliding.forEach((b, i) => {
      bda.set(i, 1, b);
      map.add(i);
    });
    const draw = () => {
      const cells: string[] = [];
      for (let k = 0; k < 3; k++) cells.push(String(map.table[(h + k) % cap]));
      return cells.join(' ');
    };
    // Slots 0, 1, 2 sit one after the other from their common home.
    assert.equal(draw(), '0 1 2');
    assert.equal(map.remove(0), true);
    bda.clear(0);
    // Backward shift: 1 and 2 move up; no tombstone is left behind.
    assert.equal(draw(), '1 2 -1');
    assert.equal(map.get(1, colliding[2]), 2);
    assert.equal(map.get(1, colliding[0]), -1);
    assert.equal(map.size, 2);
  });

  it('agrees with a Map under random adds and removes (seeded)', () => {
    const n = 5000;
    const bda = new BlockDescriptorArray(n);
    const map = new AddressMap(bda, 0.7);
    const model = new Map<string, number>();
    const free: number[] = [];
    for (let i = n - 1; i >= 0; i--) free.push(i);
    const r = rng(42);
    for (let step = 0; step < 60000; step++) {
      const v = Math.floor(r() * 3);
      const b = Math.floor(r() * 8000) * (v === 2 ? 2 ** 20 : 1);
      const key = `${v}/${b}`;
      const have = model.get(key);
      assert.equal(map.get(v, b), have ?? -1);
      if (have !== undefined && r() < 0.5) {
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
    assert.equal(map.size, model.size);
    for (const [key, idx] of model) {
      const [v, b] = key.split('/').map(Number);
      assert.equal(map.get(v, b), idx);
    }
  });

  it('costs 4 / loadFactor bytes per block', () => {
    const bda = new BlockDescriptorArray(1000);
    const map = new AddressMap(bda, 0.7);
    assert.equal(map.capacity, Math.ceil(1000 / 0.7) + 1);
    assert.equal(map.byteLength, 4 * map.capacity);
  });
});
