/**
 * NBD wire protocol (fixed newstyle handshake, transmission phase): constants, encoders and
 * decoders. Everything on the wire is big-endian. 64-bit fields (sizes, offsets, handles) are
 * handled as JS numbers split into two 32-bit halves: offsets and sizes above 2^53 are
 * rejected, handles are allocated by us and stay below 2^53.
 */
import { VhostError } from '../../native/errors';

// Magics. The 64-bit ones are kept as [high, low] 32-bit halves.
export const NBDMAGIC: readonly [number, number] = [0x4e42444d, 0x41474943]; // 'NBDMAGIC'
export const IHAVEOPT: readonly [number, number] = [0x49484156, 0x454f5054]; // 'IHAVEOPT'
export const CLISERV_MAGIC: readonly [number, number] = [0x00004202, 0x81861253]; // oldstyle
export const OPTION_REPLY_MAGIC: readonly [number, number] = [0x0003e889, 0x045565a9];
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, 16 bits). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

/** Options. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

/** NBD_REP_INFO types. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** Commands. */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_WRITE_ZEROES = 6;

/** Command flags. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;

/** Structured reply chunk flags and types; error types have bit 15 set. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERROR_BIT + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_BIT + 2;

/** Sizes of fixed-length messages. */
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_SIZE = 20;
export const OPTION_REPLY_HEADER_SIZE = 20;

/**
 * Block size defaults when the server sends no NBD_INFO_BLOCK_SIZE: requests aligned to 1 byte
 * work, and 32 MiB is the largest READ/WRITE payload every server must accept.
 */
export const DEFAULT_MIN_BLOCK = 1;
export const DEFAULT_PREFERRED_BLOCK = 4096;
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

/** NBD error values (the wire numbers are fixed by the protocol, not the host's errno). */
const NBD_ERRORS: ReadonlyMap<number, string> = new Map([
  [1, 'EPERM'],
  [5, 'EIO'],
  [12, 'ENOMEM'],
  [22, 'EINVAL'],
  [28, 'ENOSPC'],
  [75, 'EOVERFLOW'],
  [95, 'EOPNOTSUPP'],
  [108, 'ESHUTDOWN'],
]);
export const NBD_ESHUTDOWN = 108;

/** The errno name for an NBD error value; unknown values map to 'EIO'. */
export function nbdErrorName(value: number): string {
  return NBD_ERRORS.get(value) ?? 'EIO';
}

export const COMMAND_NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_CMD_READ, 'READ'],
  [NBD_CMD_WRITE, 'WRITE'],
  [NBD_CMD_DISC, 'DISC'],
  [NBD_CMD_FLUSH, 'FLUSH'],
  [NBD_CMD_TRIM, 'TRIM'],
  [NBD_CMD_WRITE_ZEROES, 'WRITE_ZEROES'],
]);

const TWO32 = 0x1_0000_0000;

export function writeU64(buf: Buffer, value: number, at: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new VhostError(`NBD: 64-bit field out of range: ${value}`, 'EINVAL');
  }
  buf.writeUInt32BE(Math.floor(value / TWO32), at);
  buf.writeUInt32BE(value % TWO32, at + 4);
}

/** Reads an unsigned 64-bit field; values above 2^53 come back as -1 (callers reject them). */
export function readU64(buf: Uint8Array, at: number): number {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const hi = b.readUInt32BE(at);
  const lo = b.readUInt32BE(at + 4);
  if (hi >= 0x200000) return -1;
  return hi * TWO32 + lo;
}

export function matches64(buf: Buffer, at: number, magic: readonly [number, number]): boolean {
  return buf.readUInt32BE(at) === magic[0] && buf.readUInt32BE(at + 4) === magic[1];
}

/** Client flags message (4 bytes). */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** Option request: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.alloc(16 + data.byteLength);
  b.writeUInt32BE(IHAVEOPT[0], 0);
  b.writeUInt32BE(IHAVEOPT[1], 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.byteLength, 12);
  b.set(data, 16);
  return b;
}

/** NBD_OPT_GO / NBD_OPT_INFO data: name length, name, number of info requests, info types. */
export function encodeGoData(exportName: string, infos: readonly number[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const b = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + name.length + 2 * i));
  return b;
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** Decodes the 20-byte option reply header; null when the magic is wrong. */
export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader | null {
  if (!matches64(b, 0, OPTION_REPLY_MAGIC)) return null;
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

export type InfoReply =
  | { info: 'export'; size: number; flags: number }
  | { info: 'blockSize'; minimum: number; preferred: number; maximum: number }
  | { info: 'other'; type: number };

/** Decodes an NBD_REP_INFO payload; null when its length does not fit its type. */
export function decodeInfo(p: Buffer): InfoReply | null {
  if (p.length < 2) return null;
  const type = p.readUInt16BE(0);
  if (type === NBD_INFO_EXPORT) {
    if (p.length !== 12) return null;
    return { info: 'export', size: readU64(p, 2), flags: p.readUInt16BE(10) };
  }
  if (type === NBD_INFO_BLOCK_SIZE) {
    if (p.length !== 14) return null;
    return {
      info: 'blockSize',
      minimum: p.readUInt32BE(2),
      preferred: p.readUInt32BE(6),
      maximum: p.readUInt32BE(10),
    };
  }
  return { info: 'other', type };
}

/** Writes a 28-byte request header at `at`. */
export function encodeRequest(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  handle: number,
  offset: number,
  length: number,
): void {
  b.writeUInt32BE(REQUEST_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  writeU64(b, handle, at + 8);
  writeU64(b, offset, at + 16);
  b.writeUInt32BE(length, at + 24);
}

/** Human text for an option reply error type. */
export function optionErrorText(type: number): string {
  switch (type) {
    case NBD_REP_ERR_UNSUP:
      return 'option not supported';
    case NBD_REP_ERR_POLICY:
      return 'forbidden by server policy';
    case NBD_REP_ERR_INVALID:
      return 'invalid option';
    case NBD_REP_ERR_PLATFORM:
      return 'not supported on the server platform';
    case NBD_REP_ERR_TLS_REQD:
      return 'server requires TLS, which this client does not implement';
    case NBD_REP_ERR_UNKNOWN:
      return 'export not found';
    case NBD_REP_ERR_SHUTDOWN:
      return 'server is shutting down';
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
      return 'server requires block size negotiation';
    case NBD_REP_ERR_TOO_BIG:
      return 'request too big';
    default:
      return `error reply 0x${type.toString(16)}`;
  }
}

/** The error code a handshake error reply maps to. */
export function optionErrorCode(type: number): string {
  switch (type) {
    case NBD_REP_ERR_UNKNOWN:
      return 'ENOENT';
    case NBD_REP_ERR_POLICY:
      return 'EPERM';
    case NBD_REP_ERR_TLS_REQD:
    case NBD_REP_ERR_UNSUP:
    case NBD_REP_ERR_PLATFORM:
      return 'EOPNOTSUPP';
    case NBD_REP_ERR_SHUTDOWN:
      return 'ESHUTDOWN';
    default:
      return 'EPROTO';
  }
}
