import { strict as assert } from 'node:assert';
import pino from 'pino';
import { silentLogger } from '../../src/util/logger';
import { BlkDispatcher, parseRanges, type DispatchTarget } from '../../src/virtio-blk/dispatch';
import { encodeBlkConfig, blkFeatures } from '../../src/virtio-blk/config';
import { REQ_STRIDE } from '../../src/native/types';
import { MemStore } from '../cache/helpers';
import {
  BLK_CONFIG_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/virtio-blk/spec';

interface Req {
  type: number;
  sector: number;
  segs: Uint8Array[];
}

/** Runs one batch through a dispatcher and resolves with the statuses in request order. */
async function run(target: DispatchTarget, reqs: Req[]): Promise<number[]> {
  const done = new Map<number, number>();
  const d = new BlkDispatcher(target, (_q, tag, status) => done.set(tag, status), silentLogger);
  const table = new Float64Array(reqs.length * REQ_STRIDE);
  const segs: Uint8Array[] = [];
  reqs.forEach((r, i) => {
    const len = r.segs.reduce((n, s) => n + s.byteLength, 0);
    table.set([100 + i, r.type, r.sector, len, segs.length, r.segs.length], i * REQ_STRIDE);
    segs.push(...r.segs);
  });
  d.handleBatch(0, reqs.length, segs, table);
  await d.drain();
  assert.equal(done.size, reqs.length, 'every request is answered exactly once');
  return reqs.map((_r, i) => done.get(100 + i) as number);
}

function target(store: MemStore, over: Partial<DispatchTarget> = {}): DispatchTarget {
  return { store, sizeBytes: store.size, logicalBlockSize: 512, readOnly: false, serial: 'disk-serial-1', writeback: true, ...over };
}

function range(sector: number, sectors: number, flags = 0): Uint8Array {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(sector), 0);
  b.writeUInt32LE(sectors, 8);
  b.writeUInt32LE(flags, 12);
  return b;
}

