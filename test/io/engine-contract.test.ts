/**
 * The IoEngine contract, run against both engines (io_uring and threadpool).
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../../src/native/binding';
import { VhostError } from '../../src/native/errors';
import { FsEngine } from '../../src/io/fs-engine';
import type { IoEngine } from '../../src/io/io-engine';
import { UringEngine } from '../../src/io/uring-engine';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../src/backing/file-store';
import { rejectsWithCode } from '../support/assert';
import { tmpDir } from '../support/tmp';
import { splitAt } from '../support/scatter';

const engines: [string, () => IoEngine][] = [
  ['io_uring', () => new UringEngine()],
  ['threadpool', () => new FsEngine()],
];

for (const [name, make] of engines) {
  describe(`IoEngine contract: ${name}`, () => {
    let dir: string;
    let engine: IoEngine;
    let file: string;
    let fd: number;

    beforeEach(() => {
      dir = tmpDir('io');
      file = path.join(dir, 'data.img');
      fs.writeFileSync(file, Buffer.alloc(0));
      fd = fs.openSync(file, 'r+');
      engine = make();
    });

    afterEach(() => {
      engine.close();
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('reports its kind', () => {
      assert.equal(engine.kind, name);
    });

    it('round-trips a scatter list of odd sizes, read back with a different split', async () => {
      const data = randomBytes(3 + 1000 + 4097 + 1 + 65535 + 17);
      await engine.writev(fd, splitAt(data, [3, 1000, 4097, 1, 65535]), 12345);
      const back = new Uint8Array(data.length);
      await engine.readv(fd, splitAt(back, [7, 0, 70000, 5]), 12345);
      assert.deepEqual(Buffer.from(back), data);
      assert.equal(fs.fstatSync(fd).size, 12345 + data.length);
      // Bytes before the write read as zeros (a hole).
      const head = new Uint8Array(12345).fill(0xaa);
      await engine.readv(fd, [head], 0);
      assert.ok(head.every((b) => b === 0));
    });

    it('accepts empty scatter lists and empty views', async () => {
      await engine.writev(fd, [], 0);
      await engine.readv(fd, [new Uint8Array(0)], 0);
      assert.equal(fs.fstatSync(fd).size, 0);
    });

    it('round-trips scatter lists longer than IOV_MAX', async () => {
      const data = randomBytes(3000 * 3);
      await engine.writev(fd, splitAt(data, new Array<number>(2999).fill(3)), 0);
      const back = new Uint8Array(data.length);
      await engine.readv(fd, splitAt(back, new Array<number>(1499).fill(6)), 0);
      assert.deepEqual(Buffer.from(back), data);
    });

    it('fills bytes past end of file with zeros', async () => {
      const data = randomBytes(1000);
      fs.writeSync(fd, data, 0, data.length, 0);
      const a = new Uint8Array(3000).fill(0xff);
      const b = new Uint8Array(1096).fill(0xff);
      await engine.readv(fd, [a, b], 0);
      assert.deepEqual(Buffer.from(a.subarray(0, 1000)), data);
      assert.ok(a.subarray(1000).every((x) => x === 0));
      assert.ok(b.every((x) => x === 0));
      const beyond = new Uint8Array(4096).fill(0x55);
      await engine.readv(fd, [beyond], 1 << 20);
      assert.ok(beyond.every((x) => x === 0));
    });

    it('an exact read rejects with EIO at end of file (short read or entirely past it)', async () => {
      const data = randomBytes(1000);
      fs.writeSync(fd, data, 0, data.length, 0);
      const whole = new Uint8Array(1000);
      await engine.readv(fd, [whole], 0, true);
      assert.deepEqual(Buffer.from(whole), data);
      await assert.rejects(engine.readv(fd, [new Uint8Array(600), new Uint8Array(600)], 0, true), { code: 'EIO' });
      await assert.rejects(engine.readv(fd, [new Uint8Array(4096)], 1 << 20, true), { code: 'EIO' });
    });

    it('background reads and writes round-trip like the others (a segment of the cache log)', async () => {
      const data = randomBytes(512 * 1024);
      await engine.writev(fd, splitAt(data, [4096, 65536]), 8192, true);
      const back = new Uint8Array(data.length);
      await engine.readv(fd, [back], 8192, true, true);
      assert.deepEqual(Buffer.from(back), data);
      await assert.rejects(engine.readv(fd, [new Uint8Array(4096)], 1 << 20, true, true), { code: 'EIO' });
    });

    it('readvChecked reports to its callback once, never from the call itself, whether every block matched its CRC-32C', async () => {
      const BS = 4096;
      const data = randomBytes(130 * BS);
      fs.writeSync(fd, data, 0, data.length, 0);
      const crcs = new Uint32Array(140);
      for (let j = 0; j < 130; j++) crcs[j + 5] = native.crc32c(data.subarray(j * BS, (j + 1) * BS));
      const readChecked = (bufs: Uint8Array[], offset: number, at: number): Promise<[Error | null, boolean]> =>
        new Promise((resolve) => {
          let returned = false;
          let calls = 0;
          engine.readvChecked(fd, bufs, offset, BS, crcs, at, (err, ok) => {
            calls++;
            assert.ok(returned, 'callback ran inside readvChecked');
            // A second call would come later than this one: checked after a macrotask.
            setImmediate(() => resolve(calls === 1 ? [err, ok] : [new Error(`callback called ${calls} times`), false]));
          });
          returned = true;
        });
      // Two blocks over two views, the second block split between them.
      const a = new Uint8Array(3000);
      const b = new Uint8Array(2 * BS - 3000);
      assert.deepEqual(await readChecked([a, b], BS, 6), [null, true]);
      assert.deepEqual(Buffer.concat([a, b]), data.subarray(BS, 3 * BS));
      // The same blocks against the wrong CRC-32Cs (shifted by one block): no match.
      assert.deepEqual(await readChecked([a, b], BS, 5), [null, false]);
      // One block that does not match, the other does.
      crcs[7] ^= 1;
      assert.deepEqual(await readChecked([new Uint8Array(2 * BS)], BS, 6), [null, false]);
      crcs[7] ^= 1;
      // More views than one io_uring SQE takes (1024): the read is continued, then checked as a whole.
      const views = splitAt(new Uint8Array(130 * BS), new Array<number>(1031).fill(512));
      assert.equal(views.length, 1032);
      assert.deepEqual(await readChecked(views, 0, 5), [null, true]);
      assert.deepEqual(Buffer.concat(views), data);
      crcs[5 + 129] ^= 1;
      assert.deepEqual(await readChecked(views, 0, 5), [null, false], 'the last block, read by the continuation');
      crcs[5 + 129] ^= 1;
      assert.deepEqual(await readChecked([], 0, 5), [null, true]);
      const [past, ok] = await readChecked([new Uint8Array(BS)], data.length, 5);
      assert.ok(past instanceof VhostError);
      assert.equal(past.code, 'EIO');
      assert.equal(ok, false);
    });

    it('readvChecked checks each read against its own CRC-32C array and block size, also when reads against several are issued in one turn', async () => {
      const data = randomBytes(8 * 4096);
      fs.writeSync(fd, data, 0, data.length, 0);
      const crcsOf = (bs: number): Uint32Array => {
        const crcs = new Uint32Array(data.length / bs);
        for (let j = 0; j < crcs.length; j++) crcs[j] = native.crc32c(data.subarray(j * bs, (j + 1) * bs));
        return crcs;
      };
      const right = crcsOf(4096);
      const wrong = right.map((c) => c ^ 1);
      const small = crcsOf(512);
      // [crcs, block size, offset, length, index of the first CRC, expected verdict]
      const reads: [Uint32Array, number, number, number, number, boolean][] = [
        [right, 4096, 4096, 8192, 1, true],
        [wrong, 4096, 4096, 8192, 1, false],
        [small, 512, 1024, 2048, 2, true],
        [right, 4096, 0, 4096, 0, true],
        [small, 512, 1024, 2048, 3, false],
        [wrong, 4096, 0, 4096, 0, false],
      ];
      const verdicts = await Promise.all(
        reads.map(
          ([crcs, bs, offset, len, at]) =>
            new Promise<boolean>((resolve, reject) => engine.readvChecked(fd, [new Uint8Array(len)], offset, bs, crcs, at, (err, ok) => (err ? reject(err) : resolve(ok)))),
        ),
      );
      assert.deepEqual(verdicts, reads.map((r) => r[5]));
    });

    it('readvThen reports to its callback once, never from the call itself; bytes past end of file read as zeros', async () => {
      const data = randomBytes(3 * 4096);
      fs.writeSync(fd, data, 0, data.length, 0);
      const readThen = (bufs: Uint8Array[], offset: number, f = fd): Promise<Error | null> =>
        new Promise((resolve) => {
          let returned = false;
          let calls = 0;
          engine.readvThen(f, bufs, offset, (err) => {
            calls++;
            assert.ok(returned, 'callback ran inside readvThen');
            setImmediate(() => resolve(calls === 1 ? err : new Error(`callback called ${calls} times`)));
          });
          returned = true;
        });
      const parts = splitAt(new Uint8Array(2 * 4096), [100, 5000]);
      assert.equal(await readThen(parts, 4096), null);
      assert.deepEqual(Buffer.concat(parts), data.subarray(4096));
      const tail = new Uint8Array(8192).fill(0xee);
      assert.equal(await readThen([tail], 2 * 4096), null);
      assert.deepEqual(Buffer.from(tail), Buffer.concat([data.subarray(2 * 4096), Buffer.alloc(4096)]));
      assert.equal(await readThen([], 0), null);
      const err = await readThen([new Uint8Array(16)], 0, 1 << 20);
      assert.ok(err instanceof VhostError);
      assert.equal(err.code, 'EBADF');
    });

    it('runs concurrent operations on distinct ranges, each settling with its own data', async () => {
      const n = 64;
      const blocks = Array.from({ length: n }, () => randomBytes(4096 + 13));
      await Promise.all(blocks.map((blk, i) => engine.writev(fd, [blk], i * 8192)));
      const back = blocks.map((b) => new Uint8Array(b.length));
      await Promise.all(back.map((b, i) => engine.readv(fd, splitAt(b, [100, 4000]), i * 8192)));
      for (let i = 0; i < n; i++) assert.deepEqual(Buffer.from(back[i]), blocks[i], `block ${i}`);
    });

    it('completes a batch of 256 reads dispatched in one turn', async () => {
      const data = randomBytes(256 * 4096);
      fs.writeSync(fd, data, 0, data.length, 0);
      const bufs = Array.from({ length: 256 }, () => new Uint8Array(4096));
      // Reverse order, all dispatched synchronously.
      const ps = bufs.map((b, i) => engine.readv(fd, [b], (255 - i) * 4096));
      await Promise.all(ps);
      for (let i = 0; i < 256; i++) {
        const off = (255 - i) * 4096;
        assert.deepEqual(Buffer.from(bufs[i]), data.subarray(off, off + 4096));
      }
    });

    it('fdatasyncs', async () => {
      await engine.writev(fd, [randomBytes(8192)], 0);
      await engine.fdatasync(fd);
    });

    it('starts the write-out of a range (or to end of file), the data read back as written, then fdatasyncs', async () => {
      const data = randomBytes(1 << 20);
      await engine.writev(fd, [data], 4096);
      await engine.startWriteout(fd, 4096, data.length);
      await engine.writev(fd, [data.subarray(0, 8192)], 0);
      await engine.startWriteout(fd, 0, 0);
      const back = new Uint8Array(4096 + data.length);
      await engine.readv(fd, [back], 0, true);
      assert.deepEqual(Buffer.from(back.subarray(0, 8192)), data.subarray(0, 8192));
      assert.deepEqual(Buffer.from(back.subarray(8192)), data.subarray(4096));
      await engine.fdatasync(fd);
    });

    it('rejects a write-out start on an invalid fd with EBADF, on a character device with ESPIPE, over 2^32 - 1 bytes with EINVAL', async () => {
      await rejectsWithCode(engine.startWriteout(1 << 20, 0, 4096), 'EBADF');
      const dev = fs.openSync('/dev/null', 'r+');
      try {
        await rejectsWithCode(engine.startWriteout(dev, 0, 4096), 'ESPIPE');
      } finally {
        fs.closeSync(dev);
      }
      await rejectsWithCode(engine.startWriteout(fd, 0, 2 ** 32), 'EINVAL');
      await engine.startWriteout(fd, 0, 2 ** 32 - 1);
    });

    it('punches a hole that reads as zeros and keeps the size', async () => {
      const data = randomBytes(64 * 1024);
      await engine.writev(fd, [data], 0);
      await engine.fdatasync(fd);
      const blocksBefore = fs.fstatSync(fd).blocks;
      await engine.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 16384);
      const back = new Uint8Array(data.length);
      await engine.readv(fd, [back], 0);
      assert.deepEqual(Buffer.from(back.subarray(0, 8192)), data.subarray(0, 8192));
      assert.ok(back.subarray(8192, 24576).every((x) => x === 0));
      assert.deepEqual(Buffer.from(back.subarray(24576)), data.subarray(24576));
      const st = fs.fstatSync(fd);
      assert.equal(st.size, data.length);
      assert.ok(st.blocks < blocksBefore, `blocks ${st.blocks} < ${blocksBefore}`);
    });

    it('rejects fallocate with an invalid mode with EOPNOTSUPP or EINVAL', async () => {
      // PUNCH_HOLE without KEEP_SIZE is invalid.
      await assert.rejects(engine.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096), (err: unknown) => {
        assert.ok(err instanceof VhostError);
        assert.ok(err.code === 'EOPNOTSUPP' || err.code === 'EINVAL', err.code);
        return true;
      });
    });

    it('rejects a read on a closed fd with EBADF', async () => {
      const tmp = fs.openSync(file, 'r');
      fs.closeSync(tmp);
      await rejectsWithCode(engine.readv(tmp, [new Uint8Array(512)], 0), 'EBADF');
    });

    it('rejects a read on an invalid fd with EBADF', async () => {
      await rejectsWithCode(engine.readv(1 << 20, [new Uint8Array(512)], 0), 'EBADF');
      await rejectsWithCode(engine.fdatasync(1 << 20), 'EBADF');
    });

    it('rejects a write to a read-only fd with EBADF, and keeps working', async () => {
      const ro = fs.openSync(file, 'r');
      try {
        await rejectsWithCode(engine.writev(ro, [new Uint8Array(512)], 0), 'EBADF');
        const data = randomBytes(512);
        await engine.writev(fd, [data], 0);
        const back = new Uint8Array(512);
        await engine.readv(ro, [back], 0);
        assert.deepEqual(Buffer.from(back), data);
      } finally {
        fs.closeSync(ro);
      }
    });

    it('settles operations in flight at close', async () => {
      const data = randomBytes(4096);
      const w = engine.writev(fd, [data], 0);
      const s = engine.fdatasync(fd);
      engine.close();
      await w;
      await s;
      const back = Buffer.alloc(4096);
      fs.readSync(fd, back, 0, 4096, 0);
      assert.deepEqual(back, data);
    });
  });
}
