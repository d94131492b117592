/**
 * The native IoRing and block-device helpers directly, and what is specific to UringEngine
 * (batching, SQ overflow, close semantics).
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native/binding';
import { VhostError } from '../../src/native/errors';
import { CQE_RESULT, CQE_STRIDE, CQE_TAG, type NativeIoRing } from '../../src/native/types';
import { createIoEngine, probeIoUring } from '../../src/io';
import { UringEngine } from '../../src/io/uring-engine';
import { rejectsWithCode } from '../support/assert';
import { tmpDir } from '../support/tmp';

function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof VhostError, `expected VhostError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

/** Pairs [tag, result] from ring.completions. */
function pairs(ring: NativeIoRing, count: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < count; i++) {
    out.push([ring.completions[i * CQE_STRIDE + CQE_TAG], ring.completions[i * CQE_STRIDE + CQE_RESULT]]);
  }
  return out;
}

describe('native IoRing', () => {
  let dir: string;
  let file: string;
  let fd: number;
  let data: Buffer;

  beforeEach(() => {
    dir = tmpDir('ring');
    file = path.join(dir, 'data.img');
    data = randomBytes(1 << 20);
    fs.writeFileSync(file, data);
    fd = fs.openSync(file, 'r+');
  });

  afterEach(() => {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('probes io_uring as supported on this machine', () => {
    assert.deepEqual(probeIoUring(), { supported: true });
  });

  it('sizes the CQ twice the SQ and reports inline completions as [tag, result] pairs', () => {
    const ring = new native.IoRing({ entries: 8, onComplete: () => assert.fail('no async completion expected') });
    try {
      assert.equal(ring.sqEntries, 8);
      assert.equal(ring.cqEntries, 16);
      assert.equal(ring.completions.length, 16 * CQE_STRIDE);
      const a = new Uint8Array(4096);
      const b = new Uint8Array(100);
      ring.prepReadv(fd, [a], 4096, 41);
      // A single view may be passed as such, not in an array.
      ring.prepReadv(fd, b, (1 << 20) - 50, 42);
      assert.equal(ring.inflight, 2);
      // Page-cache hits complete during io_uring_enter.
      const n = ring.submit();
      assert.deepEqual(pairs(ring, n), [
        [41, 4096],
        [42, 50],
      ]);
      assert.equal(ring.inflight, 0);
      assert.deepEqual(Buffer.from(a), data.subarray(4096, 8192));
      assert.deepEqual(Buffer.from(b.subarray(0, 50)), data.subarray((1 << 20) - 50));
      assert.equal(ring.submit(), 0);
    } finally {
      ring.close();
    }
  });

  it('reports failures as -errno results', () => {
    const ring = new native.IoRing({ entries: 4, onComplete: () => {} });
    try {
      ring.prepReadv(1 << 20, [new Uint8Array(16)], 0, 7);
      const n = ring.submit();
      assert.deepEqual(pairs(ring, n), [[7, -os.constants.errno.EBADF]]);
    } finally {
      ring.close();
    }
  });

  it('delivers asynchronous completions through onComplete', async () => {
    let ring: NativeIoRing | undefined;
    const got: [number, number][] = [];
    const done = new Promise<void>((resolve) => {
      ring = new native.IoRing({
        entries: 4,
        onComplete: (count) => {
          got.push(...pairs(ring as NativeIoRing, count));
          if (got.length === 1) resolve();
        },
      });
    });
    const r = ring as NativeIoRing;
    // fsync goes to an io-wq worker: it cannot complete inline.
    r.prepFdatasync(fd, 5);
    const n = r.submit();
    got.push(...pairs(r, n));
    await done;
    assert.deepEqual(got, [[5, 0]]);
    r.close();
  });

  // 40 inline completions against an 8-entry CQ: the kernel keeps the overflow (NODROP) and
  // the ring flushes it in later reaps.
  it('submits on its own when the SQ is full and delivers CQ overflow', async () => {
    const total = 40;
    const bufs = Array.from({ length: total }, () => new Uint8Array(512));
    const seen = new Map<number, number>();
    const ring: NativeIoRing = new native.IoRing({
      entries: 4,
      onComplete: (count) => {
        for (const [t, r] of pairs(ring, count)) seen.set(t, r);
      },
    });
    for (let i = 0; i < total; i++) ring.prepReadv(fd, [bufs[i]], i * 512, i);
    for (const [t, r] of pairs(ring, ring.submit())) seen.set(t, r);
    while (seen.size < total) await new Promise((r) => setImmediate(r));
    for (let i = 0; i < total; i++) {
      assert.equal(seen.get(i), 512);
      assert.deepEqual(Buffer.from(bufs[i]), data.subarray(i * 512, i * 512 + 512));
    }
    assert.equal(ring.inflight, 0);
    ring.close();
  });

  it('validates its arguments', () => {
    const ring = new native.IoRing({ entries: 4, onComplete: () => {} });
    try {
      throwsCode(() => ring.prepReadv(fd, [new Uint8Array(1)], -1, 0), 'EINVAL');
      throwsCode(() => ring.prepReadv(fd, [new Uint8Array(1)], 0, 2 ** 31), 'EINVAL');
      throwsCode(() => ring.prepReadv(fd, [new Uint16Array(1) as unknown as Uint8Array], 0, 1), 'EINVAL');
      throwsCode(() => ring.prepReadv(fd, new Uint16Array(1) as unknown as Uint8Array, 0, 1), 'EINVAL');
      throwsCode(() => ring.prepReadv(fd, {} as unknown as Uint8Array, 0, 1), 'EINVAL');
      throwsCode(() => ring.prepWritev(fd, new Array<Uint8Array>(1025).fill(new Uint8Array(1)), 0, 1), 'EINVAL');
      throwsCode(() => ring.prepFallocate(fd, 0, 0, 0.5, 1), 'EINVAL');
      // A checked read needs a check table, whole blocks and a CRC for each.
      throwsCode(() => ring.prepReadvChecked(fd, [new Uint8Array(4096)], 0, 1, 0), 'EINVAL');
      throwsCode(() => ring.setCheckTable(new Uint8Array(4) as unknown as Uint32Array, 4096), 'EINVAL');
      throwsCode(() => ring.setCheckTable(new Uint32Array(2), 0), 'EINVAL');
      ring.setCheckTable(new Uint32Array(2), 4096);
      throwsCode(() => ring.prepReadvChecked(fd, [new Uint8Array(4000)], 0, 1, 0), 'EINVAL');
      throwsCode(() => ring.prepReadvChecked(fd, [new Uint8Array(8192)], 0, 1, 1), 'EINVAL');
      throwsCode(() => ring.prepReadvChecked(fd, [new Uint8Array(4096)], 0, 2 ** 20, 0), 'EINVAL');
      assert.equal(ring.inflight, 0);
      throwsCode(() => new native.IoRing({ entries: 0, onComplete: () => {} }), 'EINVAL');
    } finally {
      ring.close();
    }
  });

  it('stays alive after close() until operations in flight completed, then refuses new ones', async () => {
    let ring: NativeIoRing | undefined;
    let delivered = 0;
    const done = new Promise<void>((resolve) => {
      ring = new native.IoRing({
        entries: 4,
        onComplete: (count) => {
          delivered += count;
          if (delivered === 2) resolve();
        },
      });
    });
    const r = ring as NativeIoRing;
    r.prepFdatasync(fd, 1);
    r.prepFdatasync(fd, 2);
    // Queued, not submitted: close() submits them.
    r.close();
    assert.equal(r.closed, true);
    await done;
    await new Promise((res) => setImmediate(res));
    throwsCode(() => r.prepFdatasync(fd, 3), 'ESHUTDOWN');
    assert.equal(r.submit(), 0);
  });
});

describe('UringEngine specifics', () => {
  let dir: string;
  let fd: number;
  let data: Buffer;

  beforeEach(() => {
    dir = tmpDir('ueng');
    const file = path.join(dir, 'data.img');
    data = randomBytes(4 << 20);
    fs.writeFileSync(file, data);
    fd = fs.openSync(file, 'r+');
  });

  afterEach(() => {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('submits 256 reads dispatched in one turn with one io_uring_enter', async () => {
    const engine = new UringEngine({ entries: 256 });
    try {
      const bufs = Array.from({ length: 256 }, () => new Uint8Array(4096));
      await Promise.all(bufs.map((b, i) => engine.readv(fd, [b], i * 8192)));
      assert.equal(engine.stats.submits, 1);
      assert.equal(engine.stats.inline + engine.stats.async, 256);
      for (let i = 0; i < 256; i++) assert.deepEqual(Buffer.from(bufs[i]), data.subarray(i * 8192, i * 8192 + 4096));
    } finally {
      engine.close();
    }
  });

  it('handles 1000 reads with a 16-entry SQ', async () => {
    const engine = new UringEngine({ entries: 16 });
    try {
      const bufs = Array.from({ length: 1000 }, () => new Uint8Array(1024));
      await Promise.all(bufs.map((b, i) => engine.readv(fd, [b], i * 4096)));
      for (let i = 0; i < 1000; i++) assert.deepEqual(Buffer.from(bufs[i]), data.subarray(i * 4096, i * 4096 + 1024));
      assert.equal(engine.pending, 0);
    } finally {
      engine.close();
    }
  });

  it('rejects operations after close() with ESHUTDOWN', async () => {
    const engine = new UringEngine();
    const p = engine.readv(fd, [new Uint8Array(4096)], 0);
    engine.close();
    await p;
    await rejectsWithCode(engine.readv(fd, [new Uint8Array(16)], 0), 'ESHUTDOWN');
    await rejectsWithCode(engine.fdatasync(fd), 'ESHUTDOWN');
    const err = await new Promise<Error | null>((resolve) => engine.readvChecked(fd, [new Uint8Array(4096)], 0, 4096, new Uint32Array(1), 0, resolve));
    assert.equal((err as VhostError | null)?.code, 'ESHUTDOWN');
  });

  it('createIoEngine honours the preference', () => {
    const a = createIoEngine('auto');
    const u = createIoEngine('io_uring');
    const t = createIoEngine('threadpool');
    assert.equal(a.kind, 'io_uring');
    assert.equal(u.kind, 'io_uring');
    assert.equal(t.kind, 'threadpool');
    for (const e of [a, u, t]) e.close();
  });
});

describe('block device and O_DIRECT helpers', () => {
  it('aligns buffers and checks O_DIRECT alignment', () => {
    for (const align of [512, 4096, 65536]) {
      const b = native.alignedBuffer(2 * align + 10, align);
      assert.equal(b.byteLength, 2 * align + 10);
      assert.ok(b.every((x) => x === 0));
      assert.equal(native.isDirectIoAligned([b.subarray(0, align)], align), true);
      assert.equal(native.isDirectIoAligned([b.subarray(1, align + 1)], align), false);
      assert.equal(native.isDirectIoAligned([b.subarray(0, align - 1)], align), false);
    }
    throwsCode(() => native.alignedBuffer(16, 3), 'EINVAL');
  });

  it('refuses block-device ioctls on a regular file with ENOTTY', async () => {
    const dir = tmpDir('blk');
    const fd = fs.openSync(path.join(dir, 'f'), 'w+');
    try {
      throwsCode(() => native.blockDeviceSize(fd), 'ENOTTY');
      throwsCode(() => native.logicalBlockSize(fd), 'ENOTTY');
      await rejectsWithCode(native.blockRange(fd, 'discard', 0, 4096), 'ENOTTY');
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('on a loop device @host', () => {
    let dir: string;
    let image: string;
    let dev: string;

    before(() => {
      dir = tmpDir('loop');
      image = path.join(dir, 'loop.img');
      fs.writeFileSync(image, randomBytes(8 << 20));
      dev = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
    });

    after(() => {
      execFileSync('losetup', ['--detach', dev]);
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('reads the size and logical block size, discards and zeroes ranges', async () => {
      const fd = fs.openSync(dev, fs.constants.O_RDWR | fs.constants.O_DIRECT);
      const engine = new UringEngine();
      try {
        assert.equal(native.blockDeviceSize(fd), 8 << 20);
        assert.equal(native.logicalBlockSize(fd), 512);
        await engine.blockRange(fd, 'zeroout', 4096, 8192);
        await engine.blockRange(fd, 'discard', 1 << 20, 1 << 20);
        const buf = native.alignedBuffer(2 << 20, 4096);
        await engine.readv(fd, [buf], 0);
        const orig = fs.readFileSync(image);
        assert.deepEqual(Buffer.from(buf.subarray(0, 4096)), orig.subarray(0, 4096));
        assert.ok(buf.subarray(4096, 12288).every((x) => x === 0));
        assert.deepEqual(Buffer.from(buf.subarray(12288, 1 << 20)), orig.subarray(12288, 1 << 20));
        // A loop device over a file discards by punching holes: the range reads as zeros.
        assert.ok(buf.subarray(1 << 20, 2 << 20).every((x) => x === 0));
        await rejectsWithCode(engine.blockRange(fd, 'discard', 1, 512), 'EINVAL');
      } finally {
        engine.close();
        fs.closeSync(fd);
      }
    });
  });
});
