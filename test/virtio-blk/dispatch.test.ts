import { strict as assert } from 'node:assert';
import pino from 'pino';
import { VhostError } from '../../src/native/errors';
import { silentLogger } from '../../src/util/logger';
import { BlkDispatcher, parseRanges, type DispatchTarget } from '../../src/virtio-blk/dispatch';
import { encodeBlkConfig, blkFeatures } from '../../src/virtio-blk/config';
import { REQ_STRIDE } from '../../src/native/types';
import { MAX_DISCARD_SECTORS, MAX_DISCARD_SEG } from '../../src/virtio-blk/config';
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

  it('starts reads of a store with readThen through it when they fit (answered once, synchronously or later, errors IOERR), through read() when they wait', async () => {
    /** A MemStore with readThen: block 0 settles at once, block 1 fails, others after a macrotask. */
    class CallbackStore extends MemStore {
      readonly via: string[] = [];
      readThen(offset: number, bufs: readonly Uint8Array[], done: (err: Error | null) => void): void {
        this.via.push(`then ${offset / 4096}`);
        if (offset === 0) return done(null);
        if (offset === 4096) return done(new VhostError('device gone', 'EIO'));
        this.read(offset, bufs).then(() => setImmediate(() => done(null)), done);
      }
      override read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
        if (this.via.at(-1) !== `then ${offset / 4096}`) this.via.push(`read ${offset / 4096}`);
        return super.read(offset, bufs);
      }
    }
    const store = new CallbackStore(1 << 20);
    store.data.fill(7, 2 * 4096, 3 * 4096);
    const answers = new Map<number, number[]>();
    const cap = 3 * 4096;
    const d = new BlkDispatcher(target(store), (_q, tag, status) => answers.set(tag, [...(answers.get(tag) ?? []), status]), silentLogger, cap);
    const read = (block: number, n = 1): Req => ({ type: VIRTIO_BLK_T_IN, sector: block * 8, segs: [Buffer.alloc(4096 * n)] });
    const reqs = [read(0), read(1), read(2), read(3, 2), read(4)];
    submit(d, reqs);
    // Blocks 0 and 1 settled inside handleBatch (their bytes left the cap); block 2 holds 4 KiB,
    // so the 8 KiB read of blocks 3..4 fits, and block 4 waits behind the cap.
    assert.deepEqual(answers.get(100), [VIRTIO_BLK_S_OK], 'answered from within readThen');
    assert.deepEqual(answers.get(101), [VIRTIO_BLK_S_IOERR]);
    assert.equal(d.inflightCount, 3);
    await d.drain();
    assert.deepEqual([...answers.entries()].sort((a, b) => a[0] - b[0]), [100, 101, 102, 103, 104].map((t, i) => [t, [i === 1 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK]]));
    assert.deepEqual(store.via, ['then 0', 'then 1', 'then 2', 'then 3', 'read 4'], 'the waiting read went through read()');
    assert.deepEqual(reqs[2]?.segs[0], Buffer.alloc(4096, 7));
    assert.deepEqual([d.stats.reads, d.stats.ioErrors, d.inflightByteCount], [5, 1, 0]);
    assert.equal(d.latency.byType().find((l) => l.type === 'read')?.count, 5, 'each read timed once');
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

describe('virtio-blk dispatch: counters, store calls, latency and log lines', () => {
  /** A dispatcher over `store` whose answers land in `done` by tag (100 + i). */
  function dispatcher(store: MemStore, log = silentLogger, over: Partial<DispatchTarget> = {}): { d: BlkDispatcher; done: Map<number, number>; submit: (reqs: Req[]) => void } {
    const done = new Map<number, number>();
    const d = new BlkDispatcher(target(store, over), (_q, tag, status) => done.set(tag, status), log);
    let next = 100;
    const submit = (reqs: Req[]): void => {
      const table = new Float64Array(reqs.length * REQ_STRIDE);
      const segs: Uint8Array[] = [];
      reqs.forEach((r, i) => {
        const len = r.segs.reduce((n, x) => n + x.byteLength, 0);
        table.set([next++, r.type, r.sector, len, segs.length, r.segs.length], i * REQ_STRIDE);
        segs.push(...r.segs);
      });
      d.handleBatch(0, reqs.length, segs, table);
    };
    return { d, done, submit };
  }

  it('counts every request by type, with the bytes moved, rejections and I/O errors', async () => {
    const store = new MemStore(1 << 16);
    let failNext = false;
    store.readHook = async () => {
      if (failNext) {
        failNext = false;
        throw new Error('injected');
      }
    };
    const { d, done, submit } = dispatcher(store);
    submit([
      { type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(1024)] },
      { type: VIRTIO_BLK_T_OUT, sector: 8, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(2048)] },
      { type: VIRTIO_BLK_T_FLUSH, sector: 0, segs: [] },
      { type: VIRTIO_BLK_T_GET_ID, sector: 0, segs: [Buffer.alloc(20)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(4, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(6, 1)] },
      { type: 99, sector: 0, segs: [] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 1, 2)] },
      { type: VIRTIO_BLK_T_IN, sector: 1 << 20, segs: [Buffer.alloc(512)] },
    ]);
    await d.drain();
    failNext = true;
    submit([{ type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] }]);
    await d.drain();
    assert.equal(done.size, 12);
    assert.deepEqual(d.stats, {
      reads: 2,
      writes: 2,
      flushes: 1,
      discards: 1,
      writeZeroes: 2,
      getIds: 1,
      unsupported: 2,
      rejected: 1,
      ioErrors: 1,
      bytesRead: 2560,
      bytesWritten: 1536,
    });
  });

  it('hands each range to the store once, in bytes, with the unmap flag; skips empty ranges', async () => {
    const store = new MemStore(1 << 20);
    const calls: string[] = [];
    store.discard = async (offset, length) => void calls.push(`discard ${offset} ${length}`);
    Object.assign(store, { writeZeroes: async (offset: number, length: number, unmap: boolean) => void calls.push(`zeroes ${offset} ${length} ${unmap}`) });
    const { d, done, submit } = dispatcher(store);
    submit([
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [Buffer.concat([range(8, 2), range(100, 0), range(16, 1)])] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [Buffer.concat([range(32, 1, 1), range(40, 3)])] },
    ]);
    await d.drain();
    assert.deepEqual([...done.values()], [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    // The two requests run concurrently; each one's ranges in order.
    assert.deepEqual(calls.filter((c) => c.startsWith('discard')), ['discard 4096 1024', 'discard 8192 512']);
    assert.deepEqual(calls.filter((c) => c.startsWith('zeroes')), ['zeroes 16384 512 true', 'zeroes 20480 1536 false']);
  });

  it('answers UNSUPP for DISCARD / WRITE_ZEROES the store does not support, without calling it', async () => {
    const store = new MemStore(1 << 16);
    store.features.discard = false;
    store.features.writeZeroes = false;
    store.data.fill(7);
    const { d, done, submit } = dispatcher(store);
    submit([
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(0, 1)] },
    ]);
    await d.drain();
    assert.deepEqual([...done.values()], [VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_UNSUPP]);
    assert.equal(d.stats.unsupported, 2);
    assert.equal(d.stats.discards + d.stats.writeZeroes, 0);
    assert.equal(store.data[0], 7);
  });

  it('takes ranges up to the sector and segment limits, refuses one past them', async () => {
    const max = MAX_DISCARD_SECTORS;
    const store = new MemStore(1 << 16);
    // A volume large enough that only the limit refuses (the store is never reached).
    const calls: number[] = [];
    store.discard = async (_offset, length) => void calls.push(length);
    const big = { sizeBytes: 4 * max * 512 };
    const st = await run(target(store, big), [
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, max)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, max + 1)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [Buffer.concat(Array.from({ length: MAX_DISCARD_SEG }, (_, i) => range(i * 8, 1)))] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [Buffer.concat(Array.from({ length: MAX_DISCARD_SEG + 1 }, (_, i) => range(i * 8, 1)))] },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR]);
    assert.deepEqual(calls, [max * 512, ...Array.from({ length: MAX_DISCARD_SEG }, () => 512)]);
    // Sector numbers: up to 2^53 - 1 are parsed (and then checked against the capacity).
    assert.deepEqual(parseRanges([range(2 ** 53 - 1, 1)], 16, 1), [{ sector: 2 ** 53 - 1, sectors: 1, flags: 0 }]);
    const over = Buffer.alloc(16);
    over.writeBigUInt64LE(2n ** 53n, 0);
    assert.equal(parseRanges([over], 16, 1), null);
  });

  it('keeps FIFO under the byte cap: a request that would fit waits behind one that does not; zero-byte requests never wait', async () => {
    const store = new MemStore(64 << 20);
    const started: string[] = [];
    const release: (() => void)[] = [];
    store.writeHook = (offset, len) => {
      started.push(`${offset / 512}+${len >> 20}M`);
      return new Promise<void>((r) => release.push(r));
    };
    let flushed = 0;
    store.flush = async () => void flushed++;
    const MiB = 1 << 20;
    const done = new Map<number, number>();
    const d = new BlkDispatcher(target(store), (_q, tag, status) => done.set(tag, status), silentLogger, 4 * MiB);
    const buf = Buffer.alloc(MiB);
    const write = (sector: number, mib: number): Req => ({ type: VIRTIO_BLK_T_OUT, sector, segs: Array.from({ length: mib }, () => buf) });
    const table = (reqs: Req[]): [Float64Array, Uint8Array[]] => {
      const t = new Float64Array(reqs.length * REQ_STRIDE);
      const segs: Uint8Array[] = [];
      reqs.forEach((r, i) => {
        t.set([100 + i, r.type, r.sector, r.segs.reduce((n, x) => n + x.byteLength, 0), segs.length, r.segs.length], i * REQ_STRIDE);
        segs.push(...r.segs);
      });
      return [t, segs];
    };
    const [t, segs] = table([write(0, 3), write(8192, 2), write(16384, 1), { type: VIRTIO_BLK_T_FLUSH, sector: 0, segs: [] }]);
    d.handleBatch(0, 4, segs, t);
    await new Promise((r) => setImmediate(r));
    // 3 MiB runs; 2 MiB does not fit and waits; 1 MiB would fit but queues behind it; the flush runs.
    assert.deepEqual(started, ['0+3M']);
    assert.equal(flushed, 1);
    assert.equal(done.get(103), VIRTIO_BLK_S_OK);
    let drained = false;
    const drain = d.drain().then(() => (drained = true));
    (release.shift() as () => void)();
    while (started.length < 3) await new Promise((r) => setImmediate(r));
    assert.deepEqual(started, ['0+3M', '8192+2M', '16384+1M']);
    (release.shift() as () => void)();
    await new Promise((r) => setImmediate(r));
    assert.equal(drained, false, 'drain() waits for the last request');
    (release.shift() as () => void)();
    await drain;
    assert.equal(done.size, 4);
    // Nothing in flight: drain() resolves at once, and a stopped dispatcher answers nothing more.
    await d.drain();
    d.stop();
    d.handleBatch(0, 1, [buf], table([write(0, 1)])[0]);
    await d.drain();
    assert.equal(done.size, 4);
    assert.equal(started.length, 3);
  });

  it('records each request latency from its batch arrival to its completion', async () => {
    const store = new MemStore(1 << 16);
    const { d, submit } = dispatcher(store);
    const t0 = performance.now();
    submit([
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(512)] },
    ]);
    await d.drain();
    store.readHook = async () => {
      throw new Error('injected');
    };
    submit([{ type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] }]);
    await d.drain();
    const elapsed = (performance.now() - t0) / 1000;
    const byType = new Map(d.latency.byType().map((l) => [l.type, l]));
    assert.equal(byType.get('read')?.count, 2, 'failed requests are timed too');
    assert.equal(byType.get('write')?.count, 1);
    for (const l of byType.values()) assert.ok(l.sumSeconds >= 0 && l.sumSeconds <= elapsed, `${l.type}: ${l.sumSeconds} s of ${elapsed} s`);
  });

  it('logs each rejection with its reason and fields, and each I/O error with its operation', async () => {
    const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const store = new MemStore(1 << 16);
    store.readHook = async () => {
      throw Object.assign(new Error('disk on fire'), { code: 'EIO' });
    };
    const { d, submit } = dispatcher(store, log, { readOnly: true });
    submit([
      { type: VIRTIO_BLK_T_OUT, sector: 0, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(0, 1)] },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, segs: [range(0, 1)] },
      { type: VIRTIO_BLK_T_IN, sector: 1000, segs: [Buffer.alloc(512)] },
      { type: VIRTIO_BLK_T_IN, sector: 0, segs: [Buffer.alloc(512)] },
      { type: 77, sector: 0, segs: [] },
    ]);
    await d.drain();
    const { d: rw, submit: submitRw } = dispatcher(new MemStore(1 << 16), log);
    submitRw([
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [Buffer.alloc(15)] },
      { type: VIRTIO_BLK_T_DISCARD, sector: 0, segs: [range(1000, 1)] },
    ]);
    await rw.drain();
    const pick = (l: (typeof lines)[number]): Record<string, unknown> => {
      const { level, msg, queue, sector, dataLen, sectors, op, code, err, type } = l;
      return Object.fromEntries(Object.entries({ level, msg, queue, sector, dataLen, sectors, op, code, err, type }).filter(([, v]) => v !== undefined));
    };
    assert.deepEqual(lines.map(pick), [
      { level: 40, msg: 'request rejected: write to a read-only volume', queue: 0 },
      { level: 40, msg: 'request rejected: discard on a read-only volume', queue: 0 },
      { level: 40, msg: 'request rejected: write-zeroes on a read-only volume', queue: 0 },
      { level: 40, msg: 'request rejected: request outside capacity or misaligned', queue: 0, sector: 1000, dataLen: 512 },
      { level: 20, msg: 'unsupported request type', type: 77 },
      { level: 50, msg: 'I/O failed: answered VIRTIO_BLK_S_IOERR', queue: 0, op: 'read', code: 'EIO', err: 'disk on fire' },
      { level: 40, msg: 'request rejected: malformed range table', queue: 0, dataLen: 15 },
      { level: 40, msg: 'request rejected: range outside capacity or misaligned', queue: 0, sector: 1000, sectors: 1 },
    ]);
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
