/**
 * Daemon configuration: the JSON config file (`serve --config FILE`) and the single-volume
 * command-line flags both end up as a DaemonConfig, validated here with messages that name
 * the bad field (e.g. `volumes[1].logicalBlockSize: must be 512 or 4096, got 1000`).
 */
import * as fs from 'node:fs';
import { native } from '../native/binding';
import { parseRbdSpec, isRbdSpec } from '../backing/rbd/spec';
import { VhostError } from '../native/errors';
import { MAX_VOLUMES, TOO_MANY_VOLUMES, volumeTooLarge } from '../cache/bda';

const LIMITS = native.limits;

export type CacheMode = 'writethrough' | 'writearound' | 'readonly' | 'none' | 'writeback';
export const CACHE_MODES: readonly CacheMode[] = ['writethrough', 'writearound', 'readonly', 'none', 'writeback'];
export type IoEnginePreference = 'auto' | 'io_uring' | 'threadpool';

export interface VolumeConfig {
  name: string;
  /** Exactly one of socketPath and fd. */
  socketPath?: string;
  fd?: number;
  socketMode: number;
  /** `socketOwner` ("USER[:GROUP]", names or numbers) resolved: the socket is chowned to it. */
  socketOwner?: SocketOwner;
  /** Peer uids (SO_PEERCRED) allowed to connect; absent: anyone who can reach the socket. */
  allowUids?: number[];
  /** A file or block device path, or an NBD URI (nbd://, nbd+unix://). */
  backing: string;
  /** Bytes; creates a sparse file of this size when the backing file does not exist. */
  size?: number;
  /**
   * Serve only the window [backingOffset, backingOffset + backingLength) of the backing store
   * (bytes, multiples of 4096; length defaults to the rest of the store). Volumes whose windows
   * do not overlap may share one store.
   */
  backingOffset?: number;
  backingLength?: number;
  readOnly: boolean;
  cacheMode: CacheMode;
  /** Cap on the share of the cache this volume may hold (bytes). */
  cacheMaxBytes?: number;
  /**
   * Sequential cut-off (bytes, bcache's sequential_cutoff): blocks of a read or write stream
   * longer than this are not inserted into the cache, nor read ahead. 0 = off (default).
   */
  sequentialCutoff: number;
  serial: string;
  numQueues: number;
  queueSize: number;
  logicalBlockSize: 512 | 4096;
  direct: boolean;
  /**
   * The operator guarantees that nothing but this daemon writes the backing store, ever: a
   * warm start then trusts the cached blocks of a block device or NBD export without verifying
   * a sample (files are always checked through their change stamp).
   */
  exclusive: boolean;
  /**
   * A clone (RBD) keys the blocks it still reads from its parent snapshot by the parent, so
   * every clone of it shares them in the cache (default true; false: keyed by the volume).
   */
  shareParent: boolean;
  /** Appends one line `R <offset> <length>` per guest read to this file (recording a trace). */
  traceReads?: string;
}

export interface SocketOwner {
  /** As written in the config, for messages. */
  spec: string;
  uid: number;
  /** -1: keep the group. */
  gid: number;
}

export interface CacheConfig {
  path: string;
  /** Bytes; creates or sizes a cache file. */
  size?: number;
  blockSize: number;
  segmentSize: number;
  /** A file for the warm-restart metadata (default: the cache device's metadata area). */
  metadataPath?: string;
  /** Segment I/O with O_DIRECT (default: on for a block device, off for a file). */
  direct?: boolean;
}

/** A TCP address to listen on (--metrics-listen HOST:PORT; `[::1]:9100` for IPv6). */
export interface ListenAddress {
  host: string;
  port: number;
}

