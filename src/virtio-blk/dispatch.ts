/**
 * virtio-blk request dispatch: turns each batch from the native device into calls on the
 * volume's store and answers every request exactly once with a status byte.
 *
 * Checks (all before any I/O): the sector and length must be aligned to the logical block
 * size and lie inside the capacity (else IOERR); writes, discards and write-zeroes on a
 * read-only volume get IOERR; unknown types get UNSUPP; a DISCARD / WRITE_ZEROES table longer
 * than its segment limit is refused from its length, before a byte of it is read. A store
 * failure answers that one request with IOERR; nothing else is affected. (Segment count and
 * size against seg_max / size_max are enforced natively, where chains are carved.) Requests
 * that reach the store are timed from the arrival of their batch to completion (`latency`,
 * per type: src/metrics/request-latency.ts). A read of a store with readThen (a cached volume)
 * that fits under the cap at once is started with a callback, not a promise (readNow): a cache
 * hit then settles from its device read's completion.
 *
 * Back-pressure: reads and writes hold their data length against maxInflightBytes
 * (MAX_INFLIGHT_BYTES); a request that does not fit waits in FIFO order, so a guest can make
 * requests wait but cannot make the volume allocate. Waiting is bounded by the ring sizes.
 *
 * Log lines a guest can trigger per request go through a LogLimiter.
 */
