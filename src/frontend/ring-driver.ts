/**
 * Split-virtqueue driver (virtio 1.2, 2.7) for one virtio-blk queue, living in the front end's
 * guest RAM. The back end sees only guest memory, the kick eventfd and the call eventfd.
 *
 * Guest memory of one ring (all guest physical addresses; allocated by the front end):
 *   desc   N x 16 bytes {addr u64, len u32, flags u16, next u16}             (4 KiB aligned)
 *   avail  flags u16, idx u16, ring[N] u16, used_event u16                   (4 KiB aligned)
 *   used   flags u16, idx u16, ring[N] {id u32, len u32}, avail_event u16    (4 KiB aligned)
 *   headers N x 32 bytes: request header (16) + status byte (at +16) of the chain whose head
 *          descriptor is the index
 *   tables N x maxIndirect x 16 bytes: the indirect table of the chain with that head
 * N = queue size (power of two). A head index is in flight at most once, so its header and its
 * indirect table are reused without further allocation.
 *
 * Notifications: avail->idx is published (Atomics.store, a full fence) by kick(), which then
 * signals the kick eventfd unless the device suppresses it: with EVENT_IDX when the new
 * entries do not cross used->avail_event (vring_need_event), otherwise when used->flags has
 * NO_NOTIFY. Interrupts are always wanted: avail->flags = 0, and with EVENT_IDX used_event is
 * set to the last used index seen after every reap.
 *
 * Reaping: poll() reads used->idx (Atomics.load) and completes every new used entry; it runs
 * when the call eventfd fires (the front end watches it) and may be called by anyone. Completion
 * callbacks may submit more requests; poll() kicks once at its end if they did (one kick per
 * batch). Submissions made by the promise API are kicked once per microtask turn.
 *
 * APIs (all requests are virtio-blk requests unless raw):
 *   - promise API: read / write / flush / getId / discard / writeZeroes / request -> BlkResult
 *     ({status, len, data?}); status is the device's status byte (VIRTIO_BLK_S_*). Requests wait
 *     in a queue when descriptors run out. Rejected only if the connection ends (ECONNRESET) or
 *     guest RAM is exhausted (ENOMEM).
 *   - raw: submitRaw(chain) writes an explicit descriptor list (any flags, next values,
 *     addresses, nested indirect tables) and resolves with the used entry {id, len}.
 *   - fast path: submit(type, sector, addr, len, completion) + kick(), allocation-free; and
 *     runQueueDepth(...) which keeps `depth` requests in flight and records latencies.
 */