export interface DaemonConfig {
  cache: CacheConfig | null;
  volumes: VolumeConfig[];
  /** Control socket (HTTP over a unix socket). */
  control?: string;
  /** Prometheus endpoint (GET /metrics over TCP); off when absent. */
  metricsListen?: ListenAddress;
  ioEngine: IoEnginePreference;
  /** How long a request may wait for an unreachable network backing store (and a write-back write for room). */
  backingTimeoutMs: number;
  /** A clean stop destages every write-back volume first. */
  flushOnStop: boolean;
  /**
   * Volumes whose write-back blocks written to another backing object are discarded at start
   * (serve --discard-dirty NAME; never from a config file: an operator's one-time decision).
   */
  discardDirty?: string[];
}

export const DEFAULTS = {
  socketMode: 0o600,
  numQueues: LIMITS.maxQueues,
  queueSize: 1024,
  logicalBlockSize: 512 as const,
  cacheBlockSize: 4096,
  segmentSize: 512 * 1024,
  backingTimeoutMs: 60_000,
};

function fail(field: string, why: string): never {
  throw new VhostError(`${field}: ${why}`, 'ECONFIG');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, key: string, field: string, required: boolean): string | undefined {
  const v = o[key];
  if (v === undefined) return required ? fail(`${field}.${key}`, 'is required') : undefined;
  if (typeof v !== 'string' || v.length === 0) fail(`${field}.${key}`, `must be a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

/** A file path, an NBD URI or an RBD spec; RBD specs are checked here (NBD URIs when opened). */
function validateBacking(o: Record<string, unknown>, field: string): string {
  const v = str(o, 'backing', field, true) as string;
  if (isRbdSpec(v)) {
    try {
      parseRbdSpec(v);
    } catch (err) {
      fail(`${field}.backing`, (err as Error).message);
    }
  }
  return v;
}

function bool(o: Record<string, unknown>, key: string, field: string, dflt: boolean): boolean {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') fail(`${field}.${key}`, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** Parses sizes given as numbers of bytes or strings with a binary suffix ("64M", "1G", "4k"). */
export function parseSize(v: unknown, field: string): number {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) fail(field, `must be a whole number of bytes, got ${v}`);
    return v;
  }
  if (typeof v !== 'string') return fail(field, `must be a size like 4096, "64M" or "10G", got ${JSON.stringify(v)}`);
  const m = /^(\d+)\s*([kKmMgGtT]?)(i?[bB])?$/.exec(v.trim());
  if (m === null) return fail(field, `must be a size like 4096, "64M" or "10G", got ${JSON.stringify(v)}`);
  const mult: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
  const n = Number(m[1]) * (mult[(m[2] ?? '').toLowerCase()] as number);
  if (!Number.isSafeInteger(n)) fail(field, `too large: ${v}`);
  return n;
}

function int(o: Record<string, unknown>, key: string, field: string, dflt: number, min: number, max: number): number {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    fail(`${field}.${key}`, `must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Backing windows start and end on 4 KiB boundaries (every logical and cache block size divides it). */
const WINDOW_ALIGNMENT = 4096;

const VOLUME_KEYS = new Set([
  'name', 'socketPath', 'fd', 'socketMode', 'socketOwner', 'allowUids', 'backing', 'size', 'backingOffset', 'backingLength', 'readOnly', 'cacheMode', 'cacheMaxBytes',
  'sequentialCutoff', 'serial', 'numQueues', 'queueSize', 'logicalBlockSize', 'direct', 'exclusive', 'shareParent', 'traceReads',
]);
const CACHE_KEYS = new Set(['path', 'size', 'blockSize', 'segmentSize', 'metadataPath', 'direct']);
const TOP_KEYS = new Set(['cache', 'volumes', 'control', 'metricsListen', 'ioEngine', 'backingTimeoutMs', 'flushOnStop']);

function checkKeys(o: Record<string, unknown>, allowed: Set<string>, field: string): void {
  for (const k of Object.keys(o)) if (!allowed.has(k)) fail(`${field}.${k}`, 'unknown field');
}

const MAX_ID = 2 ** 32 - 2; // uid/gid (-1, i.e. 2^32 - 1, means "none" to chown)

/** The id of a user or group by name from /etc/passwd or /etc/group, or a number as is. */
function resolveId(name: string, db: '/etc/passwd' | '/etc/group', field: string): number {
  if (/^\d+$/.test(name)) {
    const n = Number(name);
    if (n > MAX_ID) fail(field, `id ${name} out of range`);
    return n;
  }
  let text = '';
  try {
    text = fs.readFileSync(db, 'utf8');
  } catch (err) {
    fail(field, `cannot read ${db}: ${(err as Error).message}`);
  }
  for (const line of text.split('\n')) {
    const parts = line.split(':');
    if (parts[0] === name && parts[2] !== undefined && /^\d+$/.test(parts[2])) return Number(parts[2]);
  }
  return fail(field, `no ${db === '/etc/passwd' ? 'user' : 'group'} named ${JSON.stringify(name)}`);
}

function socketOwner(raw: Record<string, unknown>, field: string): SocketOwner | undefined {
  const spec = str(raw, 'socketOwner', field, false);
  if (spec === undefined) return undefined;
  const m = /^([^:]+)(?::([^:]+))?$/.exec(spec);
  if (m === null) return fail(`${field}.socketOwner`, `must be USER or USER:GROUP, got ${JSON.stringify(spec)}`);
  return {
    spec,
    uid: resolveId(m[1] as string, '/etc/passwd', `${field}.socketOwner`),
    gid: m[2] === undefined ? -1 : resolveId(m[2], '/etc/group', `${field}.socketOwner`),
  };
}

function allowUids(raw: Record<string, unknown>, field: string): number[] | undefined {
  const v = raw.allowUids;
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length === 0 || !v.every((u) => Number.isInteger(u) && (u as number) >= 0 && (u as number) <= MAX_ID)) {
    return fail(`${field}.allowUids`, `must be a non-empty array of uids (0..${MAX_ID}), got ${JSON.stringify(v)}`);
  }
  return [...new Set(v as number[])];
}

export function validateVolume(raw: unknown, field: string): VolumeConfig {
  if (!isObject(raw)) return fail(field, 'must be an object');
  checkKeys(raw, VOLUME_KEYS, field);
  const name = str(raw, 'name', field, true) as string;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) fail(`${field}.name`, `must be 1-64 of [A-Za-z0-9._-], got ${JSON.stringify(name)}`);
  const socketPath = str(raw, 'socketPath', field, false);
  const fd = raw.fd === undefined ? undefined : int(raw, 'fd', field, 0, 0, 1 << 20);
  if ((socketPath === undefined) === (fd === undefined)) fail(field, 'give exactly one of socketPath and fd');
  const owner = socketOwner(raw, field);
  if (owner !== undefined && socketPath === undefined) fail(`${field}.socketOwner`, 'needs socketPath (an inherited fd has no socket file to chown)');
  const uids = allowUids(raw, field);
  if (socketPath !== undefined && Buffer.byteLength(socketPath) > 107) fail(`${field}.socketPath`, 'longer than 107 bytes (unix socket limit)');
  const lbs = int(raw, 'logicalBlockSize', field, DEFAULTS.logicalBlockSize, 512, 4096);
  if (lbs !== 512 && lbs !== 4096) fail(`${field}.logicalBlockSize`, `must be 512 or 4096, got ${lbs}`);
  const cacheMode = (raw.cacheMode ?? 'writethrough') as CacheMode;
  if (!CACHE_MODES.includes(cacheMode)) fail(`${field}.cacheMode`, `must be one of ${CACHE_MODES.join(', ')}, got ${JSON.stringify(raw.cacheMode)}`);
  const queueSize = int(raw, 'queueSize', field, DEFAULTS.queueSize, LIMITS.minQueueSize, LIMITS.maxQueueSize);
  if ((queueSize & (queueSize - 1)) !== 0) fail(`${field}.queueSize`, `must be a power of two, got ${queueSize}`);
  const size = raw.size === undefined ? undefined : parseSize(raw.size, `${field}.size`);
  if (size !== undefined && (size === 0 || size % lbs !== 0)) fail(`${field}.size`, `must be a positive multiple of ${lbs}, got ${size}`);
  const window = (key: 'backingOffset' | 'backingLength', min: number): number | undefined => {
    if (raw[key] === undefined) return undefined;
    const v = parseSize(raw[key], `${field}.${key}`);
    if (v < min || v % WINDOW_ALIGNMENT !== 0) fail(`${field}.${key}`, `must be a multiple of ${WINDOW_ALIGNMENT} of at least ${min}, got ${v}`);
    return v;
  };
  const backingOffset = window('backingOffset', 0);
  const backingLength = window('backingLength', WINDOW_ALIGNMENT);
  const cacheMaxBytes = raw.cacheMaxBytes === undefined ? undefined : parseSize(raw.cacheMaxBytes, `${field}.cacheMaxBytes`);
  const sequentialCutoff = raw.sequentialCutoff === undefined ? 0 : parseSize(raw.sequentialCutoff, `${field}.sequentialCutoff`);
  const serial = str(raw, 'serial', field, false) ?? name;
  if (Buffer.byteLength(serial) > 20) fail(`${field}.serial`, 'at most 20 bytes (virtio-blk GET_ID)');
  return {
    name,
    ...(socketPath !== undefined ? { socketPath } : {}),
    ...(fd !== undefined ? { fd } : {}),
    socketMode: int(raw, 'socketMode', field, DEFAULTS.socketMode, 0, LIMITS.maxSocketMode),
    ...(owner !== undefined ? { socketOwner: owner } : {}),
    ...(uids !== undefined ? { allowUids: uids } : {}),
    backing: validateBacking(raw, field),
    ...(size !== undefined ? { size } : {}),
    ...(backingOffset !== undefined ? { backingOffset } : {}),
    ...(backingLength !== undefined ? { backingLength } : {}),
    readOnly: bool(raw, 'readOnly', field, false),
    cacheMode,
    ...(cacheMaxBytes !== undefined ? { cacheMaxBytes } : {}),
    sequentialCutoff,
    serial,
    numQueues: int(raw, 'numQueues', field, DEFAULTS.numQueues, 1, LIMITS.maxQueues),
    queueSize,
    logicalBlockSize: lbs,
    direct: bool(raw, 'direct', field, false),
    exclusive: bool(raw, 'exclusive', field, false),
    shareParent: bool(raw, 'shareParent', field, true),
    ...(raw.traceReads !== undefined ? { traceReads: str(raw, 'traceReads', field, true) as string } : {}),
  };
}