describe('virtio-blk dispatch', () => {
  it('reads and writes scatter lists at the right offsets', async () => {
    const store = new MemStore(1 << 20);
    const a = Buffer.alloc(512, 0xaa);
    const b = Buffer.alloc(1024, 0xbb);
    const st = await run(target(store), [{ type: VIRTIO_BLK_T_OUT, sector: 8, segs: [a, b] }]);
    assert.equal(st[0], VIRTIO_BLK_S_OK);
    assert.equal(store.data[8 * 512], 0xaa);
    assert.equal(store.data[9 * 512], 0xbb);
    assert.equal(store.data[11 * 512 - 1], 0xbb);
    assert.equal(store.data[11 * 512], 0);
    const out = [Buffer.alloc(1000), Buffer.alloc(536)];
    const st2 = await run(target(store), [{ type: VIRTIO_BLK_T_IN, sector: 8, segs: out }]);
    assert.equal(st2[0], VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.concat(out), Buffer.concat([a, b]));
  });

  it('answers IOERR for requests beyond capacity, misaligned ones and writes to read-only volumes', async () => {
    const store = new MemStore(64 * 1024);
    const st = await run(target(store, { logicalBlockSize: 4096 }), [
      { type: VIRTIO_BLK_T_IN, sector: 128, segs: [Buffer.alloc(4096)] },
      { type: VIRTIO_BLK_T_IN, sector: 120, segs: [Buffer.alloc(8192)] },
      { type: VIRTIO_BLK_T_IN, sector: 1, segs: [Buffer.alloc(4096)] },
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_IN, sector: 2 ** 53, segs: [Buffer.alloc(4096)] },
      { type: VIRTIO_BLK_T_IN, sector: 120, segs: [Buffer.alloc(4096)] },
    ]);
    assert.deepEqual(st, [1, 1, 1, 1, 1, 0].map((ok) => (ok ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK)));
    const ro = await run(target(store, { readOnly: true }), [
      { type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 8)] },
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] },
    ]);
    assert.deepEqual(ro, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
  });

  it('answers GET_ID with the serial, FLUSH, and UNSUPP for unknown types', async () => {
    const store = new MemStore(1 << 16);
    const id = Buffer.alloc(20, 0xff);
    const st = await run(target(store), [
      { type: VIRTIO_BLK_T_GET_ID, sector: 0, segs: [id] },
      { type: VIRTIO_BLK_T_FLUSH, sector: 0, segs: [] },
      { type: 99, sector: 0, segs: [] },
      { type: 10, sector: 0, segs: [Buffer.alloc(16)] },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_UNSUPP]);
    assert.equal(id.toString('latin1'), 'disk-serial-1\0\0\0\0\0\0\0');
  });

  it('discards and zeroes ranges, refusing reserved flags and malformed tables', async () => {
    const store = new MemStore(1 << 16);
    store.data.fill(7);
    const st = await run(target(store), [
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 2), range(10, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(20, 1, 1)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(30, 1, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(30, 1, 2)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [Buffer.alloc(15)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(127, 2)] },
    ]);
    assert.deepEqual(st, [0, 0, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR]);
    assert.equal(store.data[0], 0);
    assert.equal(store.data[1023], 0);
    assert.equal(store.data[1024], 7);
    assert.equal(store.data[10 * 512], 0);
    assert.equal(store.data[20 * 512 + 511], 0);
    assert.equal(store.data[30 * 512], 7);
  });

  it('parses a range table split across segments', () => {
    const r = Buffer.concat([range(5, 6, 1), range(2 ** 40, 1)]);
    assert.deepEqual(parseRanges([r.subarray(0, 7), r.subarray(7)], 32, 32), [
      { sector: 5, sectors: 6, flags: 1 },
      { sector: 2 ** 40, sectors: 1, flags: 0 },
    ]);
    assert.equal(parseRanges([r], 31, 32), null);
    assert.equal(parseRanges([], 0, 32), null);
  });

  it('answers IOERR when the store fails and keeps serving', async () => {
    const store = new MemStore(1 << 16);
    let fail = true;
    store.readHook = async () => {
      if (fail) {
        fail = false;
        throw new Error('disk on fire');
      }
    };
    const st = await run(target(store), [
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_IN, sector: 1, segs: [Buffer.alloc(512)] },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
  });

  it('flushes after every write when the guest turned the write cache off', async () => {
    const store = new MemStore(1 << 16);
    let flushes = 0;
    store.flush = async () => {
      flushes++;
    };
    await run(target(store, { writeback: false }), [{ type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(512)] }]);
    assert.equal(flushes, 1);
    await run(target(store), [{ type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(512)] }]);
    assert.equal(flushes, 1);
  });
});

