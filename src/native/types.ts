/**
 * Types of the C++ addon's exports: the contract between native/ and src/. Each native class
 * is declared here with the rules it keeps. Option checks happen in the TypeScript wrappers
 * before anything crosses; the native side still validates everything that comes from a
 * front end (untrusted).
 */

/** virtio-blk request header types (virtio 1.2, 5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** virtio-blk status byte values. */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/**
 * Layout of VhostDevice.requests (a Float64Array owned by native, reused for every
 * onRequests call; copy what you need before returning). Request i occupies
 * [i * REQ_STRIDE, (i + 1) * REQ_STRIDE):
 *   +0 slot      opaque in-flight id; pass it back to complete()
 *   +1 type      VIRTIO_BLK_T_* (uint32 from the header)
 *   +2 sector    512-byte sector from the header; values >= 2^53 are clamped to 2^53
 *   +3 dataLen   total bytes of the data segments (between header and status byte)
 *   +4 firstSeg  index of the first data segment in the `segs` argument
 *   +5 segCount  number of data segments
 */
export const REQ_SLOT = 0;
export const REQ_TYPE = 1;
export const REQ_SECTOR = 2;
export const REQ_DATA_LEN = 3;
export const REQ_FIRST_SEG = 4;
export const REQ_SEG_COUNT = 5;
export const REQ_STRIDE = 6;

/** Events the native device reports to its owner (logging and state changes). */
export type VhostDeviceEvent =
  | { type: 'listening'; path: string | null }
  | { type: 'connected' }
  | { type: 'disconnected'; reason: string }
  /** A protocol or ring violation: the connection was dropped, the export listens again. */
  | { type: 'broken'; reason: string }
  | { type: 'queue-started'; queue: number; size: number }
  | { type: 'queue-stopped'; queue: number }
  /** SET_CONFIG from the front end: JS decides (e.g. writeback toggle) and calls setConfig(). */
  | { type: 'config-write'; offset: number; data: Uint8Array }
  /** One line for the logger; `msg` names the vhost-user message where there is one. */
  | { type: 'log'; level: 'trace' | 'debug' | 'info' | 'warn' | 'error'; msg: string; fields?: Record<string, unknown> };

export interface VhostDeviceOptions {
  /** Exactly one of socketPath and fd. */
  socketPath?: string;
  /** Mode of the created socket file (default 0o600). */
  socketMode?: number;
  /** An inherited unix stream socket: listening (accept from it) or already connected. */
  fd?: number;
  /** Answer to GET_QUEUE_NUM: the most queues a front end may use (1..64). */
  maxQueues: number;
  /** Largest vring size accepted by SET_VRING_NUM (power of two, <= 32768). */
  maxQueueSize: number;
  /**
   * virtio-blk device feature bits chosen by JS (RO, BLK_SIZE, SEG_MAX, SIZE_MAX, TOPOLOGY,
   * MQ, FLUSH, CONFIG_WCE, DISCARD, WRITE_ZEROES). Native adds VIRTIO_F_VERSION_1,
   * VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX and VHOST_USER_F_PROTOCOL_FEATURES.
   */
  deviceFeatures: bigint;
  /** The virtio_blk_config image GET_CONFIG serves (at most 256 bytes). */
  config: Uint8Array;
  /**
   * Called once per kick per queue with every request that was available. `count` requests
   * are in `device.requests` (see REQ_*); `segs` holds the data segments as views into guest
   * memory (device-writable for IN and GET_ID, device-readable for OUT, DISCARD,
   * WRITE_ZEROES). The views stay valid (memory stays mapped) as long as JS holds them,
   * even after the front end changes its memory table or disconnects.
   */
  onRequests: (queue: number, count: number, segs: Uint8Array[]) => void;
  onEvent: (event: VhostDeviceEvent) => void;
}

export interface NativeVhostDevice {
  /** See REQ_* for the layout. */
  readonly requests: Float64Array;
  /**
   * Completes `count` requests of `queue`: completions holds pairs [slot, status].
   * Used-ring entries are written at once; the guest is notified at most once per event-loop
   * turn (EVENT_IDX honoured). Slots that are not in flight (e.g. from before a disconnect)
   * are ignored.
   */
  complete(queue: number, count: number, completions: Uint32Array): void;
  /** Replaces the config image (e.g. after a resize or a writeback toggle). */
  setConfig(config: Uint8Array): void;
  /** Requests handed to JS and not yet completed, per queue. */
  inflight(): number[];
  /** true while a front end is connected. */
  readonly connected: boolean;
  /** Stops listening, drops any connection, removes the socket file it created. */
  close(): void;
}

export interface NativeAddon {
  setErrorClass(ctor: new (message: string, code: string) => Error): void;
  VhostDevice: new (options: VhostDeviceOptions) => NativeVhostDevice;
}
