/**
 * The I/O engine of the benchmark runner: drives a Workload against one or more vhost-user-blk
 * devices through our front end (VhostUserFrontend / DriverRing fast path), without allocating per
 * request beyond the workload's own request object.
 *
 * Structure:
 *   Device  one front end connection (one socket), `queues` rings, each ring a Lane of `depth`
 *           carriers; a carrier owns a data buffer of maxLen bytes in guest RAM and is the
 *           Completion of the one request it carries at a time.
 *   Route   where requests of ASU n go: a device and a byte offset (ASUs may share a device).
 *   Engine  pulls requests from the workload and places each on a free carrier of its device
 *           (lanes round robin); a request finding no free carrier waits in its device's FIFO and
 *           takes the next carrier freed on that device.
 *
 * Issue policy: an unpaced workload is pulled whenever a request can be placed (every carrier busy,
 * closed loop). A paced workload is pulled when its `at` time has come (open loop); the latency of
 * a paced request counts from its scheduled time (or from its submission when the timer slack
 * sent it out early), so waiting for a carrier is included, as an
 * application would see it; unpaced latency counts from submission.
 * The run ends at `runtime` seconds (or after `count` requests): no request is issued afterwards
 * and the engine resolves once the requests in flight are back.
 */
import { VhostError } from '../native/errors';
import { SECTOR_SIZE, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../virtio-blk/spec';
import type { GuestBuffer } from '../frontend/guest-memory';
import type { Completion, DriverRing } from '../frontend/ring-driver';
import { VhostUserFrontend } from '../frontend/vhost-user-frontend';
import { LatencyHistogram } from '../metrics/latency-histogram';
import { PeriodMeter, type PeriodSample } from './stats';
import type { BenchRequest, Workload } from './workload';

/** setTimeout's resolution: paced requests due this close are issued at once. */
const TIMER_SLACK_MS = 1;
export interface DeviceOptions {
  socketPath: string;
  queues: number;
  /** Requests in flight per queue. */
  depth: number;
  /** Largest transfer in bytes. */
  maxLen: number;
}

class Carrier implements Completion {
  read = false;
  len = 0;
  /** performance.now() of the request's start (submission or scheduled time). */
  start = 0;

  constructor(
    readonly lane: Lane,
    readonly buf: GuestBuffer,
  ) {}

  complete(status: number): void {
    this.lane.device.engine?.completed(this, status);
  }

  fail(err: Error): void {
    this.lane.device.engine?.failed(this, err);
  }
}

class Lane {
  readonly free: Carrier[] = [];
  dirty = false;

  constructor(
    readonly device: Device,
    readonly ring: DriverRing,
  ) {}
}

/** One connected front end with its lanes. */
export class Device {
  readonly lanes: Lane[] = [];
  /** Requests waiting for a free carrier. */
  readonly pending: BenchRequest[] = [];
  /** Capacity in bytes (virtio-blk config). */
  readonly capacity: number;
  /** Latencies (ns) of this device's reads and of its other requests over the whole run. */
  readonly readLatency = new LatencyHistogram();
  readonly writeLatency = new LatencyHistogram();
  engine: Engine | null = null;
  private next = 0;

  private constructor(
    readonly socketPath: string,
    readonly fe: VhostUserFrontend,
    depth: number,
    maxLen: number,
  ) {
    this.capacity = Number(fe.config?.capacity ?? 0n) * SECTOR_SIZE;
    for (let q = 0; q < fe.queueCount; q++) {
      const lane = new Lane(this, fe.ring(q));
      for (let s = 0; s < depth; s++) lane.free.push(new Carrier(lane, fe.memory.alloc(maxLen, 4096)));
      this.lanes.push(lane);
    }
  }

  static async open(o: DeviceOptions): Promise<Device> {
    if (!(o.depth >= 1) || !(o.queues >= 1)) throw new VhostError('depth and queues must be >= 1', 'EINVAL');
    let queueSize = 128;
    while (queueSize < o.depth) queueSize *= 2;
    const ringBytes = queueSize * (16 * 64 + 64) + 4 * 4096;
    const memorySize = Math.ceil((o.queues * (o.depth * Math.ceil(o.maxLen / 4096) * 4096 + ringBytes) + (1 << 20)) / 4096) * 4096;
    const fe = await VhostUserFrontend.open(o.socketPath, { queues: o.queues, queueSize, memorySize, populate: true });
    return new Device(o.socketPath, fe, o.depth, o.maxLen);
  }

  /** A lane with a free carrier, round robin; null when every carrier is busy. */
  freeLane(): Lane | null {
    const n = this.lanes.length;
    for (let i = 0; i < n; i++) {
      const lane = this.lanes[(this.next + i) % n];
      if (lane.free.length > 0) {
        this.next = (this.next + i + 1) % n;
        return lane;
      }
    }
    return null;
  }

  async close(): Promise<void> {
    if (this.fe.connected) await this.fe.stop();
    this.fe.close();
  }
}

export interface Route {
  device: Device;
  /** Byte offset of the ASU on the device. */
  offset: number;
}

export interface EngineOptions {
  workload: Workload;
  /** routes[asu - 1]. */
  routes: readonly Route[];
  /** Seconds to run (issue stops then). */
  runtime: number;
  /** Stop after this many requests (default: unlimited). */
  count?: number;
  /** Data period in seconds for onPeriod (default: no periods). */
  period?: number;
  /** Called at the end of each data period; may be async (e.g. to read the daemon's stats). */
  onPeriod?: (sample: PeriodSample) => void;
  /** Called about every 500 ms with the totals so far. */
  onTick?: (elapsed: number, ops: number) => void;
  /** Fill write buffers with this byte pattern once (default: non-zero pattern). */
  writePattern?: number;
}

export interface EngineResult {
  ops: number;
  reads: number;
  writes: number;
  errors: number;
  bytes: number;
  seconds: number;
  meter: PeriodMeter;
  periods: PeriodSample[];
  /** Requests that were scheduled (paced) but never issued because the run ended. */
  unissued: number;
}

export class Engine {
  private readonly o: EngineOptions;
  private readonly devices: Device[];
  private readonly meter: PeriodMeter;
  private readonly periods: PeriodSample[] = [];
  private t0 = 0;
  private end = 0;
  private stopped = false;
  private issued = 0;
  private inflight = 0;
  private ops = 0;
  private reads = 0;
  private writes = 0;
  private errors = 0;
  private bytes = 0;
  private failure: Error | null = null;
  private nextReq: BenchRequest | null = null;
  private kickScheduled = false;
  private readonly dirtyLanes: Lane[] = [];
  private timer: NodeJS.Timeout | null = null;
  private endTimer: NodeJS.Timeout | null = null;
  private periodTimer: NodeJS.Timeout | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private finish: (() => void) | null = null;
  private unissued = 0;
  private readonly limit: number;

  constructor(o: EngineOptions) {
    this.o = o;
    this.devices = [...new Set(o.routes.map((r) => r.device))];
    this.meter = new PeriodMeter(0);
    this.limit = o.count ?? Number.POSITIVE_INFINITY;
    for (const d of this.devices) {
      if (d.engine !== null) throw new VhostError(`device ${d.socketPath} is already in use by an engine`, 'EBUSY');
    }
  }

  run(): Promise<EngineResult> {
    for (const d of this.devices) {
      d.engine = this;
      for (const l of d.lanes) for (const s of l.free) s.buf.bytes.fill(this.o.writePattern ?? 0xa5);
    }
    return new Promise<EngineResult>((resolve, reject) => {
      this.finish = () => {
        for (const d of this.devices) d.engine = null;
        if (this.failure !== null) {
          reject(this.failure);
          return;
        }
        const seconds = (performance.now() - this.t0) / 1000;
        this.periods.push(this.meter.sample(Math.min(seconds, this.o.runtime)));
        resolve({
          ops: this.ops,
          reads: this.reads,
          writes: this.writes,
          errors: this.errors,
          bytes: this.bytes,
          seconds: Math.min(seconds, this.o.runtime),
          meter: this.meter,
          periods: this.periods,
          unissued: this.unissued + this.devices.reduce((s, d) => s + d.pending.length, 0),
        });
      };
      this.t0 = performance.now();
      this.end = this.t0 + this.o.runtime * 1000;
      this.nextReq = this.o.workload.next();
      if (this.o.period !== undefined && this.o.period > 0) {
        const p = this.o.period;
        let k = 1;
        const schedule = (): void => {
          this.periodTimer = setTimeout(() => {
            const s = this.meter.sample(k * p);
            this.periods.push(s);
            this.o.onPeriod?.(s);
            k++;
            if (!this.stopped && k * p < this.o.runtime) schedule();
          }, this.t0 + k * p * 1000 - performance.now());
        };
        if (p < this.o.runtime) schedule();
      }
      if (this.o.onTick !== undefined) {
        const tick = this.o.onTick;
        this.tickTimer = setInterval(() => tick((performance.now() - this.t0) / 1000, this.ops), 500);
      }
      this.endTimer = setTimeout(() => this.stop(), this.o.runtime * 1000);
      this.pump();
      this.flushKicks();
      if (this.issued >= this.limit && this.inflight === 0) this.stop();
    });
  }

  /** Issues what the workload allows now; for a paced workload, arms the timer for the next one. */
  private pump(): void {
    const w = this.o.workload;
    const paced = w.paced;
    const now = performance.now();
    while (!this.stopped && this.issued < this.limit) {
      const req = this.nextReq as BenchRequest;
      if (paced) {
        const at = this.t0 + (req.at ?? 0) * 1000;
        // Timers resolve to 1 ms: requests due within TIMER_SLACK_MS go out now (their latency
        // then counts from the real submission), later ones arm the timer that early.
        if (at > now + TIMER_SLACK_MS) {
          if (this.timer !== null) clearTimeout(this.timer);
          this.timer = setTimeout(() => {
            this.timer = null;
            if (performance.now() >= this.end) this.stop();
            else {
              this.pump();
              this.flushKicks();
            }
          }, at - now - TIMER_SLACK_MS);
          return;
        }
        this.issued++;
        this.nextReq = w.next();
        this.place(req, Math.min(at, now));
      } else {
        const dev = this.o.routes[req.asu - 1].device;
        const lane = dev.pending.length === 0 ? dev.freeLane() : null;
        if (lane === null) return;
        this.issued++;
        this.nextReq = w.next();
        this.submit(lane, req, now);
      }
    }
  }

  /** Puts a paced request on a free carrier of its device or in the device's FIFO. */
  private place(req: BenchRequest, at: number): void {
    const dev = this.o.routes[req.asu - 1].device;
    const lane = dev.pending.length === 0 ? dev.freeLane() : null;
    if (lane === null) {
      req.at = at;
      dev.pending.push(req);
      return;
    }
    this.submit(lane, req, at);
  }

  private submit(lane: Lane, req: BenchRequest, start: number): void {
    const route = this.o.routes[req.asu - 1];
    const bs = this.o.workload.blockSize;
    const carrier = lane.free.pop() as Carrier;
    const len = req.blocks * bs;
    if (len > carrier.buf.len) {
      lane.free.push(carrier);
      this.fail(new VhostError(`request of ${len} bytes exceeds the carrier buffer (${carrier.buf.len})`, 'EINVAL'));
      return;
    }
    carrier.read = req.read;
    carrier.len = len;
    carrier.start = start;
    const sector = (route.offset + req.block * bs) / SECTOR_SIZE;
    if (!lane.ring.submit(req.read ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT, sector, carrier.buf.addr, len, carrier)) {
      lane.free.push(carrier);
      this.fail(new VhostError('ring full', 'EAGAIN'));
      return;
    }
    this.inflight++;
    if (!lane.dirty) {
      lane.dirty = true;
      this.dirtyLanes.push(lane);
      if (!this.kickScheduled) {
        this.kickScheduled = true;
        queueMicrotask(() => this.flushKicks());
      }
    }
  }

  private flushKicks(): void {
    this.kickScheduled = false;
    for (const l of this.dirtyLanes) {
      l.dirty = false;
      l.ring.kick();
    }
    this.dirtyLanes.length = 0;
  }

  /** Carrier completion (called from the ring's poll). */
  completed(carrier: Carrier, status: number): void {
    this.inflight--;
    const now = performance.now();
    const latencyNs = (now - carrier.start) * 1e6;
    this.meter.record(latencyNs, carrier.read);
    (carrier.read ? carrier.lane.device.readLatency : carrier.lane.device.writeLatency).record(latencyNs);
    this.ops++;
    if (carrier.read) this.reads++;
    else this.writes++;
    if (status === 0) this.bytes += carrier.len;
    else this.errors++;
    const lane = carrier.lane;
    lane.free.push(carrier);
    if (!this.stopped) {
      const dev = lane.device;
      if (now >= this.end) this.stop();
      else if (dev.pending.length > 0) {
        const req = dev.pending.shift() as BenchRequest;
        this.submit(lane, req, this.o.workload.paced ? (req.at ?? now) : now);
      } else if (!this.o.workload.paced) this.pump();
      if (this.issued >= this.limit && this.inflight === 0) this.stop();
    }
    if (this.stopped) this.maybeFinish();
  }

  failed(_carrier: Carrier, err: Error): void {
    this.inflight--;
    this.fail(err);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.stop();
  }

  private stop(): void {
    if (!this.stopped) {
      this.stopped = true;
      for (const t of [this.timer, this.endTimer, this.periodTimer]) if (t !== null) clearTimeout(t);
      if (this.tickTimer !== null) clearInterval(this.tickTimer);
      if (this.o.workload.paced && this.nextReq?.at !== undefined) {
        // Requests already due but not issued count as unissued.
        const due = (performance.now() - this.t0) / 1000;
        if (this.nextReq.at <= due) this.unissued++;
      }
    }
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.inflight > 0 || this.finish === null) return;
    const f = this.finish;
    this.finish = null;
    f();
  }
}