function validateCache(raw: unknown, field: string): CacheConfig {
  if (!isObject(raw)) return fail(field, 'must be an object');
  checkKeys(raw, CACHE_KEYS, field);
  const blockSize = raw.blockSize === undefined ? DEFAULTS.cacheBlockSize : parseSize(raw.blockSize, `${field}.blockSize`);
  if (blockSize < 4096 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) {
    fail(`${field}.blockSize`, `must be a power of two from 4096 to 65536, got ${blockSize}`);
  }
  const segmentSize = raw.segmentSize === undefined ? DEFAULTS.segmentSize : parseSize(raw.segmentSize, `${field}.segmentSize`);
  if (segmentSize < blockSize * 4 || segmentSize % blockSize !== 0 || segmentSize > 64 * 2 ** 20) {
    fail(`${field}.segmentSize`, `must be a multiple of the block size, at least 4 blocks and at most 64M, got ${segmentSize}`);
  }
  const size = raw.size === undefined ? undefined : parseSize(raw.size, `${field}.size`);
  if (size !== undefined && size < segmentSize * 4) fail(`${field}.size`, `must hold at least 4 segments (${segmentSize * 4} bytes), got ${size}`);
  const metadataPath = str(raw, 'metadataPath', field, false);
  return {
    path: str(raw, 'path', field, true) as string,
    ...(size !== undefined ? { size } : {}),
    blockSize,
    segmentSize,
    ...(metadataPath !== undefined ? { metadataPath } : {}),
    ...(raw.direct !== undefined ? { direct: bool(raw, 'direct', field, false) } : {}),
  };
}

