/**
 * Shared fixtures of the native VhostDevice tests: a device on a temporary socket with an
 * in-memory disk (JS), its event log, and a raw vhost-user client over net.Socket (messages
 * without fds).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../../src/native/binding';
import { gatherIov, scatterIov } from '../../src/util/iov';
import {
  REQ_DATA_LEN,
  REQ_FIRST_SEG,
  REQ_SECTOR,
  REQ_SEG_COUNT,
  REQ_TAG,
  REQ_STRIDE,
  REQ_TYPE,
  type NativeVhostDevice,
  type VhostDeviceEvent,
  type VhostDeviceOptions,
} from '../../src/native/types';
import {
  BLK_CONFIG_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_SEG_MAX,
} from '../../src/virtio-blk/spec';
import { tmpDir } from '../support/tmp';

const DISK_BYTES = 8 << 20;
/** VIRTIO_BLK_F_SEG_MAX | BLK_SIZE | FLUSH. */
export const BLK_FEATURES = (1n << BigInt(VIRTIO_BLK_F_SEG_MAX)) | (1n << BigInt(VIRTIO_BLK_F_BLK_SIZE)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH));

/** Mappings of the file with this inode in this process (a front end's and a device's). */
export function mappingsOf(ino: number): number {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.split(/\s+/)[4] === String(ino)).length;
}

export function tmpSocketPath(tag: string): string {
  const dir = tmpDir('vhost');
  return path.join(dir, `${tag}.sock`);
}

/** virtio_blk_config: capacity, seg_max 126, blk_size 512, num_queues. */
export function blkConfig(queues: number): Uint8Array {
  const c = new Uint8Array(BLK_CONFIG_SIZE);
  const v = new DataView(c.buffer);
  v.setBigUint64(0, BigInt(DISK_BYTES / SECTOR_SIZE), true);
  v.setUint32(12, 126, true);
  v.setUint32(20, 512, true);
  v.setUint16(34, queues, true);
  return c;
}

export interface DecodedRequest {
  tag: number;
  type: number;
  sector: number;
  dataLen: number;
  segs: Uint8Array[];
}

export interface TestDevice {
  dev: NativeVhostDevice;
  path: string;
  events: VhostDeviceEvent[];
  disk: Uint8Array;
  /** Every request seen by onRequests, per call. */
  batches: { queue: number; reqs: DecodedRequest[] }[];
  /** Called with every batch after it was recorded (and held or served). */
  onBatch: ((queue: number, reqs: DecodedRequest[]) => void) | null;
  /** When set, requests are not completed by the fixture: they are pushed here. */
  held: { queue: number; req: DecodedRequest }[] | null;
  /** Completes held requests with the disk semantics. */
  completeHeld(): void;
  waitEvent(pred: (e: VhostDeviceEvent) => boolean, timeoutMs?: number): Promise<VhostDeviceEvent>;
  close(): void;
}

/** Applies a request to the disk; returns the status. */
function serve(disk: Uint8Array, r: DecodedRequest): number {
  const off = r.sector * SECTOR_SIZE;
  switch (r.type) {
    case VIRTIO_BLK_T_IN:
      scatterIov(disk, off, r.segs);
      return VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_OUT:
      gatherIov(r.segs, disk, off);
      return VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_FLUSH:
      return VIRTIO_BLK_S_OK;
    case VIRTIO_BLK_T_GET_ID: {
      const id = Buffer.from('vbc-test-disk');
      if (r.segs[0] !== undefined) r.segs[0].set(id.subarray(0, r.segs[0].length));
      return VIRTIO_BLK_S_OK;
    }
    default:
      return VIRTIO_BLK_S_UNSUPP;
  }
}

