/**
 * FileStore on regular files (ext4 under the OS temp dir, where O_DIRECT works; tmpfs under
 * /dev/shm, which refuses FALLOC_FL_ZERO_RANGE) and on a loop block device, with both engines.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileStore } from '../../src/backing/file-store';
import { FsEngine } from '../../src/io/fs-engine';
import type { IoEngine } from '../../src/io/io-engine';
import { UringEngine } from '../../src/io/uring-engine';
import { native } from '../../src/native/binding';
import { rejectsWithCode } from '../support/assert';
import { tmpDir } from '../support/tmp';
import { splitAt } from '../support/scatter';
import { FaultyEngine, gate } from '../cache/helpers';

/** A view of `len` bytes whose address is `align`-aligned plus `skew` bytes. */
function skewed(len: number, skew: number): Uint8Array {
  return native.alignedBuffer(len + skew, 4096).subarray(skew);
}

const engines: [string, () => IoEngine][] = [
  ['io_uring', () => new UringEngine()],
  ['threadpool', () => new FsEngine()],
];

for (const [engineName, makeEngine] of engines) {
  describe(`FileStore on ${engineName}`, () => {
    let dir: string;
    let engine: IoEngine;

    beforeEach(() => {
      dir = tmpDir('fstore');
      engine = makeEngine();
    });

    afterEach(() => {
      engine.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('creates a sparse file of the requested size when the path does not exist', async () => {
      const p = path.join(dir, 'new.img');
      const store = await FileStore.open(p, { createSize: 64 << 20, engine });
      try {
        const st = fs.statSync(p);
        assert.equal(store.kind, 'file');
        assert.equal(store.size, 64 << 20);
        assert.equal(st.size, 64 << 20);
        assert.equal(st.blocks, 0);
        assert.equal(st.mode & 0o777, 0o600, 'a created image is readable by its owner only');
        assert.equal(store.location, `file:${st.dev}:${st.ino}`);
        assert.match(store.identity, new RegExp(`^file:${st.dev}:${st.ino}:gen=\\d+:birth=\\d+#ctime=\\d+:mtime=\\d+:size=${64 << 20}$`));
        assert.equal(store.changesVisible, true);
        assert.deepEqual(store.features, { flush: true, discard: true, writeZeroes: true });
        const buf = new Uint8Array(4096).fill(1);
        await store.read(10 << 20, [buf]);
        assert.ok(buf.every((x) => x === 0));
      } finally {
        await store.close();
      }
      // It exists now: createSize does not resize it.
      const again = await FileStore.open(p, { createSize: 1 << 20, engine });
      assert.equal(again.size, 64 << 20);
      await again.close();
    });

    it('fails to open a missing path without createSize with ENOENT', async () => {
      await rejectsWithCode(FileStore.open(path.join(dir, 'missing.img'), { engine }), 'ENOENT');
      await rejectsWithCode(FileStore.open(dir, { engine }), 'EISDIR');
    });

    it('changes identity when the file is replaced by another of the same size', async () => {
      const p = path.join(dir, 'disk.img');
      fs.writeFileSync(p, Buffer.alloc(1 << 20));
      const a = await FileStore.open(p, { engine, readOnly: true });
      const idA = a.identity;
      await a.close();
      const a2 = await FileStore.open(p, { engine, readOnly: true });
      assert.equal(a2.identity, idA);
      await a2.close();
      const tmp = path.join(dir, 'disk.img.new');
      fs.writeFileSync(tmp, Buffer.alloc(1 << 20));
      fs.renameSync(tmp, p);
      const b = await FileStore.open(p, { engine, readOnly: true });
      assert.notEqual(b.identity, idA);
      await b.close();
    });

    it('sees every offline change: identity at the next open differs from the one at close', async () => {
      const p = path.join(dir, 'vm.img');
      const backup = path.join(dir, 'backup.img');
      const ref = path.join(dir, 'ref');
      fs.writeFileSync(p, randomBytes(1 << 20));
      fs.copyFileSync(p, backup);
      const dd = (): void => {
        execFileSync('dd', [`if=${backup}`, `of=${p}`, 'bs=4096', 'count=4', 'seek=8', 'conv=notrunc', 'status=none']);
      };
      const changes: [string, () => void][] = [
        ['dd conv=notrunc', dd],
        [
          'dd conv=notrunc, then touch -r restoring mtime',
          () => {
            execFileSync('touch', ['-r', p, ref]);
            dd();
            execFileSync('touch', ['-r', ref, p]);
          },
        ],
        ['cp backup.img vm.img', () => execFileSync('cp', [backup, p])],
        [
          'rm + re-create (same size)',
          () => {
            fs.rmSync(p);
            fs.writeFileSync(p, Buffer.alloc(1 << 20));
          },
        ],
        [
          'truncate + extend',
          () => {
            fs.truncateSync(p, 0);
            fs.truncateSync(p, 1 << 20);
          },
        ],
      ];
      const inodeReused: string[] = [];
      for (const [what, change] of changes) {
        const before = await FileStore.open(p, { engine });
        await before.write(0, [randomBytes(4096)]);
        await before.flush();
        const ino = fs.statSync(p).ino;
        const atClose = await before.currentIdentity();
        await before.close();
        // Right after close: within the same timestamp tick unless currentIdentity waited.
        change();
        if (fs.statSync(p).ino === ino) inodeReused.push(what);
        const after = await FileStore.open(p, { engine });
        assert.notEqual(after.identity, atClose, `${what}: identity unchanged`);
        await after.close();
      }
      // ext4 reuses the inode of a deleted file at once: the identity differed all the same.
      assert.ok(inodeReused.includes('rm + re-create (same size)'), `inode reused by: ${inodeReused.join(', ')}`);
      const still = await FileStore.open(p, { engine, readOnly: true });
      const id = await still.currentIdentity();
      await still.close();
      const again = await FileStore.open(p, { engine, readOnly: true });
      assert.equal(again.identity, id, 'no change: same identity');
      await again.close();
    });

    it('round-trips data, flushes, and refuses writes when read-only', async () => {
      const p = path.join(dir, 'disk.img');
      const store = await FileStore.open(p, { createSize: 1 << 20, engine });
      const data = randomBytes(10000);
      await store.write(1234, splitAt(data, [1, 999, 5000]));
      await store.flush();
      await store.close();
      const ro = await FileStore.open(p, { engine, readOnly: true });
      try {
        assert.equal(ro.readOnly, true);
        assert.deepEqual(ro.features, { flush: true, discard: false, writeZeroes: false });
        const back = new Uint8Array(10000);
        await ro.read(1234, [back]);
        assert.deepEqual(Buffer.from(back), data);
        await rejectsWithCode(ro.write(0, [new Uint8Array(512)]), 'EROFS');
        await rejectsWithCode(ro.writeZeroes(0, 512, false), 'EROFS');
      } finally {
        await ro.close();
      }
      await rejectsWithCode(ro.read(0, [new Uint8Array(1)]), 'ESHUTDOWN');
    });

    it('discards (punches holes) and writes zeroes with and without unmap', async () => {
      const p = path.join(dir, 'disk.img');
      fs.writeFileSync(p, randomBytes(4 << 20));
      const store = await FileStore.open(p, { engine });
      try {
        const blocks0 = fs.statSync(p).blocks;
        await store.discard(0, 1 << 20);
        const blocks1 = fs.statSync(p).blocks;
        assert.ok(blocks1 <= blocks0 - 2048 + 8, `discard freed blocks: ${blocks0} -> ${blocks1}`);
        await store.writeZeroes(1 << 20, 1 << 20, true);
        const blocks2 = fs.statSync(p).blocks;
        assert.ok(blocks2 <= blocks1 - 2048 + 8, `unmap freed blocks: ${blocks1} -> ${blocks2}`);
        // ZERO_RANGE keeps the blocks allocated (unwritten extents).
        await store.writeZeroes(2 << 20, (1 << 20) - 100, false);
        assert.ok(fs.statSync(p).blocks >= blocks2 - 8);
        const back = new Uint8Array(4 << 20);
        await store.read(0, [back]);
        assert.ok(back.subarray(0, (3 << 20) - 100).every((x) => x === 0));
        assert.ok(back.subarray((3 << 20) - 100).some((x) => x !== 0));
        assert.equal(fs.statSync(p).size, 4 << 20);
      } finally {
        await store.close();
      }
    });

    it('falls back to writing zeros where the file system refuses ZERO_RANGE (tmpfs)', async () => {
      const shm = fs.mkdtempSync(path.join('/dev/shm', 'vbc-fstore-'));
      try {
        const p = path.join(shm, 'disk.img');
        const data = randomBytes(3 << 20);
        fs.writeFileSync(p, data);
        const store = await FileStore.open(p, { engine });
        try {
          await store.writeZeroes(1000, (2 << 20) + 5, false);
          const back = new Uint8Array(3 << 20);
          await store.read(0, [back]);
          assert.deepEqual(Buffer.from(back.subarray(0, 1000)), data.subarray(0, 1000));
          assert.ok(back.subarray(1000, 1000 + (2 << 20) + 5).every((x) => x === 0));
          assert.deepEqual(Buffer.from(back.subarray(1000 + (2 << 20) + 5)), data.subarray(1000 + (2 << 20) + 5));
        } finally {
          await store.close();
        }
      } finally {
        fs.rmSync(shm, { recursive: true, force: true });
      }
    });

    it('with O_DIRECT, serves misaligned offsets, lengths and buffers through a bounce buffer', async () => {
      const p = path.join(dir, 'direct.img');
      const initial = randomBytes((1 << 20) + 1000); // size not a multiple of the block size
      fs.writeFileSync(p, initial);
      const store = await FileStore.open(p, { engine, direct: true });
      const model = Buffer.from(initial);
      try {
        assert.equal(store.direct, true);
        assert.ok(store.alignment >= 512);
        // Aligned everything: straight through.
        const aligned = native.alignedBuffer(8192, 4096);
        aligned.set(randomBytes(8192));
        await store.write(8192, [aligned]);
        model.set(aligned, 8192);
        // Misaligned offset, length and buffer addresses.
        const cases: [number, number[], number][] = [
          [513, [100, 5000, 3], 1],
          [4096, [4096], 7],
          [12288 + 4000, [200], 0],
          [(1 << 20) + 900, [100], 3], // the partial last block
          [0, [1], 1],
        ];
        for (const [off, sizes, skew] of cases) {
          const len = sizes.reduce((s, x) => s + x, 0);
          const src = skewed(len, skew);
          src.set(randomBytes(len));
          await store.write(off, splitAt(src, sizes));
          model.set(src, off);
          const dst = skewed(len, skew + 1);
          await store.read(off, splitAt(dst, sizes.slice().reverse()));
          assert.deepEqual(Buffer.from(dst), Buffer.from(src), `case ${off}`);
        }
        const all = native.alignedBuffer(model.length, 4096);
        await store.read(0, [all]);
        assert.deepEqual(Buffer.from(all), model);
        assert.equal(fs.statSync(p).size, model.length);
      } finally {
        await store.close();
      }
    });

    it('with O_DIRECT, keeps concurrent misaligned writes to the same block', async () => {
      const p = path.join(dir, 'direct.img');
      const store = await FileStore.open(p, { engine, direct: true, createSize: 1 << 20 });
      try {
        const a = store.alignment;
        const sectors = Array.from({ length: a / 512 }, () => randomBytes(512));
        await Promise.all(sectors.map((s, i) => store.write(4 * a + i * 512, [s])));
        const back = new Uint8Array(a);
        await store.read(4 * a, [back]);
        assert.deepEqual(Buffer.from(back), Buffer.concat(sectors));
        // Discard and zeroing of partial blocks, concurrent with writes of their neighbours.
        const w = store.write(8 * a, [sectors[0]]);
        const z = store.writeZeroes(8 * a + 512, 512, false);
        const d = store.discard(8 * a + 1024, 512);
        await Promise.all([w, z, d]);
        const blk = new Uint8Array(1536);
        await store.read(8 * a, [blk]);
        assert.deepEqual(Buffer.from(blk.subarray(0, 512)), sectors[0]);
        assert.ok(blk.subarray(512).every((x) => x === 0));
      } finally {
        await store.close();
      }
    });

    it('readThen reads like read(), reports to its callback, and close waits for one in flight', async () => {
      const p = path.join(dir, 'disk.img');
      const held = new FaultyEngine(engine);
      const store = await FileStore.open(p, { createSize: 1 << 20, engine: held });
      const data = randomBytes(3 * 4096);
      await store.write(4096, [data]);
      const readThen = (offset: number, bufs: Uint8Array[]): Promise<Error | null> => new Promise((resolve) => store.readThen(offset, bufs, resolve));
      const back = splitAt(new Uint8Array(data.length), [100, 4096]);
      assert.equal(await readThen(4096, back), null);
      assert.deepEqual(Buffer.concat(back), data);
      held.failReads = true;
      assert.equal(((await readThen(0, [new Uint8Array(512)])) as { code?: string } | null)?.code, 'EIO');
      held.failReads = false;
      // A read held in flight: close() resolves only after its callback ran.
      const g = gate();
      held.readHook = () => g.promise;
      const events: string[] = [];
      const one = new Uint8Array(4096);
      store.readThen(4096, [one], (err) => events.push(`read ${err === null ? 'ok' : err.message}`));
      const closed = store.close().then(() => events.push('closed'));
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(events, []);
      g.resolve();
      await closed;
      assert.deepEqual(events, ['read ok', 'closed']);
      assert.deepEqual(Buffer.from(one), data.subarray(0, 4096));
      const late = await readThen(0, [new Uint8Array(512)]);
      assert.equal((late as { code?: string } | null)?.code, 'ESHUTDOWN');
    });

    it('waits for operations in flight before closing', async () => {
      const p = path.join(dir, 'disk.img');
      const store = await FileStore.open(p, { createSize: 4 << 20, engine });
      const data = randomBytes(1 << 20);
      const w = store.write(0, [data]);
      const f = store.flush();
      await store.close();
      await w;
      await f;
      assert.deepEqual(fs.readFileSync(p).subarray(0, 1 << 20), data);
    });
  });
}

describe('FileStore on a loop block device @host', () => {
  let dir: string;
  let image: string;
  let dev: string;

  before(() => {
    dir = tmpDir('fsloop');
    image = path.join(dir, 'loop.img');
    fs.writeFileSync(image, randomBytes(16 << 20));
    dev = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
  });

  after(() => {
    execFileSync('losetup', ['--detach', dev]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const direct of [false, true]) {
    it(`reads, writes, discards and zeroes through BLK ioctls (direct: ${direct})`, async () => {
      const store = await FileStore.open(dev, { direct });
      try {
        const st = fs.statSync(dev);
        assert.equal(store.kind, 'block');
        assert.equal(store.size, 16 << 20);
        assert.equal(store.logicalBlockSize, 512);
        assert.equal(store.identity, `block:${st.rdev}#size=${16 << 20}`);
        assert.equal(store.location, `block:${st.rdev}`);
        assert.equal(store.changesVisible, false);
        const data = randomBytes(3000);
        await store.write(1000, splitAt(data, [7, 2000]));
        const back = new Uint8Array(3000);
        await store.read(1000, [back]);
        assert.deepEqual(Buffer.from(back), data);
        await store.discard(1 << 20, 1 << 20);
        await store.writeZeroes(4096, 8192, false);
        const z = new Uint8Array(8192).fill(1);
        await store.read(4096, [z]);
        assert.ok(z.every((x) => x === 0));
        const d = new Uint8Array(1 << 20).fill(1);
        await store.read(1 << 20, [d]);
        assert.ok(d.every((x) => x === 0));
        await store.flush();
      } finally {
        await store.close();
      }
    });
  }

  it('rejects a failed I/O (write past the end: ENOSPC) and keeps working', async () => {
    const store = await FileStore.open(dev, {});
    try {
      await rejectsWithCode(store.write(store.size, [new Uint8Array(4096)]), 'ENOSPC');
      const data = randomBytes(4096);
      await store.write(0, [data]);
      const back = new Uint8Array(4096);
      await store.read(0, [back]);
      assert.deepEqual(Buffer.from(back), data);
    } finally {
      await store.close();
    }
  });
});
