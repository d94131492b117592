/**
 * vhost-user wire format for the front end (driver side): message numbers as named by the
 * vhost-user spec, header flags, feature bits, and encoders/decoders for the payloads the front
 * end sends and receives. All numbers are little-endian (the machine's order on x86-64).
 *
 * Message = header (12 bytes) + payload:
 *   +0 request u32   +4 flags u32 (bits 0-1 version = 1, bit 2 REPLY, bit 3 NEED_REPLY)
 *   +8 size u32      +12 payload (size bytes)
 */

/** Front end -> back end requests (vhost-user spec "Front-end message types"). */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

const requestNames = new Map<number, string>(
  Object.entries(VhostUserRequest).map(([name, id]) => [id, name]),
);

/** "GET_FEATURES" for 1, "#99" for unknown numbers. */
export function requestName(request: number): string {
  return requestNames.get(request) ?? `#${request}`;
}

/** Requests whose reply is part of the protocol (independent of REPLY_ACK). */
export const REQUESTS_WITH_REPLY: ReadonlySet<number> = new Set([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_VRING_BASE,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.GET_CONFIG,
  VhostUserRequest.GET_MAX_MEM_SLOTS,
  VhostUserRequest.GET_INFLIGHT_FD,
  VhostUserRequest.GET_STATUS,
  VhostUserRequest.IOTLB_MSG,
  VhostUserRequest.POSTCOPY_ADVISE,
  VhostUserRequest.POSTCOPY_END,
]);

export const HEADER_SIZE = 12;
export const FLAG_VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Device feature bits (GET/SET_FEATURES): virtio transport bits and the vhost-user bit. */
export const Feature = {
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VHOST_USER_PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

export function hasBit(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}

/** SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR payload: bit 8 = no fd (polling). */
export const VRING_NOFD_MASK = 0x100;
/** SET_VRING_ADDR flags: log used-ring writes. */
export const VRING_F_LOG = 0x1;
/** SET_CONFIG / GET_CONFIG flags. */
export const CONFIG_TYPE_FRONTEND = 0;
export const CONFIG_TYPE_MIGRATION = 1;
/** Largest config space transferred by GET/SET_CONFIG. */
export const MAX_CONFIG_SIZE = 256;
/** SET_MEM_TABLE carries at most this many regions. */
export const MAX_MEM_REGIONS = 8;

/** A decoded message (header + payload view into the received buffer). */
export interface VhostUserMessage {
  request: number;
  flags: number;
  size: number;
  payload: Buffer;
  /** fds that came with a reply the caller keeps (GET_INFLIGHT_FD); the caller closes them. */
  fds?: number[];
}

/** Builds header + payload. `size` defaults to the payload length (tests may lie). */
export function encodeMessage(request: number, flags: number, payload?: Uint8Array, size?: number): Buffer {
  const len = payload?.length ?? 0;
  const out = Buffer.allocUnsafe(HEADER_SIZE + len);
  out.writeUInt32LE(request >>> 0, 0);
  out.writeUInt32LE(flags >>> 0, 4);
  out.writeUInt32LE((size ?? len) >>> 0, 8);
  if (payload !== undefined) out.set(payload, HEADER_SIZE);
  return out;
}

/** Splits a complete message (as delivered by FrontendChannel) into header fields and payload. */
export function decodeMessage(msg: Buffer): VhostUserMessage {
  const size = msg.readUInt32LE(8);
  return {
    request: msg.readUInt32LE(0),
    flags: msg.readUInt32LE(4),
    size,
    payload: msg.subarray(HEADER_SIZE, HEADER_SIZE + size),
  };
}

export function encodeU64(value: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(value));
  return b;
}

export function decodeU64(payload: Buffer): bigint {
  if (payload.length < 8) throw new RangeError(`u64 payload too short (${payload.length} bytes)`);
  return payload.readBigUInt64LE(0);
}

/** Vring state: index u32, num u32. */
export function encodeVringState(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index >>> 0, 0);
  b.writeUInt32LE(num >>> 0, 4);
  return b;
}

export function decodeVringState(payload: Buffer): { index: number; num: number } {
  if (payload.length < 8) throw new RangeError(`vring state payload too short (${payload.length} bytes)`);
  return { index: payload.readUInt32LE(0), num: payload.readUInt32LE(4) };
}