export function startDevice(opts: Partial<VhostDeviceOptions> & { async?: boolean } = {}): TestDevice {
  const socketPath = opts.socketPath ?? tmpSocketPath('dev');
  const events: VhostDeviceEvent[] = [];
  const waiters: { pred: (e: VhostDeviceEvent) => boolean; resolve: (e: VhostDeviceEvent) => void }[] = [];
  const disk = new Uint8Array(DISK_BYTES);
  const t: TestDevice = {
    dev: undefined as unknown as NativeVhostDevice,
    path: socketPath,
    events,
    disk,
    batches: [],
    held: null,
    onBatch: null,
    completeHeld() {
      const held = t.held ?? [];
      t.held = null;
      for (const h of held) {
        const st = serve(disk, h.req);
        t.dev.complete(h.queue, 1, Uint32Array.of(h.req.tag, st));
      }
    },
    waitEvent(pred, timeoutMs = 5000) {
      const seen = events.find(pred);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('timeout waiting for a device event')), timeoutMs);
        waiters.push({
          pred,
          resolve: (e) => {
            clearTimeout(timer);
            resolve(e);
          },
        });
      });
    },
    close() {
      t.dev.close();
      fs.rmSync(path.dirname(socketPath), { recursive: true, force: true });
    },
  };
  const onRequests = (queue: number, count: number, segs: Uint8Array[]): void => {
    const r = t.dev.requests;
    const reqs: DecodedRequest[] = [];
    for (let i = 0; i < count; i++) {
      const b = i * REQ_STRIDE;
      const first = r[b + REQ_FIRST_SEG];
      reqs.push({
        tag: r[b + REQ_TAG],
        type: r[b + REQ_TYPE],
        sector: r[b + REQ_SECTOR],
        dataLen: r[b + REQ_DATA_LEN],
        segs: segs.slice(first, first + r[b + REQ_SEG_COUNT]),
      });
    }
    t.batches.push({ queue, reqs });
    if (t.held !== null) {
      for (const req of reqs) t.held.push({ queue, req });
      t.onBatch?.(queue, reqs);
      return;
    }
    const pairs = new Uint32Array(count * 2);
    reqs.forEach((req, i) => {
      pairs[2 * i] = req.tag;
      pairs[2 * i + 1] = serve(disk, req);
    });
    if (opts.async === true) {
      setImmediate(() => t.dev.complete(queue, count, pairs));
    } else {
      t.dev.complete(queue, count, pairs);
    }
  };
  t.dev = new native.VhostDevice({
    socketPath,
    maxQueues: opts.maxQueues ?? 2,
    maxQueueSize: opts.maxQueueSize ?? 256,
    maxSegments: opts.maxSegments ?? 126,
    maxSegmentSize: opts.maxSegmentSize ?? 1 << 20,
    deviceFeatures: opts.deviceFeatures ?? BLK_FEATURES,
    config: opts.config ?? blkConfig(opts.maxQueues ?? 2),
    ...(opts.socketMode !== undefined ? { socketMode: opts.socketMode } : {}),
    onRequests,
    onEvent: (e) => {
      events.push(e);
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i].pred(e)) {
          waiters[i].resolve(e);
          waiters.splice(i, 1);
        }
      }
    },
  });
  return t;
}

/** A vhost-user client on a plain net.Socket: sends messages (no fds), reads replies. */
export class RawClient {
  private buf = Buffer.alloc(0);
  private readonly readers: (() => void)[] = [];
  closed = false;
  private readonly closeWaiters: (() => void)[] = [];

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (const r of this.readers.splice(0)) r();
    });
    sock.on('close', () => {
      this.closed = true;
      for (const r of this.readers.splice(0)) r();
      for (const w of this.closeWaiters.splice(0)) w();
    });
    sock.on('error', () => undefined);
  }

  static connect(socketPath: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(socketPath, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(request: number, payload: Uint8Array = new Uint8Array(0), flags = 1, size?: number): void {
    const h = Buffer.alloc(12);
    h.writeUInt32LE(request, 0);
    h.writeUInt32LE(flags, 4);
    h.writeUInt32LE(size ?? payload.length, 8);
    this.sock.write(Buffer.concat([h, Buffer.from(payload)]));
  }

  writeRaw(bytes: Uint8Array): void {
    this.sock.write(bytes);
  }

  end(): void {
    this.sock.end();
  }

  destroy(): void {
    this.sock.destroy();
  }

  /** Next message: {request, flags, payload}; rejects if the connection closes first. */
  async read(timeoutMs = 3000): Promise<{ request: number; flags: number; payload: Buffer }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buf.length >= 12) {
        const size = this.buf.readUInt32LE(8);
        if (this.buf.length >= 12 + size) {
          const msg = {
            request: this.buf.readUInt32LE(0),
            flags: this.buf.readUInt32LE(4),
            payload: Buffer.from(this.buf.subarray(12, 12 + size)),
          };
          this.buf = this.buf.subarray(12 + size);
          return msg;
        }
      }
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for a reply');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.readers.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  whenClosed(timeoutMs = 3000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('connection not closed')), timeoutMs);
      this.closeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async requestU64(request: number): Promise<bigint> {
    this.send(request);
    const r = await this.read();
    if (r.request !== request || r.flags !== 0x5 || r.payload.length !== 8) {
      throw new Error(`bad reply ${JSON.stringify({ request: r.request, flags: r.flags, len: r.payload.length })}`);
    }
    return r.payload.readBigUInt64LE(0);
  }
}

export function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}