/**
 * What a cache can key (bda.ts): every volume takes a volume id (a cache keys MAX_VOLUMES), and
 * a volume whose size the config gives (size, backingLength) must fit the key's block numbers.
 * Sizes known only when the store opens, and shared parents, are checked by the cache then.
 */
function checkCacheKeys(volumes: VolumeConfig[], cache: CacheConfig): void {
  if (volumes.length > MAX_VOLUMES) fail('config.volumes', `${volumes.length} volumes with a cache: ${TOO_MANY_VOLUMES}`);
  volumes.forEach((v, i) => {
    for (const key of ['size', 'backingLength'] as const) {
      const bytes = v[key];
      const why = bytes === undefined ? '' : volumeTooLarge(bytes, cache.blockSize);
      if (why !== '') fail(`config.volumes[${i}].${key}`, why);
    }
  });
}

/** Parses HOST:PORT (`127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`; port 0 = any free port). */
export function parseListenAddress(v: unknown, field: string): ListenAddress {
  const m = typeof v === 'string' ? /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(v) : null;
  if (m === null) return fail(field, `must be HOST:PORT (e.g. "127.0.0.1:9100"), got ${JSON.stringify(v)}`);
  const port = Number(m[3]);
  if (port > 65535) fail(field, `port must be 0..65535, got ${port}`);
  return { host: (m[1] ?? m[2]) as string, port };
}