import {
  REQ_DATA_LEN,
  REQ_FIRST_SEG,
  REQ_SECTOR,
  REQ_SEG_COUNT,
  REQ_TAG,
  REQ_STRIDE,
  REQ_TYPE,
} from '../native/types';
import {
  BLK_ID_BYTES,
  BLK_RANGE_F_UNMAP,
  BLK_RANGE_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from './spec';
import type { BackingStore } from '../backing/backing-store';
import { REQUEST_TYPES, RequestLatency } from '../metrics/request-latency';
import { IdleWaiters } from '../util/idle-waiters';
import { flattenIov, scatterIov } from '../util/iov';
import { LogLimiter } from '../util/log-limiter';
import type { Logger } from '../util/logger';
import {
  MAX_DISCARD_SECTORS,
  MAX_INFLIGHT_BYTES,
  MAX_DISCARD_SEG,
  MAX_WRITE_ZEROES_SECTORS,
  MAX_WRITE_ZEROES_SEG,
} from './config';

/** What the dispatcher needs to know about the volume it serves. */
export interface DispatchTarget {
  readonly store: BackingStore;
  readonly sizeBytes: number;
  readonly logicalBlockSize: number;
  readonly readOnly: boolean;
  /** Up to 20 bytes answered to GET_ID. */
  readonly serial: string;
  /** false when the guest chose writethrough (CONFIG_WCE): every write is followed by a flush. */
  writeback: boolean;
}

export type Complete = (queue: number, tag: number, status: number) => void;

export interface DispatchStats {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  getIds: number;
  unsupported: number;
  rejected: number;
  ioErrors: number;
  bytesRead: number;
  bytesWritten: number;
}

function emptyDispatchStats(): DispatchStats {
  return {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    getIds: 0,
    unsupported: 0,
    rejected: 0,
    ioErrors: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };
}

/** One range of a DISCARD or WRITE_ZEROES request (struct virtio_blk_discard_write_zeroes). */
export interface BlkRange {
  sector: number;
  sectors: number;
  flags: number;
}

/** Indices into REQUEST_TYPES (src/metrics/request-latency.ts). */
const READ = REQUEST_TYPES.indexOf('read');
const WRITE = REQUEST_TYPES.indexOf('write');
const FLUSH = REQUEST_TYPES.indexOf('flush');
const DISCARD = REQUEST_TYPES.indexOf('discard');
const WRITE_ZEROES = REQUEST_TYPES.indexOf('write-zeroes');

/**
 * Parses the range table of a DISCARD / WRITE_ZEROES request; null if malformed or longer than
 * maxRanges (decided from dataLen alone: an oversized table is never gathered).
 */
export function parseRanges(segs: readonly Uint8Array[], dataLen: number, maxRanges: number): BlkRange[] | null {
  if (dataLen === 0 || dataLen % BLK_RANGE_SIZE !== 0 || dataLen / BLK_RANGE_SIZE > maxRanges) return null;
  const b = flattenIov(segs);
  const out: BlkRange[] = [];
  for (let off = 0; off < dataLen; off += BLK_RANGE_SIZE) {
    const sector = b.readBigUInt64LE(off);
    if (sector > BigInt(Number.MAX_SAFE_INTEGER)) return null;
    out.push({ sector: Number(sector), sectors: b.readUInt32LE(off + 8), flags: b.readUInt32LE(off + 12) });
  }
  return out;
}

export class BlkDispatcher {
  readonly stats: DispatchStats = emptyDispatchStats();
  readonly latency = new RequestLatency();
  /** Requests accepted and not answered yet (running or waiting for bytes). */
  private inflight = 0;
  private inflightBytes = 0;
  /** Requests waiting for inflightBytes to drop, oldest first. */
  private readonly waiting: { bytes: number; start: () => void }[] = [];
  private waitHead = 0;
  private stopped = false;
  /** performance.now() when the batch being dispatched arrived. */
  private batchStart = 0;
  private readonly drained = new IdleWaiters();
  private readonly limited: LogLimiter;

  constructor(
    private readonly target: DispatchTarget,
    private readonly complete: Complete,
    private readonly log: Logger,
    private readonly maxInflightBytes = MAX_INFLIGHT_BYTES,
  ) {
    this.limited = new LogLimiter(log);
  }

  get inflightCount(): number {
    return this.inflight;
  }

  /** Data bytes of the reads and writes running now (never above the cap but for one request). */
  get inflightByteCount(): number {
    return this.inflightBytes;
  }

  /** Resolves once every request handed to the store has been answered. */
  drain(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return this.drained.wait();
  }

  /** Stops starting requests: later batches stay unanswered (for shutdown; see Volume.close). */
  stop(): void {
    this.stopped = true;
  }

  /** Entry point for one batch (see src/native/types.ts for the table layout). */
  handleBatch(queue: number, count: number, segs: Uint8Array[], table: Float64Array): void {
    if (this.stopped) return;
    // Every request of the batch arrived with the same kick: one clock read for all of them.
    this.batchStart = performance.now();
    for (let i = 0; i < count; i++) {
      const base = i * REQ_STRIDE;
      const tag = table[base + REQ_TAG] as number;
      const type = table[base + REQ_TYPE] as number;
      const sector = table[base + REQ_SECTOR] as number;
      const dataLen = table[base + REQ_DATA_LEN] as number;
      const first = table[base + REQ_FIRST_SEG] as number;
      const nseg = table[base + REQ_SEG_COUNT] as number;
      const data = nseg === 0 ? [] : segs.slice(first, first + nseg);
      this.handle(queue, tag, type, sector, dataLen, data);
    }
  }

  private handle(queue: number, tag: number, type: number, sector: number, dataLen: number, data: Uint8Array[]): void {
    const t = this.target;
    switch (type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT: {
        const write = type === VIRTIO_BLK_T_OUT;
        if (write && t.readOnly) return this.reject(queue, tag, 'write to a read-only volume');
        const offset = sector * SECTOR_SIZE;
        if (!this.rangeOk(offset, dataLen)) {
          return this.reject(queue, tag, 'request outside capacity or misaligned', { sector, dataLen });
        }
        if (write) {
          this.stats.writes++;
          this.stats.bytesWritten += dataLen;
          return this.run(queue, tag, WRITE, dataLen, () =>
            t.writeback ? t.store.write(offset, data) : t.store.write(offset, data).then(() => t.store.flush()),
          );
        }
        this.stats.reads++;
        this.stats.bytesRead += dataLen;
        if (t.store.readThen !== undefined && this.waiting.length === this.waitHead && this.fits(dataLen)) {
          return this.readNow(queue, tag, dataLen, offset, data);
        }
        return this.run(queue, tag, READ, dataLen, () => t.store.read(offset, data));
      }
      case VIRTIO_BLK_T_FLUSH:
        this.stats.flushes++;
        return this.run(queue, tag, FLUSH, 0, () => t.store.flush());
      case VIRTIO_BLK_T_GET_ID: {
        this.stats.getIds++;
        const id = Buffer.alloc(BLK_ID_BYTES);
        id.write(t.serial.slice(0, BLK_ID_BYTES), 'utf8');
        scatterIov(id, 0, data);
        return this.complete(queue, tag, VIRTIO_BLK_S_OK);
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        return this.handleRanges(queue, tag, type, data, dataLen);
      default:
        this.stats.unsupported++;
        this.log.debug({ type }, 'unsupported request type');
        return this.complete(queue, tag, VIRTIO_BLK_S_UNSUPP);
    }
  }

  private handleRanges(queue: number, tag: number, type: number, data: Uint8Array[], dataLen: number): void {
    const t = this.target;
    const discard = type === VIRTIO_BLK_T_DISCARD;
    const supported = discard ? t.store.features.discard : t.store.features.writeZeroes;
    if (!supported) {
      this.stats.unsupported++;
      return this.complete(queue, tag, VIRTIO_BLK_S_UNSUPP);
    }
    if (t.readOnly) return this.reject(queue, tag, `${discard ? 'discard' : 'write-zeroes'} on a read-only volume`);
    const maxSeg = discard ? MAX_DISCARD_SEG : MAX_WRITE_ZEROES_SEG;
    const ranges = parseRanges(data, dataLen, maxSeg);
    const maxSectors = discard ? MAX_DISCARD_SECTORS : MAX_WRITE_ZEROES_SECTORS;
    if (ranges === null) return this.reject(queue, tag, 'malformed range table', { dataLen });
    for (const r of ranges) {
      // virtio 1.2 5.2.6.2: unmap is only defined for write-zeroes; other flag bits are reserved.
      const allowed = discard ? 0 : BLK_RANGE_F_UNMAP;
      if ((r.flags & ~allowed) !== 0) {
        this.stats.unsupported++;
        return this.complete(queue, tag, VIRTIO_BLK_S_UNSUPP);
      }
      if (r.sectors > maxSectors || !this.rangeOk(r.sector * SECTOR_SIZE, r.sectors * SECTOR_SIZE)) {
        return this.reject(queue, tag, 'range outside capacity or misaligned', { sector: r.sector, sectors: r.sectors });
      }
    }
    if (discard) this.stats.discards++;
    else this.stats.writeZeroes++;
    return this.run(queue, tag, discard ? DISCARD : WRITE_ZEROES, 0, async () => {
      for (const r of ranges) {
        const off = r.sector * SECTOR_SIZE;
        const len = r.sectors * SECTOR_SIZE;
        if (len === 0) continue;
        if (discard) await t.store.discard(off, len);
        else await t.store.writeZeroes(off, len, (r.flags & BLK_RANGE_F_UNMAP) !== 0);
      }
    });
  }

  private rangeOk(offset: number, length: number): boolean {
    const lbs = this.target.logicalBlockSize;
    return offset % lbs === 0 && length % lbs === 0 && offset + length <= this.target.sizeBytes;
  }

  private reject(queue: number, tag: number, why: string, fields: Record<string, unknown> = {}): void {
    this.stats.rejected++;
    this.limited.warn({ ...fields, queue }, `request rejected: ${why}`);
    this.complete(queue, tag, VIRTIO_BLK_S_IOERR);
  }

  /** Runs op now, or once `bytes` fit under the cap (FIFO); answers the request exactly once. */
  private run(queue: number, tag: number, type: number, bytes: number, op: () => Promise<void>): void {
    this.inflight++;
    const arrival = this.batchStart;
    const start = (): void => {
      this.inflightBytes += bytes;
      let p: Promise<void>;
      try {
        p = op();
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        () => {
          const end = performance.now();
          this.latency.record(type, end - arrival, end);
          this.finish(queue, tag, bytes, VIRTIO_BLK_S_OK);
        },
        (err: unknown) => {
          const end = performance.now();
          this.latency.record(type, end - arrival, end);
          this.failed(queue, tag, bytes, type, err);
        },
      );
    };
    if (bytes === 0 || (this.waiting.length === this.waitHead && this.fits(bytes))) start();
    else this.waiting.push({ bytes, start });
  }

  /**
   * A read that fits now, of a store with readThen (a cached volume): run() without its
   * closures and promise, so a cache hit settles from its device read's completion.
   */
  private readNow(queue: number, tag: number, bytes: number, offset: number, data: Uint8Array[]): void {
    this.inflight++;
    this.inflightBytes += bytes;
    const arrival = this.batchStart;
    (this.target.store.readThen as NonNullable<BackingStore['readThen']>)(offset, data, (err) => {
      const end = performance.now();
      this.latency.record(READ, end - arrival, end);
      if (err === null) return this.finish(queue, tag, bytes, VIRTIO_BLK_S_OK);
      this.failed(queue, tag, bytes, READ, err);
    });
  }

  /** A request's store operation failed: counted, logged (rate-limited), answered IOERR. */
  private failed(queue: number, tag: number, bytes: number, type: number, err: unknown): void {
    this.stats.ioErrors++;
    const e = err as { message?: string; code?: string };
    this.limited.error({ queue, op: REQUEST_TYPES[type], code: e.code, err: e.message }, 'I/O failed: answered VIRTIO_BLK_S_IOERR');
    this.finish(queue, tag, bytes, VIRTIO_BLK_S_IOERR);
  }

  private fits(bytes: number): boolean {
    return this.inflightBytes === 0 || this.inflightBytes + bytes <= this.maxInflightBytes;
  }

  /** Starts waiting requests, oldest first, while they fit. */
  private pump(): void {
    while (this.waitHead < this.waiting.length) {
      const w = this.waiting[this.waitHead] as { bytes: number; start: () => void };
      if (!this.fits(w.bytes)) return;
      this.waitHead++;
      w.start();
    }
    // Setting an array's length is a runtime call: only when something waited.
    if (this.waitHead === 0) return;
    this.waiting.length = 0;
    this.waitHead = 0;
  }

  private finish(queue: number, tag: number, bytes: number, status: number): void {
    this.complete(queue, tag, status);
    this.inflight--;
    this.inflightBytes -= bytes;
    this.pump();
    if (this.inflight === 0) this.drained.wake();
  }
}
