/**
 * The IoEngine contract, run against both engines (io_uring and threadpool).
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
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

    it('syncRegion: each write is in the file when it returns (another descriptor reads it), only inside the range (ERANGE), none after close (ESHUTDOWN)', () => {
      fs.writeSync(fd, new Uint8Array(8192), 0, 8192, 0);
      const other = fs.openSync(file, 'r');
      const region = engine.syncRegion(fd, 4096, 2048);
      try {
        const bytes = randomBytes(100);
        region.write(bytes, 1000);
        const back = Buffer.alloc(100);
        fs.readSync(other, back, 0, 100, 4096 + 1000);
        assert.deepEqual(back, bytes);
        region.write(bytes.subarray(0, 48), 2000);
        assert.throws(() => region.write(bytes.subarray(0, 49), 2000), (e: VhostError) => e.code === 'ERANGE');
        region.close();
        assert.throws(() => region.write(bytes, 0), (e: VhostError) => e.code === 'ESHUTDOWN');
        region.close();
        const all = fs.readFileSync(file);
        assert.equal(all.length, 8192, 'the file keeps its size');
        assert.deepEqual(all.subarray(4096 + 2000, 4096 + 2048), bytes.subarray(0, 48));
        assert.ok(all.subarray(0, 4096 + 1000).every((b) => b === 0), 'nothing written outside the writes');
      } finally {
        region.close();
        fs.closeSync(other);
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

/** The lines of /proc/self/maps that map `file`. */
function mapsOf(file: string): string[] {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.endsWith(file));
}

describe('UringEngine.syncRegion', () => {
  let dir: string;
  let file: string;
  let fd: number;
  let engine: UringEngine;

  beforeEach(() => {
    dir = tmpDir('io-region');
    file = path.join(dir, 'cache.img');
    fs.writeFileSync(file, Buffer.alloc(16384));
    fd = fs.openSync(file, 'r+');
    engine = new UringEngine();
  });

  afterEach(() => {
    engine.close();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('maps a regular file (a write is a memory copy, no system call) until closed', () => {
    const region = engine.syncRegion(fd, 0, 4096);
    assert.equal(mapsOf(file).length, 1, 'the range is mapped');
    region.write(new Uint8Array([1, 2, 3, 4]), 2048);
    assert.deepEqual(Array.from(fs.readFileSync(file).subarray(2048, 2052)), [1, 2, 3, 4]);
    region.close();
    assert.equal(mapsOf(file).length, 0, 'unmapped at close');
  });

  it('writes through the descriptor where it cannot map: a range past the end of the file, a character device', () => {
    const past = engine.syncRegion(fd, 16384, 4096);
    try {
      assert.equal(mapsOf(file).length, 0);
      past.write(new Uint8Array([9]), 10);
      const st = fs.fstatSync(fd);
      assert.equal(st.size, 16384 + 11, 'written by pwrite, which extends the file');
    } finally {
      past.close();
    }
    const dev = fs.openSync('/dev/null', 'r+');
    const region = engine.syncRegion(dev, 0, 4096);
    try {
      region.write(new Uint8Array(8), 0);
    } finally {
      region.close();
      fs.closeSync(dev);
    }
  });

  it('a write is kept by a crash of the process right after it (what the kill marks rely on)', () => {
    const script = `
      const fs = require('node:fs');
      const { UringEngine } = require(${JSON.stringify(path.join(__dirname, '../../src/io/uring-engine.js'))});
      const fd = fs.openSync(${JSON.stringify(file)}, 'r+');
      const region = new UringEngine().syncRegion(fd, 4096, 4096);
      region.write(new Uint8Array([0xde, 0xad, 0xbe, 0xef]), 100);
      process.kill(process.pid, 'SIGKILL');`;
    const r = spawnSync(process.execPath, ['-e', script], { stdio: 'ignore' });
    assert.equal(r.signal, 'SIGKILL');
    assert.deepEqual(Array.from(fs.readFileSync(file).subarray(4196, 4200)), [0xde, 0xad, 0xbe, 0xef]);
  });

  it('a file cut short under the mapping: the write throws EIO and the process lives on (SIGBUS contained); the next region works', () => {
    const region = engine.syncRegion(fd, 4096, 4096);
    try {
      fs.ftruncateSync(fd, 0);
      assert.throws(() => region.write(new Uint8Array([7]), 0), (e: VhostError) => e.code === 'EIO');
      assert.throws(() => region.write(new Uint8Array([7]), 0), (e: VhostError) => e.code === 'EIO', 'and every write after it');
    } finally {
      region.close();
    }
    fs.ftruncateSync(fd, 16384);
    const again = engine.syncRegion(fd, 4096, 4096);
    try {
      again.write(new Uint8Array([5]), 1);
      assert.equal(fs.readFileSync(file)[4097], 5);
    } finally {
      again.close();
    }
  });
});