describe('virtio-blk dispatch back-pressure and log limits', () => {
  /** A batch of `reqs` handed to a dispatcher whose answers land in `done` (tag = 100 + i). */
  function submit(d: BlkDispatcher, reqs: Req[]): void {
    const table = new Float64Array(reqs.length * REQ_STRIDE);
    const segs: Uint8Array[] = [];
    reqs.forEach((r, i) => {
      const len = r.segs.reduce((n, x) => n + x.byteLength, 0);
      table.set([100 + i, r.type, r.sector, len, segs.length, r.segs.length], i * REQ_STRIDE);
      segs.push(...r.segs);
    });
    d.handleBatch(0, reqs.length, segs, table);
  }

  it('holds reads and writes over the bytes-in-flight cap until completions make room (FIFO; an oversized one runs alone)', async () => {
    const store = new MemStore(64 << 20);
    const started: number[] = [];
    const release: (() => void)[] = [];
    store.writeHook = (offset) => {
      started.push(offset);
      return new Promise<void>((r) => release.push(r));
    };
    const done = new Map<number, number>();
    const cap = 4 << 20;
    const d = new BlkDispatcher(target(store), (_q, tag, status) => done.set(tag, status), silentLogger, cap);
    const MiB = 1 << 20;
    // Views over one buffer: a guest can name far more bytes than it owns.
    const buf = Buffer.alloc(MiB);
    const write = (sector: number, mib: number): Req => ({ type: VIRTIO_BLK_T_OUT, sector, segs: Array.from({ length: mib }, () => buf) });
    submit(d, [write(0, 2), write(4096, 2), write(8192, 1), write(12288, 6), write(32768, 1)]);
    const settle = async (): Promise<void> => {
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    };
    await settle();
    assert.deepEqual(started, [0, 4096 * 512], 'two 2 MiB writes fill the 4 MiB cap; the rest waits');
    assert.equal(d.inflightByteCount, 4 * MiB);
    assert.equal(d.inflightCount, 5, 'waiting requests count as in flight (answered exactly once)');
    (release.shift() as () => void)();
    await settle();
    assert.deepEqual(started, [0, 4096 * 512, 8192 * 512], 'the next in line starts once it fits');
    (release.shift() as () => void)();
    (release.shift() as () => void)();
    await settle();
    assert.deepEqual(started.slice(3), [12288 * 512], 'the 6 MiB write (over the cap) runs alone, and FIFO holds the 1 MiB one behind it');
    assert.equal(d.inflightByteCount, 6 * MiB);
    (release.shift() as () => void)();
    await settle();
    (release.shift() as () => void)();
    await d.drain();
    assert.deepEqual([...done.values()], [0, 0, 0, 0, 0].map(() => VIRTIO_BLK_S_OK));
    assert.equal(done.size, 5);
    assert.equal(d.inflightByteCount, 0);
  });

  it('refuses a DISCARD table over the segment limit without gathering it', () => {
    // 64 Ki views of one 16 KiB buffer: a 1 GiB table that would take seconds and GiBs to parse.
    const view = Buffer.alloc(16384);
    const segs = Array.from({ length: 65536 }, () => view);
    const before = process.memoryUsage().rss;
    const done = new Map<number, number>();
    const d = new BlkDispatcher(target(new MemStore(1 << 20)), (_q, tag, status) => done.set(tag, status), silentLogger);
    submit(d, [{ type: VIRTIO_BLK_T_DISCARD, sector: 0, segs }]);
    assert.equal(done.get(100), VIRTIO_BLK_S_IOERR, 'answered synchronously, before any I/O');
    assert.ok(process.memoryUsage().rss - before < 64 << 20, 'the table was not gathered');
    assert.equal(parseRanges(segs, 1 << 30, 32), null);
  });

  it('rate-limits the warnings a guest can trigger per request', () => {
    const lines: unknown[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const d = new BlkDispatcher(target(new MemStore(1 << 16)), () => undefined, log);
    const bad = Array.from({ length: 1000 }, () => ({ type: VIRTIO_BLK_T_IN, sector: 2 ** 40, segs: [Buffer.alloc(512)] }));
    submit(d, bad);
    assert.equal(d.stats.rejected, 1000);
    assert.ok(lines.length <= 10, `${lines.length} log lines for 1000 rejected requests`);
  });
});

describe('virtio-blk config space', () => {
  const g = {
    sizeBytes: 10 * 2 ** 30,
    logicalBlockSize: 4096 as const,
    physicalBlockSize: 4096,
    optimalIoSize: 0,
    numQueues: 4,
    readOnly: false,
    discard: true,
    writeZeroes: true,
    writeback: true,
  };

  it('lays out capacity, block size, queues and limits as virtio 1.2 defines', () => {
    const c = encodeBlkConfig(g);
    assert.equal(c.length, BLK_CONFIG_SIZE);
    assert.equal(c.readBigUInt64LE(0), BigInt((10 * 2 ** 30) / 512));
    assert.equal(c.readUInt32LE(20), 4096);
    assert.equal(c[32], 1);
    assert.equal(c.readUInt16LE(34), 4);
    assert.equal(c.readUInt32LE(44), 8, 'discard alignment in sectors');
    assert.equal(c[56], 1, 'write_zeroes_may_unmap');
  });

  it('offers RO and drops discard on read-only volumes', () => {
    const f = blkFeatures({ ...g, readOnly: true });
    assert.equal((f >> BigInt(VIRTIO_BLK_F_RO)) & 1n, 1n);
    assert.equal((f >> BigInt(VIRTIO_BLK_F_DISCARD)) & 1n, 0n);
    assert.equal(encodeBlkConfig({ ...g, readOnly: true }).readUInt32LE(36), 0);
  });
});