export function validateConfig(raw: unknown): DaemonConfig {
  if (!isObject(raw)) return fail('config', 'must be a JSON object');
  checkKeys(raw, TOP_KEYS, 'config');
  const vols = raw.volumes;
  if (!Array.isArray(vols) || vols.length === 0) fail('config.volumes', 'must be a non-empty array');
  const volumes = vols.map((v, i) => validateVolume(v, `config.volumes[${i}]`));
  const seen = new Map<string, string>();
  volumes.forEach((v, i) => {
    for (const key of [`name:${v.name}`, v.socketPath !== undefined ? `socket:${v.socketPath}` : `fd:${v.fd}`]) {
      const prev = seen.get(key);
      if (prev !== undefined) fail(`config.volumes[${i}]`, `${key.split(':')[0]} ${JSON.stringify(key.slice(key.indexOf(':') + 1))} already used by ${prev}`);
      seen.set(key, `config.volumes[${i}]`);
    }
  });
  const ioEngine = (raw.ioEngine ?? 'auto') as IoEnginePreference;
  if (!['auto', 'io_uring', 'threadpool'].includes(ioEngine)) fail('config.ioEngine', `must be auto, io_uring or threadpool, got ${JSON.stringify(raw.ioEngine)}`);
  const control = str(raw, 'control', 'config', false);
  const cache = raw.cache === undefined || raw.cache === null ? null : validateCache(raw.cache, 'config.cache');
  if (cache !== null) checkCacheKeys(volumes, cache);
  return {
    cache,
    volumes,
    ...(control !== undefined ? { control } : {}),
    ...(raw.metricsListen !== undefined ? { metricsListen: parseListenAddress(raw.metricsListen, 'config.metricsListen') } : {}),
    ioEngine,
    backingTimeoutMs: int(raw, 'backingTimeoutMs', 'config', DEFAULTS.backingTimeoutMs, 100, 24 * 3600 * 1000),
    flushOnStop: bool(raw, 'flushOnStop', 'config', false),
  };
}
