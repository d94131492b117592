/**
 * The sector rule the model tests judge reads by (sector-model.ts): it must refuse stale data,
 * or the model tests would pass whatever the cache returned.
 */
import { strict as assert } from 'node:assert';
import { checkSectors, SECTOR, type WriteRec } from './sector-model';

describe('the model tests\' sector rule (checkSectors)', () => {
  const fill = (n: number, byte: number): Uint8Array => new Uint8Array(n).fill(byte);
  const expected = fill(4 * SECTOR, 1);

  it('accepts the expected data, a write that overlapped the read, and the zeros of an overlapping discard; counts the sectors', () => {
    const got = new Uint8Array(expected);
    got.set(fill(SECTOR, 7), SECTOR); // sector 1: written by w
    got.set(fill(SECTOR, 0), 3 * SECTOR); // sector 3: discarded by z
    const w: WriteRec = { v: 0, start: 4096 + SECTOR, end: 4096 + 2 * SECTOR, data: fill(SECTOR, 7) };
    const z: WriteRec = { v: 0, start: 4096 + 3 * SECTOR, end: 4096 + 8 * SECTOR, data: null };
    assert.equal(checkSectors(0, 4096, got, expected, [w, z], 'read'), 4);
  });

  it('refuses stale data, and data a write put elsewhere, on another volume, or a discard that did not cover the sector', () => {
    const stale = new Uint8Array(expected);
    stale.set(fill(SECTOR, 9), 2 * SECTOR);
    assert.throws(() => checkSectors(0, 4096, stale, expected, [], 'read'), /read: volume 0 sector at 5120 holds 0909090909090909, neither the newest acknowledged data \(0101010101010101\) nor an overlapping operation's/);
    const w: WriteRec = { v: 0, start: 4096 + 2 * SECTOR, end: 4096 + 3 * SECTOR, data: fill(SECTOR, 9) };
    assert.equal(checkSectors(0, 4096, stale, expected, [w], 'read'), 4);
    assert.throws(() => checkSectors(1, 4096, stale, expected, [w], 'read'), /volume 1 sector at 5120/, 'another volume');
    assert.throws(() => checkSectors(0, 4096, stale, expected, [{ ...w, start: w.start + SECTOR, end: w.end + SECTOR }], 'read'), /sector at 5120/, 'elsewhere');
    const zeros = new Uint8Array(expected);
    zeros.set(fill(SECTOR, 0), 0);
    assert.throws(() => checkSectors(0, 4096, zeros, expected, [{ v: 0, start: 4096 + SECTOR, end: 8192, data: null }], 'read', 'X', 'Y'), /sector at 4096 holds 0000000000000000, neither X \(0101010101010101\) nor Y/);
  });
});