import { VhostError } from '../native/errors';
import type { NativeEventFd } from '../native/types';
import { IdleWaiters } from '../util/idle-waiters';
import type { GuestBuffer, GuestMemory } from './guest-memory';
import { type BlkRange, writeBlkHeader, writeBlkRanges } from './virtio-blk';
import {
  BLK_HEADER_SIZE,
  BLK_ID_BYTES,
  BLK_RANGE_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../virtio-blk/spec';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

const HEADER_AREA_SIZE = 32;
const STATUS_OFFSET = 16;
/** Status byte value written before submission; a device that never writes it leaves this. */
export const STATUS_UNSET = 0xff;

/** Result of a virtio-blk request. */
export interface BlkResult {
  /** The status byte the device wrote (VIRTIO_BLK_S_*; STATUS_UNSET if it wrote none). */
  status: number;
  /** used->ring[].len: bytes the device says it wrote. */
  len: number;
  /** For IN / GET_ID: a copy of the device-writable data. */
  data?: Buffer;
}

/** Receives the completion of a fast-path request (see submit()). */
export interface Completion {
  complete(status: number, usedLen: number): void;
  fail(err: Error): void;
}

/** One descriptor of a raw chain (see submitRaw). */
export interface RawDesc {
  addr?: number;
  len?: number;
  /**
   * Written verbatim when given. Otherwise: WRITE if `write`, NEXT unless last in its list,
   * INDIRECT if `indirect` is given.
   */
  flags?: number;
  write?: boolean;
  /** Position (in the same list) of the next descriptor; default: the following one. */
  next?: number;
  /** Written verbatim into desc.next (overrides `next`; e.g. out of range values). */
  nextRaw?: number;
  /**
   * Makes this descriptor point at a table holding these descriptors (addr/len default to the
   * table written in guest RAM; `next` positions are table indices). May nest.
   */
  indirect?: RawDesc[];
}

export interface RawChain {
  /** Written into free descriptors of the ring, the first one is the head. */
  descs: RawDesc[];
  /** Put this value into the avail ring instead of the head index (e.g. >= queue size). */
  availEntry?: number;
}

export interface UsedEntry {
  id: number;
  len: number;
}

export interface RingOptions {
  index: number;
  size: number;
  eventIdx: boolean;
  /** INDIRECT_DESC negotiated: multi-descriptor requests use an indirect table. */
  indirect: boolean;
  /** Entries per indirect table (>= 3). */
  maxIndirect: number;
  kick: NativeEventFd;
  /**
   * Ring index to start at (0..65535, default 0): the avail and used indexes in guest memory and
   * the driver's counters start there, as after a resume (SET_VRING_BASE with the same number).
   */
  base?: number;
}

/** A request prepared by makeRequest() in runQueueDepth(): set type, sector and len. */
export interface QdRequest {
  /** VIRTIO_BLK_T_IN / OUT / FLUSH / ... */
  type: number;
  sector: number;
  /** Data bytes (<= buf.len); 0 for FLUSH. */
  len: number;
  /** This lane's data buffer in guest RAM, reused for every request of the lane. */
  readonly buf: GuestBuffer;
  /** Which of the `depth` lanes (0..depth-1). */
  readonly lane: number;
  /** Sequence number of the request (0..count-1). */
  seq: number;
}

export interface QdOptions {
  /** Requests kept in flight. */
  depth: number;
  /** Requests to run in total. */
  count: number;
  /** Data buffer size per lane (bytes). */
  maxLen: number;
  /** Fills `req` for request number `seq` (type, sector, len; may write req.buf.bytes). */
  makeRequest: (seq: number, req: QdRequest) => void;
  /** Called on each completion before the lane is reused (e.g. to verify read data). */
  onComplete?: (req: QdRequest, status: number) => void;
  /** Per-request latencies in ns, indexed by seq (allocated if not given; length >= count). */
  latencies?: Float64Array;
}

export interface QdResult {
  completed: number;
  /** Requests whose status was not VIRTIO_BLK_S_OK. */
  errors: number;
  /** Data bytes of completed requests. */
  bytes: number;
  elapsedNs: bigint;
  /** Latency of request `seq` in ns. */
  latencies: Float64Array;
  /** Kicks signalled (after notification suppression). */
  kicks: number;
}

interface InFlight {
  /** 1 = virtio-blk request (header/status area), 2 = raw chain. */
  kind: number;
  completion: Completion;
}

/** Promise-API request waiting for descriptors. */
type Waiter = () => boolean;

export class DriverRing {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly maxIndirect: number;
  /** Guest physical addresses of the ring parts. */
  readonly descAddr: number;
  readonly availAddr: number;
  readonly usedAddr: number;
  /** Notifications signalled so far. */
  kicks = 0;
  /** Used entries completed so far. */
  completed = 0;

  private readonly mem: GuestMemory;
  private readonly kickFd: NativeEventFd;
  private readonly headersAddr: number;
  private readonly tablesAddr: number;
  private readonly owned: GuestBuffer[] = [];
  // Free descriptor list (JS side; the device never writes descriptors).
  private readonly freeNext: Uint16Array;
  private freeHead = 0;
  private numFree: number;
  // Chain bookkeeping by head: descriptors used (for freeing) and what to call.
  private readonly chainNext: Uint16Array;
  private readonly chainLen: Uint16Array;
  private readonly inflight: (InFlight | undefined)[];
  private readonly rawBuffers: (GuestBuffer[] | undefined)[];
  private numInflight = 0;
  private availIdx = 0;
  private publishedIdx = 0;
  private lastKickIdx = 0;
  private lastUsed = 0;
  private readonly waiters: Waiter[] = [];
  private kickScheduled = false;
  private dead: Error | null = null;
  private readonly idleWaiters = new IdleWaiters();
  private deviceErrorHandler: ((err: Error) => void) | null = null;
  // Indices into mem.u16 / mem.u32.
  private readonly availIdxI: number;
  private readonly availRingI: number;
  private readonly usedEventI: number;
  private readonly usedFlagsI: number;
  private readonly usedIdxI: number;
  private readonly usedRingI: number;
  private readonly availEventI: number;

  constructor(mem: GuestMemory, opts: RingOptions) {
    const n = opts.size;
    if (n < 1 || n > 32768 || (n & (n - 1)) !== 0) {
      throw new VhostError(`queue size ${n} is not a power of two in 1..32768`, 'EINVAL');
    }
    if (opts.maxIndirect < 3 || opts.maxIndirect > 65536) {
      throw new VhostError(`maxIndirect ${opts.maxIndirect} out of range 3..65536`, 'EINVAL');
    }
    this.mem = mem;
    this.index = opts.index;
    this.size = n;
    this.eventIdx = opts.eventIdx;
    this.indirect = opts.indirect;
    this.maxIndirect = opts.maxIndirect;
    this.kickFd = opts.kick;
    const page = 4096;
    const desc = this.own(16 * n, page);
    const avail = this.own(6 + 2 * n, page);
    const used = this.own(6 + 8 * n, page);
    const headers = this.own(HEADER_AREA_SIZE * n, page);
    const tables = opts.indirect ? this.own(16 * opts.maxIndirect * n, page) : undefined;
    for (const b of this.owned) b.bytes.fill(0);
    this.descAddr = desc.addr;
    this.availAddr = avail.addr;
    this.usedAddr = used.addr;
    this.headersAddr = headers.addr;
    this.tablesAddr = tables?.addr ?? 0;
    this.availIdxI = (avail.addr + 2) >> 1;
    this.availRingI = (avail.addr + 4) >> 1;
    this.usedEventI = (avail.addr + 4 + 2 * n) >> 1;
    this.usedFlagsI = used.addr >> 1;
    this.usedIdxI = (used.addr + 2) >> 1;
    this.usedRingI = (used.addr + 4) >> 2;
    this.availEventI = (used.addr + 4 + 8 * n) >> 1;
    this.freeNext = new Uint16Array(n);
    for (let i = 0; i < n; i++) this.freeNext[i] = (i + 1) % n;
    this.numFree = n;
    this.chainNext = new Uint16Array(n);
    this.chainLen = new Uint16Array(n);
    this.inflight = new Array<InFlight | undefined>(n).fill(undefined);
    this.rawBuffers = new Array<GuestBuffer[] | undefined>(n).fill(undefined);
    const base = opts.base ?? 0;
    if (!Number.isInteger(base) || base < 0 || base > 0xffff) throw new VhostError(`ring base ${base} out of range 0..65535`, 'EINVAL');
    this.availIdx = this.publishedIdx = this.lastKickIdx = this.lastUsed = base;
    this.mem.u16[this.availIdxI] = base;
    this.mem.u16[this.usedIdxI] = base;
    this.mem.u16[this.usedEventI] = base;
    // As if the device asked to be kicked for the next buffer (EVENT_IDX avail_event).
    this.mem.u16[this.availEventI] = base;
  }

  private own(len: number, align: number): GuestBuffer {
    const b = this.mem.alloc(len, align);
    this.owned.push(b);
    return b;
  }

  /** Requests (chains) submitted and not yet used by the device. */
  get pending(): number {
    return this.numInflight;
  }

  /** Free descriptors in the ring's table. */
  get freeDescriptors(): number {
    return this.numFree;
  }

  /** Called when the device puts a bad entry in the used ring (id out of range / not in flight). */
  onDeviceError(handler: (err: Error) => void): void {
    this.deviceErrorHandler = handler;
  }

  /** Descriptors one virtio-blk request with `segs` data segments takes in the ring's table. */
  descriptorsFor(segs: number): number {
    return this.indirect ? 1 : 2 + segs;
  }

  // ---------------------------------------------------------------- descriptor table access

  private writeDesc(tableAddr: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const o32 = (tableAddr >> 2) + i * 4;
    const u32 = this.mem.u32;
    u32[o32] = addr >>> 0;
    u32[o32 + 1] = Math.floor(addr / 0x1_0000_0000) >>> 0;
    u32[o32 + 2] = len >>> 0;
    const o16 = (tableAddr >> 1) + i * 8;
    this.mem.u16[o16 + 6] = flags;
    this.mem.u16[o16 + 7] = next;
  }

  private allocDesc(): number {
    const d = this.freeHead;
    this.freeHead = this.freeNext[d];
    this.numFree--;
    return d;
  }

  private freeChain(head: number): void {
    let d = head;
    const len = this.chainLen[head];
    for (let i = 0; i < len; i++) {
      const next = this.chainNext[d];
      this.freeNext[d] = this.freeHead;
      this.freeHead = d;
      this.numFree++;
      d = next;
    }
    this.chainLen[head] = 0;
  }

  private pushAvail(entry: number): void {
    this.mem.u16[this.availRingI + (this.availIdx & (this.size - 1))] = entry;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  private checkAlive(): void {
    if (this.dead !== null) throw this.dead;
  }

  // ---------------------------------------------------------------- fast path

  /**
   * Queues one virtio-blk request with 0 or 1 data segment [addr, addr + len) (device-writable
   * for IN and GET_ID, device-readable otherwise), without allocating. Returns false (and queues
   * nothing) when the ring lacks descriptors. Call kick() after a batch.
   */
  submit(type: number, sector: number, addr: number, len: number, completion: Completion): boolean {
    this.checkAlive();
    const segs = len > 0 ? 1 : 0;
    if (this.numFree < this.descriptorsFor(segs)) return false;
    const head = this.allocDesc();
    const hdr = this.headersAddr + head * HEADER_AREA_SIZE;
    writeBlkHeader(this.mem.view, hdr, type, sector);
    this.mem.bytes[hdr + STATUS_OFFSET] = STATUS_UNSET;
    const dataFlags = type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_GET_ID ? VIRTQ_DESC_F_WRITE : 0;
    if (this.indirect) {
      const table = this.tablesAddr + head * this.maxIndirect * 16;
      let i = 0;
      this.writeDesc(table, i, hdr, BLK_HEADER_SIZE, VIRTQ_DESC_F_NEXT, i + 1);
      i++;
      if (segs > 0) {
        this.writeDesc(table, i, addr, len, dataFlags | VIRTQ_DESC_F_NEXT, i + 1);
        i++;
      }
      this.writeDesc(table, i, hdr + STATUS_OFFSET, 1, VIRTQ_DESC_F_WRITE, 0);
      this.writeDesc(this.descAddr, head, table, (i + 1) * 16, VIRTQ_DESC_F_INDIRECT, 0);
      this.chainLen[head] = 1;
    } else {
      let prev = head;
      this.chainLen[head] = 2 + segs;
      if (segs > 0) {
        const d = this.allocDesc();
        this.writeDesc(this.descAddr, prev, hdr, BLK_HEADER_SIZE, VIRTQ_DESC_F_NEXT, d);
        this.chainNext[prev] = d;
        this.writeDesc(this.descAddr, d, addr, len, dataFlags | VIRTQ_DESC_F_NEXT, 0);
        prev = d;
      } else {
        this.writeDesc(this.descAddr, prev, hdr, BLK_HEADER_SIZE, VIRTQ_DESC_F_NEXT, 0);
      }
      const s = this.allocDesc();
      this.chainNext[prev] = s;
      this.mem.u16[(this.descAddr >> 1) + prev * 8 + 7] = s;
      this.writeDesc(this.descAddr, s, hdr + STATUS_OFFSET, 1, VIRTQ_DESC_F_WRITE, 0);
    }
    this.track(head, 1, completion);
    this.pushAvail(head);
    return true;
  }

  /**
   * Like submit() with several data segments (all in the same direction). Returns false when
   * the ring lacks descriptors; throws EINVAL when an indirect table cannot hold them.
   */
  submitv(type: number, sector: number, segs: readonly { addr: number; len: number }[], completion: Completion): boolean {
    this.checkAlive();
    if (this.indirect && segs.length + 2 > this.maxIndirect) {
      throw new VhostError(`${segs.length} segments exceed the indirect table (${this.maxIndirect})`, 'EINVAL');
    }
    if (this.numFree < this.descriptorsFor(segs.length)) return false;
    const head = this.allocDesc();
    const hdr = this.headersAddr + head * HEADER_AREA_SIZE;
    writeBlkHeader(this.mem.view, hdr, type, sector);
    this.mem.bytes[hdr + STATUS_OFFSET] = STATUS_UNSET;
    const dataFlags = type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_GET_ID ? VIRTQ_DESC_F_WRITE : 0;
    const parts: [number, number, number][] = [[hdr, BLK_HEADER_SIZE, 0]];
    for (const s of segs) parts.push([s.addr, s.len, dataFlags]);
    parts.push([hdr + STATUS_OFFSET, 1, VIRTQ_DESC_F_WRITE]);
    if (this.indirect) {
      const table = this.tablesAddr + head * this.maxIndirect * 16;
      parts.forEach(([a, l, f], i) => {
        const last = i === parts.length - 1;
        this.writeDesc(table, i, a, l, f | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : i + 1);
      });
      this.writeDesc(this.descAddr, head, table, parts.length * 16, VIRTQ_DESC_F_INDIRECT, 0);
      this.chainLen[head] = 1;
    } else {
      const ids = [head];
      for (let i = 1; i < parts.length; i++) ids.push(this.allocDesc());
      parts.forEach(([a, l, f], i) => {
        const last = i === parts.length - 1;
        this.writeDesc(this.descAddr, ids[i], a, l, f | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : ids[i + 1]);
        if (!last) this.chainNext[ids[i]] = ids[i + 1];
      });
      this.chainLen[head] = parts.length;
    }
    this.track(head, 1, completion);
    this.pushAvail(head);
    return true;
  }

  private track(head: number, kind: number, completion: Completion): void {
    this.inflight[head] = { kind, completion };
    this.numInflight++;
  }

  /**
   * Publishes avail->idx and signals the kick eventfd unless the device suppresses the
   * notification. Returns whether it signalled. Does nothing if nothing was added.
   */
  kick(): boolean {
    if (this.dead !== null || this.availIdx === this.publishedIdx) return false;
    const u16 = this.mem.u16;
    Atomics.store(u16, this.availIdxI, this.availIdx);
    this.publishedIdx = this.availIdx;
    const newIdx = this.availIdx;
    const oldIdx = this.lastKickIdx;
    this.lastKickIdx = newIdx;
    let notify: boolean;
    if (this.eventIdx) {
      const event = Atomics.load(u16, this.availEventI);
      notify = ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    } else {
      notify = (Atomics.load(u16, this.usedFlagsI) & VIRTQ_USED_F_NO_NOTIFY) === 0;
    }
    if (notify) {
      this.kickFd.signal();
      this.kicks++;
    }
    return notify;
  }

  /**
   * Completes every used entry the device published, submits waiting promise-API requests, and
   * kicks once if anything was added. Returns the number of used entries completed.
   */
  poll(): number {
    if (this.dead !== null) return 0;
    const u16 = this.mem.u16;
    const u32 = this.mem.u32;
    const mask = this.size - 1;
    let n = 0;
    for (;;) {
      const usedIdx = Atomics.load(u16, this.usedIdxI);
      if (usedIdx === this.lastUsed) {
        if (!this.eventIdx) break;
        Atomics.store(u16, this.usedEventI, this.lastUsed);
        if (Atomics.load(u16, this.usedIdxI) === this.lastUsed) break;
        continue;
      }
      while (this.lastUsed !== usedIdx) {
        const e = this.usedRingI + (this.lastUsed & mask) * 2;
        const id = u32[e];
        const len = u32[e + 1];
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        n++;
        if (!this.completeUsed(id, len)) return n;
      }
    }
    this.completed += n;
    while (this.waiters.length > 0 && this.waiters[0]()) this.waiters.shift();
    this.kick();
    if (this.numInflight === 0) this.idleWaiters.wake();
    return n;
  }

  private completeUsed(id: number, len: number): boolean {
    const f = id < this.size ? this.inflight[id] : undefined;
    if (f === undefined) {
      const err = new VhostError(`queue ${this.index}: device used id ${id} which is not in flight`, 'EPROTO');
      this.deviceErrorHandler?.(err);
      return this.dead === null;
    }
    this.inflight[id] = undefined;
    this.numInflight--;
    const status = f.kind === 1 ? this.mem.bytes[this.headersAddr + id * HEADER_AREA_SIZE + STATUS_OFFSET] : STATUS_UNSET;
    this.freeChain(id);
    const bufs = this.rawBuffers[id];
    if (bufs !== undefined) {
      this.rawBuffers[id] = undefined;
      for (const b of bufs) this.mem.release(b);
    }
    f.completion.complete(status, len);
    return this.dead === null;
  }

  /** Resolves when no request is in flight (immediately if none is). */
  idle(): Promise<void> {
    if (this.numInflight === 0 || this.dead !== null) return Promise.resolve();
    return this.idleWaiters.wait();
  }

  /**
   * Fails every in-flight and waiting request with `err`; the ring accepts nothing afterwards.
   * Guest buffers of raw chains are returned to the allocator.
   */
  fail(err: Error): void {
    if (this.dead !== null) return;
    this.dead = err;
    for (let id = 0; id < this.size; id++) {
      const f = this.inflight[id];
      if (f === undefined) continue;
      this.inflight[id] = undefined;
      const bufs = this.rawBuffers[id];
      this.rawBuffers[id] = undefined;
      if (bufs !== undefined) for (const b of bufs) this.mem.release(b);
      f.completion.fail(err);
    }
    this.numInflight = 0;
    const waiting = this.waiters.splice(0);
    for (const w of waiting) w();
    this.idleWaiters.wake();
  }

  /**
   * used->idx as the device last wrote it: the base a front end sends after its back end died
   * (QEMU's rule; an INFLIGHT_SHMFD back end adds the requests it recovers).
   */
  get usedIndex(): number {
    return Atomics.load(this.mem.u16, this.usedIdxI);
  }

  /** avail->idx as last published (what GET_VRING_BASE should report once all is consumed). */
  get availIndex(): number {
    return this.publishedIdx;
  }

  // ---------------------------------------------------------------- promise API

  private scheduleKick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    queueMicrotask(() => {
      this.kickScheduled = false;
      this.kick();
    });
  }

  /**
   * Runs `start` now or when descriptors free up (FIFO). `start` returns false if the ring
   * still lacks descriptors; once the ring is dead it must settle its request and return true.
   */
  private enqueue(start: Waiter): void {
    if (this.waiters.length === 0 && start()) {
      this.scheduleKick();
      return;
    }
    this.waiters.push(start);
  }

  /**
   * One virtio-blk request with a data buffer allocated in guest RAM for its lifetime:
   * `data` (device-readable content) or `readLen` (device-writable bytes, copied into
   * result.data). `segments` splits the data into that many descriptors (default 1).
   */
  request(type: number, sector: number, opts: { data?: Uint8Array; readLen?: number; segments?: number } = {}): Promise<BlkResult> {
    return new Promise<BlkResult>((resolve, reject) => {
      try {
        this.checkAlive();
      } catch (err) {
        reject(err as Error);
        return;
      }
      const len = opts.data?.length ?? opts.readLen ?? 0;
      let buf: GuestBuffer | undefined;
      if (len > 0) {
        try {
          buf = this.mem.alloc(len, 512);
        } catch (err) {
          reject(err as Error);
          return;
        }
        if (opts.data !== undefined) buf.bytes.set(opts.data);
        else buf.bytes.fill(0);
      }
      const nseg = len > 0 ? Math.max(1, Math.min(opts.segments ?? 1, len)) : 0;
      if (this.descriptorsFor(nseg) > this.size || (this.indirect && nseg + 2 > this.maxIndirect)) {
        if (buf !== undefined) this.mem.release(buf);
        reject(new VhostError(`${nseg} segments do not fit queue ${this.index}`, 'EINVAL'));
        return;
      }
      const segs: { addr: number; len: number }[] = [];
      if (buf !== undefined) {
        const base = Math.floor(len / nseg);
        let off = 0;
        for (let i = 0; i < nseg; i++) {
          const l = i === nseg - 1 ? len - off : base;
          segs.push({ addr: buf.addr + off, len: l });
          off += l;
        }
      }
      const wantData = opts.readLen !== undefined && opts.data === undefined;
      const mem = this.mem;
      const completion: Completion = {
        complete(status, usedLen) {
          const result: BlkResult = { status, len: usedLen };
          if (buf !== undefined) {
            if (wantData) result.data = Buffer.from(buf.bytes);
            mem.release(buf);
          }
          resolve(result);
        },
        fail(err) {
          if (buf !== undefined) mem.release(buf);
          reject(err);
        },
      };
      this.enqueue(() => {
        if (this.dead !== null) {
          completion.fail(this.dead);
          return true;
        }
        return segs.length <= 1
          ? this.submit(type, sector, segs[0]?.addr ?? 0, segs[0]?.len ?? 0, completion)
          : this.submitv(type, sector, segs, completion);
      });
    });
  }

  /** Reads `len` bytes at 512-byte `sector`; result.data holds them. */
  read(sector: number, len: number, segments = 1): Promise<BlkResult> {
    return this.request(VIRTIO_BLK_T_IN, sector, { readLen: len, segments });
  }

  write(sector: number, data: Uint8Array, segments = 1): Promise<BlkResult> {
    return this.request(VIRTIO_BLK_T_OUT, sector, { data, segments });
  }

  flush(): Promise<BlkResult> {
    return this.request(VIRTIO_BLK_T_FLUSH, 0);
  }

  /** GET_ID: result.id is the device id string (up to 20 bytes, NUL-terminated if shorter). */
  async getId(): Promise<BlkResult & { id: string }> {
    const r = await this.request(VIRTIO_BLK_T_GET_ID, 0, { readLen: BLK_ID_BYTES });
    const raw = r.data ?? Buffer.alloc(0);
    const nul = raw.indexOf(0);
    return { ...r, id: raw.subarray(0, nul < 0 ? raw.length : nul).toString('latin1') };
  }

  discard(ranges: readonly BlkRange[]): Promise<BlkResult> {
    return this.request(VIRTIO_BLK_T_DISCARD, 0, { data: encodeRanges(ranges, false) });
  }

  writeZeroes(ranges: readonly BlkRange[], unmap: boolean): Promise<BlkResult> {
    return this.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, { data: encodeRanges(ranges, unmap) });
  }

  // ---------------------------------------------------------------- raw chains

  /**
   * Writes an explicit descriptor chain (see RawDesc) and makes it available. Resolves with the
   * used entry when the device returns it; rejects with ECONNRESET if the connection ends
   * first. Indirect tables are written into guest buffers freed on completion.
   */
  submitRaw(chain: RawChain): Promise<UsedEntry> {
    return new Promise<UsedEntry>((resolve, reject) => {
      const start = (): boolean => {
        if (this.dead !== null) {
          reject(this.dead);
          return true;
        }
        if (chain.descs.length === 0 || chain.descs.length > this.size) {
          reject(new VhostError(`raw chain needs 1..${this.size} descriptors`, 'EINVAL'));
          return true;
        }
        if (this.numFree < chain.descs.length) return false;
        const ids = chain.descs.map(() => this.allocDesc());
        const bufs: GuestBuffer[] = [];
        try {
          this.writeRawList(this.descAddr, chain.descs, ids, bufs);
        } catch (err) {
          for (const b of bufs) this.mem.release(b);
          for (const d of ids) {
            this.freeNext[d] = this.freeHead;
            this.freeHead = d;
            this.numFree++;
          }
          reject(err as Error);
          return true;
        }
        const head = ids[0];
        for (let i = 0; i + 1 < ids.length; i++) this.chainNext[ids[i]] = ids[i + 1];
        this.chainLen[head] = ids.length;
        this.rawBuffers[head] = bufs;
        this.track(head, 2, {
          complete: (_status, len) => resolve({ id: head, len }),
          fail: reject,
        });
        this.pushAvail(chain.availEntry ?? head);
        return true;
      };
      this.enqueue(start);
    });
  }

  /** Writes `descs` into the table at `table`, descriptor i at index ids[i]. */
  private writeRawList(table: number, descs: readonly RawDesc[], ids: readonly number[], bufs: GuestBuffer[]): void {
    descs.forEach((d, i) => {
      let addr = d.addr ?? 0;
      let len = d.len ?? 0;
      let flags = d.write === true ? VIRTQ_DESC_F_WRITE : 0;
      if (d.indirect !== undefined) {
        const t = this.mem.alloc(Math.max(16, d.indirect.length * 16), 16);
        bufs.push(t);
        this.writeRawList(t.addr, d.indirect, d.indirect.map((_x, j) => j), bufs);
        addr = d.addr ?? t.addr;
        len = d.len ?? d.indirect.length * 16;
        flags |= VIRTQ_DESC_F_INDIRECT;
      }
      const hasNext = d.next !== undefined || i + 1 < descs.length;
      if (hasNext) flags |= VIRTQ_DESC_F_NEXT;
      const nextPos = d.next ?? i + 1;
      const next = d.nextRaw ?? (hasNext ? (ids[nextPos] ?? nextPos) : 0);
      this.writeDesc(table, ids[i], addr, len, d.flags ?? flags, next & 0xffff);
    });
  }

  // ---------------------------------------------------------------- queue-depth runner

  /**
   * Keeps `depth` requests in flight on this ring until `count` have completed; each lane has
   * its own data buffer of `maxLen` bytes, reused. makeRequest fills the lane's request;
   * completions resubmit at once and the ring is kicked once per reap batch. Latency of each
   * request (submit to reap, process.hrtime.bigint) is stored in ns at its seq. If
   * makeRequest / onComplete throws, no new request is issued and the promise rejects with
   * that error once the requests in flight are back.
   */
  runQueueDepth(opts: QdOptions): Promise<QdResult> {
    const { depth, count, maxLen } = opts;
    if (!(depth >= 1) || depth * this.descriptorsFor(1) > this.size) {
      return Promise.reject(new VhostError(`depth ${depth} does not fit queue size ${this.size}`, 'EINVAL'));
    }
    const latencies = opts.latencies ?? new Float64Array(count);
    if (latencies.length < count) {
      return Promise.reject(new VhostError('latencies array shorter than count', 'EINVAL'));
    }
    return new Promise<QdResult>((resolve, reject) => {
      const bufs: GuestBuffer[] = [];
      let issued = 0;
      let completed = 0;
      let inflight = 0;
      let errors = 0;
      let bytes = 0;
      let failure: Error | null = null;
      let settled = false;
      const kicks0 = this.kicks;
      const t0 = process.hrtime.bigint();
      // Settles once every issued request is back (the device may still write into a lane's
      // buffer until then, so buffers are released only at that point; a dead ring fails them
      // all) and either all `count` completed or something failed.
      const settle = (): void => {
        if (settled || inflight > 0) return;
        if (failure === null && completed < count) return;
        settled = true;
        for (const b of bufs) this.mem.release(b);
        if (failure !== null) {
          reject(failure);
          return;
        }
        resolve({ completed, errors, bytes, elapsedNs: process.hrtime.bigint() - t0, latencies, kicks: this.kicks - kicks0 });
      };
      const makeLane = (buf: GuestBuffer, lane: number): Completion & { issue(): void } => {
        const req: QdRequest = { type: VIRTIO_BLK_T_IN, sector: 0, len: 0, buf, lane, seq: 0 };
        let start = 0n;
        const self: Completion & { issue(): void } = {
          issue: () => {
            req.seq = issued++;
            opts.makeRequest(req.seq, req);
            start = process.hrtime.bigint();
            if (!this.submit(req.type, req.sector, req.buf.addr, req.len, self)) {
              throw new VhostError('ring full in runQueueDepth', 'EAGAIN');
            }
            inflight++;
          },
          complete: (status: number) => {
            inflight--;
            latencies[req.seq] = Number(process.hrtime.bigint() - start);
            completed++;
            if (status === 0) bytes += req.len;
            else errors++;
            try {
              opts.onComplete?.(req, status);
              if (failure === null && issued < count) self.issue();
            } catch (err) {
              failure ??= err as Error;
            }
            settle();
          },
          fail: (err: Error) => {
            inflight--;
            failure ??= err;
            settle();
          },
        };
        return self;
      };
      try {
        const lanes: (Completion & { issue(): void })[] = [];
        for (let s = 0; s < Math.min(depth, count); s++) {
          const b = this.mem.alloc(maxLen, 4096);
          bufs.push(b);
          lanes.push(makeLane(b, s));
        }
        for (const s of lanes) s.issue();
        this.kick();
      } catch (err) {
        failure ??= err as Error;
        this.kick();
      }
      settle();
    });
  }
}

function encodeRanges(ranges: readonly BlkRange[], unmap: boolean): Buffer {
  const b = Buffer.alloc(ranges.length * BLK_RANGE_SIZE);
  writeBlkRanges(new DataView(b.buffer, b.byteOffset, b.length), 0, ranges, unmap);
  return b;
}
