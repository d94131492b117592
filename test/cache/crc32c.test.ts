import { strict as assert } from 'node:assert';
import { native } from '../../src/native/binding';
import { rng } from './helpers';

/** Bit-at-a-time CRC-32C: the definition the native code must agree with. */
function reference(data: Uint8Array, seed = 0): number {
  let c = ~seed >>> 0;
  for (const x of data) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (c & 1 ? 0x82f63b78 : 0);
  }
  return ~c >>> 0;
}

function random(n: number, r: () => number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

describe('native CRC-32C', () => {
  it('matches the standard check value and the bitwise definition at every length class', () => {
    assert.equal(native.crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(native.crc32c(new Uint8Array(32)), 0x8a9136aa);
    const r = rng(3);
    // Around the 3 x 1360-byte interleaved rounds and 8-byte steps.
    for (const n of [0, 1, 7, 8, 9, 1359, 4079, 4080, 4081, 4096, 8160, 8192, 12289, 65536]) {
      const d = random(n, r);
      const seed = Math.floor(r() * 2 ** 32);
      assert.equal(native.crc32c(d, seed), reference(d, seed), `length ${n}`);
      assert.equal(native.crc32c(d.subarray(n >> 1), native.crc32c(d.subarray(0, n >> 1))), reference(d), `chained ${n}`);
    }
  });

  it('folds runs of 256 bytes or more (AVX-512 VPCLMULQDQ where the CPU has it) to the same CRC at any length and start', () => {
    const r = rng(5);
    const data = random(70000, r);
    // Around the 256-byte turns, the 64-byte registers, the 16-byte lanes and the tail.
    for (const n of [255, 256, 257, 271, 272, 273, 300, 511, 512, 513, 767, 1024, 1039, 4095, 4096, 4097, 4111, 65536, 65551]) {
      for (const start of [0, 1, 3, 17, 63]) {
        const d = data.subarray(start, start + n);
        const seed = Math.floor(r() * 2 ** 32);
        assert.equal(native.crc32c(d, seed), reference(d, seed), `length ${n} at ${start} (folding: ${native.crc32cFolding})`);
      }
    }
  });

  it('computes a batch of block CRCs and checks a scatter list of blocks in one call', () => {
    const bs = 4096;
    const data = random(5 * bs, rng(9));
    const crcs = new Uint32Array(8);
    native.crc32cBlocks(data, bs, crcs, 2);
    for (let j = 0; j < 5; j++) assert.equal(crcs[2 + j], reference(data.subarray(j * bs, (j + 1) * bs)));
    const bad = new Uint8Array(5);
    // Views that split blocks anywhere.
    const views = [data.subarray(0, 100), data.subarray(100, 3 * bs + 5), data.subarray(3 * bs + 5)];
    assert.equal(native.crc32cCheck(views, bs, crcs, 2, bad), 0);
    assert.deepEqual([...bad], [0, 0, 0, 0, 0]);
    data[3 * bs + 7] ^= 1;
    crcs[2] ^= 1;
    assert.equal(native.crc32cCheck(views, bs, crcs, 2, bad), 2);
    assert.deepEqual([...bad], [1, 0, 0, 1, 0]);
    assert.equal(native.crc32cCheck(data, bs, crcs, 2, bad), 2);
  });

  it('rejects arguments it cannot honour', () => {
    const crcs = new Uint32Array(1);
    const bad = new Uint8Array(1);
    assert.throws(() => native.crc32cCheck([new Uint8Array(100)], 4096, crcs, 0, bad), { code: 'EINVAL' });
    assert.throws(() => native.crc32cCheck(new Uint8Array(8192), 4096, crcs, 0, bad), { code: 'ERANGE' });
    assert.throws(() => native.crc32cBlocks(new Uint8Array(8192), 4096, crcs, 0), { code: 'ERANGE' });
    assert.throws(() => native.crc32cBlocks(new Uint8Array(8192), 0, crcs, 0), { code: 'EINVAL' });
  });
});