/**
 * Vring address: index u32, flags u32, then descriptor, used, available and log addresses
 * (u64 each) -- front-end user addresses (not guest physical), as the back end maps them
 * through the user address of the memory regions.
 */
export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export function encodeVringAddr(a: VringAddr): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(a.index >>> 0, 0);
  b.writeUInt32LE(a.flags >>> 0, 4);
  b.writeBigUInt64LE(a.desc, 8);
  b.writeBigUInt64LE(a.used, 16);
  b.writeBigUInt64LE(a.avail, 24);
  b.writeBigUInt64LE(a.log, 32);
  return b;
}

/** One memory region: guest physical address, size, front-end user address, offset in its fd. */
export interface MemRegion {
  guestAddr: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

function writeRegion(b: Buffer, off: number, r: MemRegion): void {
  b.writeBigUInt64LE(r.guestAddr, off);
  b.writeBigUInt64LE(r.size, off + 8);
  b.writeBigUInt64LE(r.userAddr, off + 16);
  b.writeBigUInt64LE(r.mmapOffset, off + 24);
}

/**
 * SET_MEM_TABLE payload: nregions u32, padding u32, then 8 region entries of 32 bytes (QEMU
 * always sends all 8 entries; unused ones are zero). `regions` beyond 8 are a caller error.
 */
export function encodeMemTable(regions: readonly MemRegion[], nregions = regions.length): Buffer {
  if (regions.length > MAX_MEM_REGIONS) throw new RangeError('at most 8 memory regions');
  const b = Buffer.alloc(8 + MAX_MEM_REGIONS * 32);
  b.writeUInt32LE(nregions >>> 0, 0);
  regions.forEach((r, i) => writeRegion(b, 8 + i * 32, r));
  return b;
}

/** ADD_MEM_REG / REM_MEM_REG payload: padding u64 + one region. */
export function encodeMemRegion(r: MemRegion): Buffer {
  const b = Buffer.alloc(40);
  writeRegion(b, 8, r);
  return b;
}

/** GET_CONFIG / SET_CONFIG payload: offset u32, size u32, flags u32, then `size` bytes. */
export function encodeConfig(offset: number, size: number, flags: number, data?: Uint8Array): Buffer {
  const b = Buffer.alloc(12 + size);
  b.writeUInt32LE(offset >>> 0, 0);
  b.writeUInt32LE(size >>> 0, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  if (data !== undefined) b.set(data.subarray(0, size), 12);
  return b;
}

export function decodeConfig(payload: Buffer): { offset: number; size: number; flags: number; data: Buffer } {
  if (payload.length < 12) throw new RangeError(`config payload too short (${payload.length} bytes)`);
  const size = payload.readUInt32LE(4);
  if (payload.length < 12 + size) throw new RangeError('config payload shorter than its size field');
  return {
    offset: payload.readUInt32LE(0),
    size,
    flags: payload.readUInt32LE(8),
    data: payload.subarray(12, 12 + size),
  };
}

/** GET_INFLIGHT_FD / SET_INFLIGHT_FD description (24 bytes as QEMU sends it; last 4 padding). */
export interface InflightDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

export const INFLIGHT_DESCRIPTION_SIZE = 24;

export function encodeInflight(d: InflightDescription): Buffer {
  const b = Buffer.alloc(INFLIGHT_DESCRIPTION_SIZE);
  b.writeBigUInt64LE(BigInt.asUintN(64, d.mmapSize), 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, d.mmapOffset), 8);
  b.writeUInt16LE(d.numQueues & 0xffff, 16);
  b.writeUInt16LE(d.queueSize & 0xffff, 18);
  return b;
}

export function decodeInflight(payload: Buffer): InflightDescription {
  if (payload.length < 20) throw new RangeError(`inflight payload too short (${payload.length} bytes)`);
  return {
    mmapSize: payload.readBigUInt64LE(0),
    mmapOffset: payload.readBigUInt64LE(8),
    numQueues: payload.readUInt16LE(16),
    queueSize: payload.readUInt16LE(18),
  };
}
