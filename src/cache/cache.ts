/**
 * The shared cache: one cache device (file or block device) holding the log, the cache map
 * (BDA + address map + CLOCK), the volume table, statistics and warm-restart metadata.
 * Volumes reach it through CachedStore (cached-store.ts), which owns the consistency rules;
 * this class offers block-granular primitives: readBlocks, readHit, insert, invalidate.
 *
 * Open sequence: open (or create) the device, lock it (flock: a second open of a live cache, in
 * any process, gets EBUSY) and size it; read the superblock (device offset 0)
 * and format it (fresh uuid, generation 0) if it is missing, of another geometry, or the file
 * had to be resized; load the metadata (device area, or the --cache-metadata file) if it is
 * bound to the superblock's uuid and generation and matches the geometry and map size; else,
 * after an unclean stop, rebuild the index from the segment headers (recovery.ts, which states
 * the invariant that makes this safe) with the durable volume table (volume-table.ts), and
 * after a host crash (the superblock's boot id is not this boot's, or a new descriptor's
 * fdatasync reports a lost write) drop every clean block recovered (the clean floor,
 * dropClean); then bump the generation in the superblock (with this boot's id and the clean
 * floor) and fdatasync BEFORE returning. From then on the
 * metadata on disk is stale: a crash leaves a cache that opens by recovery. A superblock whose
 * volume table cannot be read (and no metadata) is formatted again (new uuid: no old header is
 * trusted). close() drains insertions, writes buffered segments, fdatasyncs the device, saves
 * the volume table and the metadata with the current generation. abort() stops without
 * saving (what a crash leaves).
 *
 * The volume table is saved (and synced) whenever an id is assigned, a volume's blocks are all
 * dropped (its epoch is raised: the volume's writes wait for that save, pendingTable) or its
 * recorded identity changes. Records are never removed, so an id assigned now is unknown to
 * every table on the device, and recovery skips entries of unknown ids: a new id's blocks need
 * not wait for its save.
 *
 * Every block read from the cache device is read exactly (end of device = error) and checked
 * against its CRC-32C in the BDA; a failed read or a mismatch is a miss: counted (readErrors,
 * checksumErrors), the slot dropped, the caller reads the backing store. Blocks copied from a
 * RAM segment buffer are not checked (they are the bytes inserted or already checked).
 *
 * Write-back: insertDirty() + commit() (log.ts: the group commit) put a volume's write-back
 * blocks in the log, durable when commit() resolves true; destage.ts writes them back and
 * markClean() records it (header rewrites, batched). A dirty block is never dropped for a read
 * error or checksum mismatch (readBlocks then fails with EIO: the backing store is older), and
 * dropping all of a volume's blocks (identity or size changed, fenced, failed flush...) keeps
 * its dirty ones (only the clean ones are dropped, one by one, each durably before the next
 * write of its key: recovery.ts 2.).
 *
 * Superblock (4 KiB, little endian, version 5): u32 magic 0x44434256 ('VBCD'), u32 version,
 * u32 blockSize, u32 segmentSize, u32 headerSize, u32 segments, u32+u32 metadata area bytes,
 * 16 bytes uuid, u32+u32 generation, 4 bytes zero, u32 CRC-32 of the 4 KiB with this field
 * and the kill mark area zero (offset 60), 16 bytes boot id, u32+u32 clean floor, zeros, and at
 * offset 2048 the kill marks (kill-marks.ts: kept in every superblock open writes until open
 * has rewritten the marked segments' headers). Full format: docs/cache-format.md.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { identityObject } from '../backing/backing-store';
import { directAlignment } from '../io/direct-io';
import type { IoEngine, SyncRegion } from '../io/io-engine';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { type Logger, silentLogger } from '../util/logger';
import { AddressMap, DEFAULT_LOAD_FACTOR, MIN_LOAD_FACTOR } from './address-map';
import { MAX_VOLUMES, TOO_MANY_VOLUMES, volumeTooLarge } from './bda';
import { CacheMap } from './cache-map';
import { type InsertKind, Log, REWRITE_DELAY_MS } from './log';
import { describePlace, loadMetadata, type MetadataPlace, saveMetadata, type VolumeRecord } from './metadata';
import { recoverIndex } from './recovery';
import { isMarkArea, KillMarks, readMarks } from './kill-marks';
import { computeGeometry, type Geometry, SEGMENT_ALIGNMENT, SUPERBLOCK_SIZE } from './segment';
import { VolumeTable, type VolumeTableSnapshot, type VolumeTableState } from './volume-table';
import { addCounters, type CacheStats, newCounters, type VolumeStats, withRate } from './stats';

export const SUPERBLOCK_MAGIC = 0x44434256;
/** Attempts of one round of retire() (after a write error) before it gives up. */
const RETIRE_ATTEMPTS = 20;
/** Longest wait between two attempts of retire(): ~4 s of attempts per round. */
const RETIRE_RETRY_MAX_MS = 250;
/** Reads of a dirty block tried before a read fails with EIO (a segment rewritten meanwhile is retried). */
const DIRTY_READ_ATTEMPTS = 3;
/**
 * Longest a clean mark waits for its header rewrite (markClean): the marks of the destage rounds
 * of this period share one rewrite per segment. Rewritten per round, a pass over randomly
 * placed dirty blocks cost 0.66 header rewrites per destaged block (~40 µs of io_uring worker
 * CPU each: ext4 punts buffered writes to a worker).
 */
export const CLEAN_MARK_DELAY_MS = 1000;
export const SUPERBLOCK_VERSION = 5;
/** Where the host's boot id is read (cache-format.md "Crash kinds"). */
export const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';
/**
 * A superblock's clean floor while a recovery after a host crash has not yet recorded its real
 * one: every clean entry is below it (cache-format.md "Crash kinds").
 */
const CLEAN_FLOOR_PENDING = Number.MAX_SAFE_INTEGER;
/** insertDirty()'s insertions: write-back data, every block accepted. */
const DIRTY: InsertKind = { dirty: true };
/** The kinds of insert()'s blocks (constant records: no allocation per insertion). */
const WRITTEN: InsertKind = {};
export const READ_MISS: InsertKind = { readMiss: true };
export const PREFETCHED: InsertKind = { prefetched: true };
const acceptAll = (): boolean => true;

export interface CacheOptions {
  /** Cache device: a block device or a file (created when `size` is given). */
  path: string;
  /** Bytes; creates or resizes a regular file. Required when the file does not exist. */
  size?: number;
  /** Cache block size, power of two in 4-64 KiB (default 4096). */
  blockSize?: number;
  /** Segment data size, multiple of blockSize (default 512 KiB). */
  segmentSize?: number;
  engine: IoEngine;
  logger?: Logger;
  /**
   * Warm-restart metadata file. Default: none, the metadata lives in the cache device's
   * metadata area. Either way it is only trusted when bound to the superblock's uuid and
   * generation.
   */
  metadataPath?: string;
  /** RAM segment buffers (default 8). */
  buffers?: number;
  /** Address map load factor, in [MIN_LOAD_FACTOR, 1) (default 0.7). */
  loadFactor?: number;
  /** Insertion backlog limit in blocks (default 16 segments' worth). */
  maxQueuedBlocks?: number;
  /**
   * The log's segment I/O with O_DIRECT, so the cache device is not cached again in RAM (page
   * cache): default on for a block device, off for a file (a file system may not support it).
   */
  direct?: boolean;
  /** How long to wait for a held device lock before EBUSY (default LOCK_WAIT_MS). */
  lockWaitMs?: number;
  /**
   * The host boot this process runs in (default: the kernel's boot id, BOOT_ID_PATH); tests
   * give one to simulate a host crash (another boot) or a process crash (the same).
   */
  bootId?: string;
  /**
   * A kill of clean entries marks their segments in the superblock instead of waiting for the
   * header rewrite (kill-marks.ts; default true). False: every kill waits, as before marks
   * (benchmarks compare the two; tests of the rewrite path). Marks found at open are honoured either way.
   */
  killMarks?: boolean;
  /**
   * How long header rewrites nothing waits for gather before their batch starts (log.ts
   * REWRITE_DELAY_MS, the default). 0: every batch starts after its JS turn, with no timer, so
   * the device operations a run issues depend on its events only (the interleaving explorer).
   */
  rewriteDelayMs?: number;
}

export interface VolumeOptions {
  /** Cap on this volume's share of the cache, in bytes (hard cap; 0/undefined = none). */
  maxBytes?: number;
  /**
   * The store may lose writes it acknowledged and were not flushed when its connection drops
   * (NBD: the crash of the daemon dropped it): its blocks recovered after a crash are dropped.
   */
  unflushedWritesMayBeLost?: boolean;
}

function deviceBytes(file: string, fd: number): number {
  const st = fs.fstatSync(fd);
  if (st.isFile()) return st.size;
  if (!st.isBlockDevice()) throw new VhostError(`${file}: not a file or block device`, 'EINVAL');
  const dev = st.rdev;
  const major = (Math.floor(dev / 256) & 0xfff) | (Math.floor(dev / 2 ** 32) & 0xfffff000);
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
  return sectors * 512;
}

/**
 * The descriptor the log reads and writes segments through: `fd` itself (buffered), or with
 * `direct` a second descriptor of the same open device (/proc/self/fd, so never another file
 * that took its name) with O_DIRECT, and its alignment. Superblock and metadata stay buffered.
 */
function openLogIo(file: string, fd: number, direct: boolean): { fd: number; alignment: number } {
  if (!direct) return { fd, alignment: 1 };
  let dfd: number;
  try {
    dfd = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new VhostError(`${file}: cannot open with O_DIRECT (${code}); its file system may not support it: turn cache direct I/O off`, code);
  }
  const alignment = directAlignment(dfd);
  if (SEGMENT_ALIGNMENT % alignment !== 0) {
    fs.closeSync(dfd);
    throw new VhostError(`${file}: O_DIRECT alignment ${alignment} does not divide ${SEGMENT_ALIGNMENT}`, 'EINVAL');
  }
  return { fd: dfd, alignment };
}

/**
 * Opens the device and takes an exclusive flock on it, held until close()/abort() unlocks it
 * (the kernel drops it if the process dies), so no second Cache, in this process or another,
 * can open a live cache: it gets EBUSY. `resized` when a regular file had to be created or
 * resized to `size` (only after the lock is held).
 */
function openDevice(file: string, size: number | undefined): { fd: number; bytes: number; resized: boolean; block: boolean } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r+');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if (!size) throw new VhostError(`${file}: no such cache device (give a size to create a file)`, 'ENOENT');
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  }
  try {
    try {
      native.lockExclusive(fd);
    } catch (err) {
      if ((err as VhostError).code !== 'EAGAIN') throw err;
      throw new VhostError(`cache ${file} is open by another cache (a running daemon?)`, 'EBUSY');
    }
    const st = fs.fstatSync(fd);
    const resized = st.isFile() && size !== undefined && size > 0 && st.size !== size;
    if (resized) fs.ftruncateSync(fd, size);
    return { fd, bytes: deviceBytes(file, fd), resized, block: st.isBlockDevice() };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/**
 * How long an open waits for the device lock: a daemon killed with I/O in flight, or a cache
 * closed just now, holds it until the kernel drops the last reference to the open file, which
 * an io_uring worker can hold a little after the owner is gone.
 */
export const LOCK_WAIT_MS = 2000;

/** openDevice, retried every 20 ms for up to waitMs while the lock is held (EBUSY). */
async function openDeviceWaiting(file: string, size: number | undefined, waitMs: number): Promise<ReturnType<typeof openDevice>> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return openDevice(file, size);
    } catch (err) {
      if ((err as VhostError).code !== 'EBUSY' || Date.now() >= deadline) throw err;
    }
    await sleep(20); // polling interval: flock has no wait-with-timeout
  }
}

/** Bytes of zeros per write, and writes in flight, when a new cache file is filled. */
const ZERO_FILL_CHUNK = 1 << 20;
const ZERO_FILL_DEPTH = 4;

/**
 * Allocates and writes every block of a cache file that was created or resized (it is sparse).
 * fallocate first, so a full file system fails here, at open, never as a segment write error
 * later (a file system without fallocate skips it). Then zeros over the whole file, made
 * durable: fallocate leaves unwritten extents, and the first write into one makes every
 * fdatasync commit the file system's journal (ext4 on this machine: 3.9 ms instead of 55 us),
 * which is what a write-back commit waits for. A written file is what a block device is.
 */
async function preallocate(engine: IoEngine, fd: number, bytes: number, file: string): Promise<void> {
  try {
    await engine.fallocate(fd, 0, 0, bytes);
  } catch (err) {
    const code = (err as VhostError).code;
    if (code !== 'EOPNOTSUPP') throw new VhostError(`${file}: cannot allocate ${bytes} bytes for the cache (${code})`, code ?? 'EIO');
  }
  const zeros = new Uint8Array(Math.min(ZERO_FILL_CHUNK, bytes));
  let next = 0;
  const writer = async (): Promise<void> => {
    while (next < bytes) {
      const at = next;
      next += zeros.byteLength;
      await engine.writev(fd, [zeros.subarray(0, Math.min(zeros.byteLength, bytes - at))], at);
    }
  };
  try {
    await Promise.all(Array.from({ length: ZERO_FILL_DEPTH }, writer));
    await engine.fdatasync(fd);
  } catch (err) {
    const code = (err as VhostError).code;
    throw new VhostError(`${file}: cannot write the new cache file (${code})`, code ?? 'EIO');
  }
}

interface SuperblockState {
  uuid: Uint8Array;
  generation: number;
  /** 16 bytes naming the host boot of the open that wrote it (bootIdBytes). */
  boot: Uint8Array;
  /** Clean header entries sealed below this are never recovered. */
  cleanFloor: number;
}

/**
 * 16 bytes naming a host boot: the first 16 bytes of the SHA-256 of `id`, or of the kernel's
 * boot id; a random value if that cannot be read (every unclean stop then counts as a host crash).
 */
function bootIdBytes(id: string | undefined): Uint8Array {
  let text = id;
  if (text === undefined) {
    try {
      text = fs.readFileSync(BOOT_ID_PATH, 'utf8').trim();
    } catch {
      return new Uint8Array(randomBytes(16));
    }
  }
  return new Uint8Array(createHash('sha256').update(text).digest().subarray(0, 16));
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);
}

function superblock(g: Geometry, sb: SuperblockState): Uint8Array {
  const b = new Uint8Array(SUPERBLOCK_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, SUPERBLOCK_MAGIC, true);
  v.setUint32(4, SUPERBLOCK_VERSION, true);
  v.setUint32(8, g.blockSize, true);
  v.setUint32(12, g.segmentSize, true);
  v.setUint32(16, g.headerSize, true);
  v.setUint32(20, g.segments, true);
  v.setUint32(24, g.metadataBytes >>> 0, true);
  v.setUint32(28, Math.floor(g.metadataBytes / 2 ** 32), true);
  b.set(sb.uuid, 32);
  v.setUint32(48, sb.generation >>> 0, true);
  v.setUint32(52, Math.floor(sb.generation / 2 ** 32), true);
  b.set(sb.boot, 64);
  v.setUint32(80, sb.cleanFloor >>> 0, true);
  v.setUint32(84, Math.floor(sb.cleanFloor / 2 ** 32), true);
  v.setUint32(60, crc32(b), true);
  return b;
}

/** The state of a superblock that matches g, or null. */
function parseSuperblock(b: Uint8Array, g: Geometry): SuperblockState | null {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const st = {
    uuid: b.slice(32, 48),
    generation: v.getUint32(48, true) + v.getUint32(52, true) * 2 ** 32,
    boot: b.slice(64, 80),
    cleanFloor: v.getUint32(80, true) + v.getUint32(84, true) * 2 ** 32,
  };
  const expect = superblock(g, st);
  for (let i = 0; i < SUPERBLOCK_SIZE; i++) if (b[i] !== expect[i] && !isMarkArea(i)) return null;
  return st;
}

/**
 * Drops (untracked) every clean entry of a recovered map whose header was sealed below
 * `cleanFloor` (the floor makes their entries dead) or whose segment is `marked` (kill-marks.ts:
 * open rewrites those headers before anything else), after the entries of each key were
 * resolved (recovery.ts): a key whose newest entry is clean loses it and no older copy comes
 * back. Returns how many.
 */
function dropClean(map: CacheMap, segSeq: Float64Array, cleanFloor: number, marked: ReadonlySet<number>): number {
  const { bda } = map;
  const bps = map.segmentBlocks;
  let n = 0;
  for (let seg = 0; seg < segSeq.length; seg++) {
    if (segSeq[seg] >= cleanFloor && !marked.has(seg)) continue;
    for (let i = seg * bps; i < (seg + 1) * bps; i++) {
      if (!bda.isValid(i) || bda.isDirty(i)) continue;
      map.drop(i, true);
      n++;
    }
  }
  return n;
}

/**
 * A position in a scatter list, moved forward only: `copyIn` copies bytes into the list at the
 * position, `views` appends to `out` the views covering the next n bytes (the caller's own
 * views where a whole one is covered). Both advance the position by n.
 */
class IovCursor {
  private bufs: readonly Uint8Array[] = [];
  private index = 0;
  /** Offset in bufs[index]. */
  private at = 0;

  reset(bufs: readonly Uint8Array[]): void {
    this.bufs = bufs;
    this.index = 0;
    this.at = 0;
  }

  copyIn(src: Uint8Array, from: number, n: number): void {
    while (n > 0) {
      const b = this.bufs[this.index];
      const k = Math.min(n, b.byteLength - this.at);
      b.set(src.subarray(from, from + k), this.at);
      this.step(b, k);
      from += k;
      n -= k;
    }
  }

  views(n: number, out: Uint8Array[]): void {
    while (n > 0) {
      const b = this.bufs[this.index];
      const k = Math.min(n, b.byteLength - this.at);
      out.push(k === b.byteLength ? b : b.subarray(this.at, this.at + k));
      this.step(b, k);
      n -= k;
    }
  }

  private step(b: Uint8Array, k: number): void {
    this.at += k;
    if (this.at === b.byteLength) {
      this.index++;
      this.at = 0;
    }
  }
}

/** A run of device hits: consecutive blocks in consecutive slots of one segment. */
interface DirectRun {
  slot: number;
  /** Block number of the run's first block. */
  block: number;
  blocks: number;
  /** Whole blocks only: a block only partly requested is served from RAM or not at all. */
  views: Uint8Array[];
}

/** Placeholder callback of a free DeviceHit. */
function unsettledHit(): void {}

/**
 * readHit()'s device read of one run of slots (the common hit: a 4 KiB read), in flight.
 * Records are reused from a free list, so such a hit allocates no closure (issue 16).
 */
class DeviceHit {
  volume = 0;
  slot = 0;
  first = 0;
  count = 0;
  done: (ok: boolean) => void = unsettledHit;
  /** Log.readDirect's callback, bound to this record once (newDeviceHit). */
  settle: (ok: boolean, err: Error | null) => void = unsettledHit;
}

export class Cache {
  readonly geometry: Geometry;
  readonly blockSize: number;
  readonly path: string;
  /** Where the metadata is saved at close. */
  readonly metadataPlace: MetadataPlace;
  /** The superblock generation of this open (the metadata saved at close carries it). */
  readonly generation: number;
  /** True when this open loaded valid metadata (warm start). */
  readonly warm: boolean;
  /** What recovery from the segment headers found (null: no recovery ran). */
  readonly recovery: { entries: number; skipped: number; rewritten: number; verified: number; torn: number; hostCrash: boolean; cleanDropped: number; ms: number } | null;
  readonly map: CacheMap;
  readonly log: Log;
  private readonly fd: number;
  private readonly engine: IoEngine;
  /** The log's descriptor: fd, or an O_DIRECT one of the same device (closed with fd). */
  private readonly logFd: number;
  /** Kill marks in the superblock (kill-marks.ts). */
  private readonly marks: KillMarks;
  private readonly logger: Logger;
  private readonly uuid: Uint8Array;
  private readonly volumes = new Map<string, VolumeRecord>();
  private readonly table: VolumeTable;
  /** Header sectors sealed below this are never recovered (volume-table.ts). */
  private floor: number;
  /** Destage everything of one volume (registered by its CachedStore): run after a write error. */
  private readonly drainers = new Set<() => Promise<void>>();
  /**
   * Dirty slots being destaged that still hold what they held when picked (watchDestage) -> the
   * volume whose round watches them (rounds of different volumes overlap: a slot dropped and
   * refilled by another volume's block may be watched again by that volume's round).
   */
  private readonly destaging = new Map<number, number>();
  /** Segments whose headers still name blocks markClean() marked clean, and the timer that rewrites them. */
  private cleanSegs = new Set<number>();
  private cleanTimer: NodeJS.Timeout | null = null;
  /** Ids whose blocks were recovered after a crash and that were not registered since. */
  private readonly recoveredIds = new Set<number>();
  /** Volume ids whose table change is not durable yet: the save their writes and inserts wait for. */
  private readonly pendingTable = new Map<number, Promise<void>>();
  private readonly active = new Set<number>();
  /** Shared parents' ids (registerShared) and how many volumes use each. */
  private readonly sharedUsers = new Map<number, number>();
  private closing = false;
  private closed = false;
  private overflowLogged = false;
  /** readHit()'s one-run device reads not in flight (DeviceHit). */
  private readonly hitFree: DeviceHit[] = [];
  /** readHit() scratch, used synchronously only: slots of the request's blocks, cursor. */
  private hitSlots = new Int32Array(64);
  private readonly cursor = new IovCursor();

  private constructor(a: {
    o: CacheOptions;
    fd: number;
    logIo: { fd: number; alignment: number };
    g: Geometry;
    sb: SuperblockState;
    place: MetadataPlace;
    map: CacheMap;
    sequence: number;
    /** The durable mark the log starts from (Log: LogOptions.synced). */
    synced: number;
    marks: KillMarks;
    floor: number;
    volumes: VolumeRecord[];
    warm: boolean;
    table: VolumeTable;
    recovery: Cache['recovery'];
  }) {
    this.path = a.o.path;
    this.metadataPlace = a.place;
    this.generation = a.sb.generation;
    this.logger = a.o.logger ?? silentLogger;
    this.fd = a.fd;
    this.engine = a.o.engine;
    this.logFd = a.logIo.fd;
    this.geometry = a.g;
    this.blockSize = a.g.blockSize;
    this.uuid = a.sb.uuid;
    this.map = a.map;
    this.warm = a.warm;
    this.recovery = a.recovery;
    this.floor = a.floor;
    this.table = a.table;
    for (const v of a.volumes) {
      this.volumes.set(v.name, v);
      if (a.recovery !== null) this.recoveredIds.add(v.id);
    }
    this.marks = a.marks;
    this.log = new Log({
      fd: a.logIo.fd,
      alignment: a.logIo.alignment,
      engine: a.o.engine,
      geometry: a.g,
      map: a.map,
      uuid: a.sb.uuid,
      sequence: a.sequence,
      synced: a.synced,
      buffers: a.o.buffers ?? 8,
      maxQueuedBlocks: a.o.maxQueuedBlocks ?? 16 * a.g.blocksPerSegment,
      logger: this.logger,
      onDisabled: () => this.retire(),
      marks: a.o.killMarks === false ? null : a.marks,
      rewriteDelayMs: a.o.rewriteDelayMs ?? REWRITE_DELAY_MS,
    });
    this.map.onClean = (slot) => void this.destaging.delete(slot);
  }

  /** What the volume table saves. */
  private tableState(): VolumeTableSnapshot {
    return { floor: this.floor, volumes: [...this.volumes.values()], sequence: this.log.sequence };
  }

  private tableOverflow(): void {
    if (this.overflowLogged) return;
    this.overflowLogged = true;
    this.logger.warn({ volumes: this.volumes.size }, 'volume table too large for its area: a start after a crash recovers nothing (cold)');
  }

  /**
   * After a write error (Log onDisabled): makes durable that nothing written so far is
   * recovered, since the volumes' writes made while the cache is disabled kill nothing on the
   * device (recovery.ts, rule 7). Each attempt saves the volume table with the floor above every
   * sequence number used and, if that fails, retires the superblock (zeros: the next start
   * formats the device, so no header of before is trusted). Resolves true once either is
   * durable; false after RETIRE_ATTEMPTS failed attempts (backoff up to RETIRE_RETRY_MAX_MS),
   * logged: the writes waiting for it then fail with EIO and are never issued (Log.killFor), and
   * the next write tries again. A cache closing stops the attempts (false). Never rejects.
   * Write-back blocks exist only on this device and the floor (or a retired superblock) drops
   * them at the next start: they are destaged first (every volume's drainer), what is dirty
   * logged before and after; the writes waiting for this round wait for that destage too, so a
   * destage never lands after a newer write of its blocks.
   */
  private async retire(): Promise<boolean> {
    if (this.map.dirtyTotal > 0) {
      // Write-back blocks exist only here: written back first (the floor would drop them).
      this.logger.error(
        { dirty: this.dirtyByName() },
        'cache device write failed with write-back blocks not destaged: new writes go to the backing store (write-through) while they are destaged; they are lost if the process stops before',
      );
      await Promise.allSettled([...this.drainers].map((d) => d()));
      if (this.map.dirtyTotal > 0) this.logger.error({ dirty: this.dirtyByName() }, 'write-back blocks could not be destaged after the cache device write error: they are lost at the next start');
    }
    this.floor = this.log.sequence + 1;
    let err: Error | null = null;
    for (let attempt = 1; attempt <= RETIRE_ATTEMPTS; attempt++) {
      if (attempt > 1) await new Promise((r) => setTimeout(r, Math.min(RETIRE_RETRY_MAX_MS, 10 * 2 ** attempt)));
      if (this.closing) return false;
      try {
        await this.table.save();
        return true;
      } catch (e) {
        err = e as Error;
      }
      try {
        await this.engine.writev(this.fd, [new Uint8Array(SUPERBLOCK_SIZE)], 0);
        await this.engine.fdatasync(this.fd);
        this.logger.warn({ path: this.path }, 'cache superblock retired after a write error (volume table not saved): the next start formats the device');
        return true;
      } catch (e) {
        err = e as Error;
      }
    }
    this.logger.error(
      { path: this.path, err: err?.message },
      'cache device refuses writes after a write error: writes of blocks it may hold fail (EIO) until it accepts one; remove or reformat it',
    );
    return false;
  }

  /**
   * Saves the volume table; a failed save is a cache-device write error (the log is disabled).
   * Never rejects.
   */
  private saveTable(): Promise<void> {
    return this.table.save().catch((err: Error) => this.log.writeFailed(`cache volume table write failed: ${err.message}`));
  }

  /**
   * Drops every block of volume `rec` at once: raises its epoch (durable before its next write).
   * A volume holding dirty blocks keeps them: its clean blocks are dropped one by one instead.
   */
  private dropAll(rec: VolumeRecord): number {
    if (this.map.dirtyBlocks(rec.id) > 0) return this.dropClean(rec.id);
    return this.dropEvery(rec);
  }

  /** Drops every block of volume `rec`, dirty ones included, by raising its epoch (see dropAll). */
  private dropEvery(rec: VolumeRecord): number {
    const n = this.map.dropVolume(rec.id);
    rec.epoch = this.log.sequence + 1;
    const id = rec.id;
    const p = this.saveTable();
    this.pendingTable.set(id, p);
    void p.then(() => {
      if (this.pendingTable.get(id) === p) this.pendingTable.delete(id);
    });
    return n;
  }

  /** Drops the clean blocks of volume id `id` (tracked drops: killed before their keys' next writes). */
  private dropClean(id: number): number {
    const bda = this.map.bda;
    let n = 0;
    for (let i = 0; i < bda.size; i++) {
      if (bda.isValid(i) && !bda.isDirty(i) && bda.volumeOf(i) === id) {
        this.map.drop(i);
        n++;
      }
    }
    this.logger.warn({ volume: id, dirty: this.map.dirtyBlocks(id), dropped: n }, 'volume blocks dropped but its write-back (dirty) blocks are kept: they are newer than its backing store');
    return n;
  }

  /** Drops every block of volume id `id` (see dropAll). Returns how many were cached. */
  dropVolume(id: number): number {
    for (const rec of this.volumes.values()) if (rec.id === id) return this.dropAll(rec);
    return this.map.dropVolume(id);
  }

  /** Records the backing identity of a quiet volume (saved when it changed), for recovery. */
  recordIdentity(id: number, identity: string): void {
    for (const rec of this.volumes.values()) {
      if (rec.id !== id || rec.identity === identity || !this.active.has(id)) continue;
      rec.identity = identity;
      // Nothing waits for it: an identity recorded late only makes the volume cold after a crash.
      void this.saveTable();
    }
  }

  static async open(o: CacheOptions): Promise<Cache> {
    const logger = o.logger ?? silentLogger;
    const loadFactor = o.loadFactor ?? DEFAULT_LOAD_FACTOR;
    if (!(loadFactor >= MIN_LOAD_FACTOR && loadFactor < 1)) {
      throw new VhostError(`load factor ${loadFactor}: must be in [${MIN_LOAD_FACTOR}, 1)`, 'EINVAL');
    }
    if (o.rewriteDelayMs !== undefined && !(Number.isInteger(o.rewriteDelayMs) && o.rewriteDelayMs >= 0)) {
      throw new VhostError(`rewrite delay ${o.rewriteDelayMs}: must be an integer number of ms >= 0`, 'EINVAL');
    }
    const { fd, bytes, resized, block } = await openDeviceWaiting(o.path, o.size, o.lockWaitMs ?? LOCK_WAIT_MS);
    let logIo: { fd: number; alignment: number } | undefined;
    // The superblock's 4 KiB for the kill marks' writes (KillMarks closes it when stopped).
    let markArea: SyncRegion | undefined;
    try {
      logIo = openLogIo(o.path, fd, o.direct ?? block);
      if (resized) await preallocate(o.engine, fd, bytes, o.path);
      const g = computeGeometry(bytes, o.blockSize ?? 4096, o.segmentSize ?? 512 * 1024);
      const raw = new Uint8Array(SUPERBLOCK_SIZE);
      await o.engine.readv(fd, [raw], 0, true);
      let sb = resized ? null : parseSuperblock(raw, g);
      const place: MetadataPlace =
        o.metadataPath !== undefined
          ? { file: o.metadataPath }
          : { fd, engine: o.engine, offset: g.metadataOffset, bytes: g.metadataBytes };
      const tableCapacity = AddressMap.capacityFor(g.slots, loadFactor);
      let loaded: Awaited<ReturnType<typeof loadMetadata>> = { ok: false, reason: 'cache device formatted' };
      let saved: VolumeTableState | null = null;
      if (sb) {
        loaded = await loadMetadata(place, sb, { geometry: g, tableCapacity });
        saved = await new VolumeTable(o.engine, fd, g.tableOffset, sb.uuid, () => ({ floor: 0, volumes: [], sequence: 0 })).load();
        // Neither: nothing on the device can be interpreted safely.
        if (!loaded.ok && saved === null) sb = null;
      }
      // Segments whose headers may name killed clean entries (kill-marks.ts): kept marked in every
      // superblock written until open has rewritten them.
      const marked = sb ? [...new Set(readMarks(raw))].filter((s) => s < g.segments) : [];
      markArea = o.engine.syncRegion(fd, 0, SUPERBLOCK_SIZE);
      const marks = new KillMarks(markArea, marked);
      const boot = bootIdBytes(o.bootId);
      if (!sb) {
        // A file that had to be resized may have lost blocks: its content is not trusted.
        sb = { uuid: new Uint8Array(randomBytes(16)), generation: 0, boot, cleanFloor: 0 };
        logger.info({ path: o.path, slots: g.slots, segments: g.segments, resized }, 'cache device formatted');
      }
      // After an unclean stop: did the host crash (writes not synced lost) or only the process?
      let hostCrash = false;
      if (!loaded.ok && saved !== null) {
        hostCrash = !sameBytes(sb.boot, boot) || sb.cleanFloor === CLEAN_FLOOR_PENDING;
        if (!hostCrash) {
          try {
            // A write-back error of this device no process saw yet is reported to a new descriptor.
            await o.engine.fdatasync(fd);
          } catch (err) {
            hostCrash = true;
            logger.warn({ path: o.path, err: (err as Error).message }, 'cache device reports a lost write: recovered as after a host crash');
          }
        }
      }
      // From now on the metadata on disk is stale: a crash means recovery from the headers.
      sb = { uuid: sb.uuid, generation: sb.generation + 1, boot, cleanFloor: hostCrash ? CLEAN_FLOOR_PENDING : sb.cleanFloor };
      await o.engine.writev(fd, [marks.onto(superblock(g, sb))], 0);
      await o.engine.fdatasync(fd);
      // Sequence numbers stay increasing across starts: never below microseconds since 1970.
      const clock = Date.now() * 1000;
      let map: CacheMap;
      let sequence = clock;
      let volumes: VolumeRecord[] = [];
      let floor = 0;
      let recovered: Awaited<ReturnType<typeof recoverIndex>> | null = null;
      let cleanDropped = 0;
      const mapOptions = { loadFactor, segmentBlocks: g.blocksPerSegment };
      if (loaded.ok) {
        const st = loaded.state;
        map = new CacheMap(g.slots, mapOptions, st.bda, st.table);
        map.hand = st.hand;
        map.wraps = st.wraps;
        sequence = Math.max(st.sequence, clock);
        volumes = st.volumes;
        floor = st.floor;
        logger.info({ path: o.path, metadata: describePlace(place), blocks: map.map.size }, 'cache warm start');
      } else if (saved !== null) {
        recovered = await recoverIndex({ engine: o.engine, fd, geometry: g, uuid: sb.uuid, floor: saved.floor, volumes: saved.volumes, tableCapacity });
        map = new CacheMap(g.slots, mapOptions, recovered.bda, recovered.index);
        map.hand = recovered.hand;
        sequence = Math.max(recovered.sequence, clock);
        if (hostCrash) {
          // Every clean entry found may be older than its backing store: below the clean floor.
          sb = { ...sb, cleanFloor: sequence + 1 };
          await o.engine.writev(fd, [marks.onto(superblock(g, sb))], 0);
          await o.engine.fdatasync(fd);
        }
        cleanDropped = dropClean(map, recovered.segSeq, sb.cleanFloor, new Set(marked));
        if (hostCrash) logger.warn({ path: o.path, cleanDropped, dirtyKept: map.dirtyTotal }, 'cache recovered after a host crash: clean blocks dropped, write-back blocks kept');
        // Records of ids above what the BDA keys (written by an older version): forgotten, their
        // entries were not recovered and such ids are never assigned again (invariant 4 holds).
        volumes = saved.volumes.filter((v) => v.id < MAX_VOLUMES);
        if (volumes.length < saved.volumes.length) logger.warn({ path: o.path, forgotten: saved.volumes.length - volumes.length }, `volume records forgotten: ${TOO_MANY_VOLUMES}`);
        floor = saved.floor;
        logger.info(
          { path: o.path, reason: loaded.reason, blocks: map.map.size, marked: marked.length, skipped: recovered.skipped, verified: recovered.verified, torn: recovered.torn, rewrite: recovered.rewrite.length, workers: recovered.workers, ms: Math.round(recovered.ms) },
          'cache recovered from the segment headers',
        );
      } else {
        map = new CacheMap(g.slots, mapOptions);
        // Nothing written before this start is ever recovered.
        floor = sequence + 1;
        logger.info({ path: o.path, metadata: describePlace(place), reason: loaded.reason }, 'cache cold start');
      }
      const holder: { cache: Cache | null } = { cache: null };
      const table = new VolumeTable(
        o.engine,
        fd,
        g.tableOffset,
        sb.uuid,
        () => (holder.cache as Cache).tableState(),
        () => (holder.cache as Cache).tableOverflow(),
      );
      if (saved !== null) await table.load();
      const recovery =
        recovered === null
          ? null
          : { entries: recovered.entries, skipped: recovered.skipped, rewritten: recovered.rewrite.length, verified: recovered.verified, torn: recovered.torn, hostCrash, cleanDropped, ms: recovered.ms };
      const synced = recovered === null ? sequence : recovered.mark;
      const cache = new Cache({ o, fd, logIo, g, sb, place, map, sequence, synced, floor, volumes, warm: loaded.ok, table, recovery, marks });
      holder.cache = cache;
      try {
        await table.save();
        // Headers naming entries the index does not hold are rewritten before anything else, and
        // synced before the marks of those segments are cleared.
        const rewrite = new Set([...(recovered?.rewrite ?? []), ...marked]);
        if (rewrite.size > 0) await cache.log.rewrite(rewrite);
        if (cache.log.disabled) throw new VhostError(`${o.path}: cache device write failed at open`, 'EIO');
        marks.clearRecovered(marked);
      } catch (err) {
        cache.closing = true;
        await cache.log.quiesce();
        throw err;
      }
      return cache;
    } catch (err) {
      markArea?.close();
      if (logIo !== undefined && logIo.fd !== fd) fs.closeSync(logIo.fd);
      fs.closeSync(fd);
      throw err;
    }
  }

  /**
   * A new entry in the volume table, with the lowest free id (holding no blocks: its epoch
   * starts after every sequence number used), saved before its first write or insertion.
   */
  private newRecord(name: string, identity: string, sizeBytes: number, maxBytes: number): VolumeRecord {
    const used = new Set([...this.volumes.values()].map((v) => v.id));
    let id = 0;
    while (used.has(id)) id++;
    if (id >= MAX_VOLUMES) throw new VhostError(`${name}: ${TOO_MANY_VOLUMES}`, 'ENOSPC');
    this.map.dropVolume(id);
    const rec = { id, name, identity, sizeBytes, maxBytes, epoch: this.log.sequence + 1 };
    this.volumes.set(name, rec);
    void this.saveTable();
    return rec;
  }

  /**
   * Registers (or re-registers after a restart) a volume by name and returns its id. A volume
   * whose identity or size changed since its blocks were cached loses them.
   */
  registerVolume(name: string, identity: string, sizeBytes: number, opts: VolumeOptions = {}): number {
    if (this.closing) throw new VhostError('cache is closed', 'ESHUTDOWN');
    const tooLarge = volumeTooLarge(sizeBytes, this.blockSize);
    if (tooLarge !== '') throw new VhostError(`volume ${name}: ${tooLarge}`, 'EFBIG');
    const maxBytes = opts.maxBytes ?? 0;
    let rec = this.volumes.get(name);
    if (rec && this.active.has(rec.id)) throw new VhostError(`volume ${name} is already registered`, 'EEXIST');
    if (rec && (rec.identity !== identity || rec.sizeBytes !== sizeBytes)) {
      // Blocks not yet written back belong to the object they were written to: never to
      // another file or image that took the volume's name (they would be destaged into it).
      const dirty = this.map.dirtyBlocks(rec.id);
      if (dirty > 0 && identityObject(rec.identity) !== identityObject(identity)) {
        throw new VhostError(
          `volume ${name}: ${dirty} write-back blocks not yet written back belong to another backing store ` +
            `(${identityObject(rec.identity)}, now ${identityObject(identity)}); put that one back and flush the volume, ` +
            'or discard them (--discard-dirty: their data is lost)',
          'EBUSY',
        );
      }
      rec.identity = identity;
      rec.sizeBytes = sizeBytes;
      const dropped = this.dropAll(rec);
      this.logger.info({ volume: name, dropped }, 'volume identity changed; its cached blocks are dropped');
    }
    if (rec && this.recoveredIds.delete(rec.id) && opts.unflushedWritesMayBeLost === true) {
      const dropped = this.dropAll(rec);
      this.logger.info({ volume: name, dropped }, 'volume may have lost unflushed writes in the crash; its recovered blocks are dropped');
    }
    rec ??= this.newRecord(name, identity, sizeBytes, maxBytes);
    rec.maxBytes = maxBytes;
    this.map.volumeCap[rec.id] = maxBytes > 0 ? Math.max(1, Math.floor(maxBytes / this.blockSize)) : 0;
    this.active.add(rec.id);
    return rec.id;
  }

  /**
   * The operator's way out of registerVolume's EBUSY refusal (serve --discard-dirty, add-volume
   * --discard-dirty): when the unregistered volume `name` holds write-back blocks not written
   * back that belong to another backing object than `identity`'s, they are discarded with all
   * its other blocks (logged, with how many), the record takes the new identity and size, and
   * this resolves once that is durable (the volume table saved: a crash after it never brings
   * them back). Dirty blocks of the same object are newer data of it: never discarded (0).
   * Resolves with how many write-back blocks were discarded.
   */
  async discardOrphanedDirty(name: string, identity: string, sizeBytes: number): Promise<number> {
    if (this.closing) throw new VhostError('cache is closed', 'ESHUTDOWN');
    const rec = this.volumes.get(name);
    if (rec === undefined || this.active.has(rec.id)) return 0;
    const dirty = this.map.dirtyBlocks(rec.id);
    if (dirty === 0 || identityObject(rec.identity) === identityObject(identity)) return 0;
    const old = identityObject(rec.identity);
    rec.identity = identity;
    rec.sizeBytes = sizeBytes;
    const dropped = this.dropEvery(rec);
    await this.pendingTable.get(rec.id);
    this.logger.warn(
      { volume: name, discardedDirty: dirty, dropped, was: old, now: identityObject(identity) },
      `volume ${name}: ${dirty} write-back blocks not written back to ${old} discarded at the operator's request; its data is now that of ${identityObject(identity)}`,
    );
    return dirty;
  }

  /**
   * Registers a user of a shared parent's blocks (shared-keys.ts) and returns the parent's id.
   * `parent` names data that never changes, so its entry (identity = name, size 0) is never
   * dropped for a change; any number of volumes may use it at once. Release with
   * unregisterShared.
   */
  registerShared(parent: string): number {
    if (this.closing) throw new VhostError('cache is closed', 'ESHUTDOWN');
    let rec = this.volumes.get(parent);
    if (rec && rec.identity !== parent) throw new VhostError(`${parent}: a volume of that name exists`, 'EEXIST');
    if (!rec) rec = this.newRecord(parent, parent, 0, 0);
    this.sharedUsers.set(rec.id, (this.sharedUsers.get(rec.id) ?? 0) + 1);
    this.active.add(rec.id);
    return rec.id;
  }

  unregisterShared(id: number): void {
    const n = (this.sharedUsers.get(id) ?? 1) - 1;
    if (n > 0) {
      this.sharedUsers.set(id, n);
      return;
    }
    this.sharedUsers.delete(id);
    this.active.delete(id);
  }

  /**
   * The volume stops using the cache; its blocks stay for a later registration with the same
   * identity: `identity` is its backing store's identity now (after the final flush).
   */
  unregisterVolume(id: number, identity: string): void {
    this.recordIdentity(id, identity);
    this.active.delete(id);
  }

  /** True once a cache-device write error stopped insertion. */
  get disabled(): boolean {
    return this.log.disabled || this.closing;
  }

  /**
   * Looks up blocks first .. first + count - 1 of a volume; copies every hit into `out` at
   * k * blockSize and sets hit[k] = 1 (0 for misses). Device read errors, blocks that fail
   * their CRC-32C check and blocks whose segment was rewritten during the read come back as
   * misses (failed blocks are dropped).
   * Returns the number of hits.
   */
  async readBlocks(volume: number, first: number, count: number, out: Uint8Array, hit: Uint8Array): Promise<number> {
    let hits = await this.readBlocksOnce(volume, first, count, out, hit);
    const bs = this.blockSize;
    for (let k = 0; k < count && hits < count; k++) {
      // A dirty block missed (read error, checksum, segment rewritten meanwhile) must not be
      // served by the backing store, which is older: read again, else fail.
      for (let attempt = 1; hit[k] === 0; attempt++) {
        const idx = this.map.peek(volume, first + k);
        if (idx < 0 || !this.map.bda.isDirty(idx)) break;
        if (attempt > DIRTY_READ_ATTEMPTS) throw new VhostError(`cache: write-back block ${first + k} of volume ${volume} unreadable on the cache device`, 'EIO');
        hits += await this.readBlocksOnce(volume, first + k, 1, out.subarray(k * bs, (k + 1) * bs), hit.subarray(k, k + 1));
      }
    }
    return hits;
  }

  private async readBlocksOnce(volume: number, first: number, count: number, out: Uint8Array, hit: Uint8Array): Promise<number> {
    const bs = this.blockSize;
    const bps = this.geometry.blocksPerSegment;
    const c = this.map.stats(volume);
    c.reads += count;
    hit.fill(0, 0, count);
    // Device runs: consecutive blocks in consecutive slots of one segment: [slot, k, n].
    const runs: number[][] = [];
    let hits = 0;
    for (let k = 0; k < count; k++) {
      const idx = this.map.lookup(volume, first + k);
      if (idx < 0) continue;
      const ram = this.log.ramBlock(idx);
      if (ram) {
        out.set(ram, k * bs);
        hit[k] = 1;
        hits++;
        c.ramHits++;
        c.readHits++;
        continue;
      }
      const r = runs.length > 0 ? runs[runs.length - 1] : undefined;
      if (r && r[0] + r[2] === idx && r[1] + r[2] === k && Math.floor(idx / bps) === Math.floor(r[0] / bps)) r[2]++;
      else runs.push([idx, k, 1]);
    }
    if (runs.length === 0) return hits;
    const done = await Promise.all(
      runs.map(async ([slot, k, n]) => {
        const into = out.subarray(k * bs, (k + n) * bs);
        try {
          if (!(await this.log.readSlots(slot, n, into))) return 0;
        } catch (err) {
          this.deviceReadFailed(err as Error, volume, slot, first + k, n);
          return 0;
        }
        const bad = this.log.checkBlocks(slot, into, n);
        let good = 0;
        for (let j = 0; j < n; j++) {
          if (bad !== null && bad[j] !== 0) {
            this.log.checksumFailed(slot + j, volume, first + k + j);
            continue;
          }
          hit[k + j] = 1;
          good++;
        }
        c.storageHits += good;
        c.readHits += good;
        return good;
      }),
    );
    for (const n of done) hits += n;
    return hits;
  }

  /**
   * Serves bytes offset .. offset + len - 1 of a volume (whole blocks of it only) straight into
   * the scatter list `bufs` (len bytes) when EVERY block they touch is cached:
   *   - returns false when some block is not cached: nothing was copied, no counter changed;
   *   - returns true when every block was in a RAM segment buffer: copied, counted;
   *   - returns false too when a block only partly requested (unaligned start or end) would
   *     come from the device: its CRC-32C can only be checked on the whole block;
   *   - otherwise RAM hits are copied and each run of device hits (consecutive blocks in
   *     consecutive slots of one segment) is read by one Log.readDirect into its part of bufs
   *     and checked against the blocks' CRC-32Cs; returns null and calls done once, later:
   *     done(true) when every run read the blocks its slots held when it was issued and they
   *     check (counted), done(false) when a run failed, did not check or its segment was
   *     rewritten meanwhile: bufs then hold unspecified bytes of this volume's request and the
   *     caller must serve the whole request another way (read and checksum errors are
   *     counted; failed blocks dropped).
   * done is called only for null, never from this call, and must not throw. The common case,
   * whole blocks in one device run, builds no run list and reads into `bufs` as they are.
   */
  readHit(volume: number, offset: number, len: number, bufs: readonly Uint8Array[], done: (ok: boolean) => void): boolean | null {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const count = Math.floor((offset + len - 1) / bs) - first + 1;
    if (this.hitSlots.length < count) this.hitSlots = new Int32Array(count);
    const slots = this.hitSlots;
    for (let k = 0; k < count; k++) {
      const idx = this.map.peek(volume, first + k);
      if (idx < 0) return false;
      slots[k] = idx;
    }
    if (offset % bs !== 0 && this.log.ramBuffer(slots[0]) === null) return false;
    if ((offset + len) % bs !== 0 && this.log.ramBuffer(slots[count - 1]) === null) return false;
    // Served here: one use of each block (a read that goes the way of a miss counts them there).
    for (let k = 0; k < count; k++) this.map.use(slots[k], volume);
    if (this.oneDeviceRun(slots, count) && offset % bs === 0 && len % bs === 0) {
      const r = this.hitFree.pop() ?? this.newDeviceHit();
      r.volume = volume;
      r.slot = slots[0] as number;
      r.first = first;
      r.count = count;
      r.done = done;
      this.log.readDirect(r.slot, bufs, count, volume, first, r.settle);
      return null;
    }
    const c = this.map.stats(volume);
    const g = this.geometry;
    const bps = g.blocksPerSegment;
    const cursor = this.cursor;
    cursor.reset(bufs);
    let runs: DirectRun[] | null = null;
    let run: DirectRun | null = null;
    let ram = 0;
    for (let k = 0; k < count; k++) {
      const slot = slots[k];
      // This block's bytes of the request: [at, at + n) of the block.
      const at = k === 0 ? offset - first * bs : 0;
      const n = Math.min(bs - at, offset + len - (first + k) * bs - at);
      const b = this.log.ramBuffer(slot);
      if (b !== null) {
        cursor.copyIn(b.buf, g.headerSize + (slot % bps) * bs + at, n);
        ram++;
        run = null;
        continue;
      }
      if (run !== null && run.slot + run.blocks === slot && slot % bps !== 0) {
        run.blocks++;
      } else {
        run = { slot, block: first + k, blocks: 1, views: [] };
        (runs ??= []).push(run);
      }
      cursor.views(n, run.views);
    }
    if (runs === null) {
      c.reads += count;
      c.readHits += count;
      c.ramHits += count;
      return true;
    }
    let left = runs.length;
    let good = true;
    for (const r of runs) {
      this.log.readDirect(r.slot, r.views, r.blocks, volume, r.block, (ok, err) => {
        if (err !== null) ok = this.runFailed(err, volume, r.slot, r.block, r.blocks);
        good &&= ok;
        if (--left !== 0) return;
        if (good) {
          c.reads += count;
          c.readHits += count;
          c.ramHits += ram;
          c.storageHits += count - ram;
        }
        done(good);
      });
    }
    return null;
  }

  /** A reusable record of readHit's one-run device read, its callback bound once. */
  private newDeviceHit(): DeviceHit {
    const r = new DeviceHit();
    r.settle = (ok, err) => this.deviceHitSettled(r, ok, err);
    return r;
  }

  private deviceHitSettled(r: DeviceHit, ok: boolean, err: Error | null): void {
    const { volume, slot, first, count, done } = r;
    // Back to the free list before `done`, which may start the next hit with it.
    r.done = unsettledHit;
    this.hitFree.push(r);
    if (err !== null) ok = this.runFailed(err, volume, slot, first, count);
    else if (ok) {
      const c = this.map.stats(volume);
      c.reads += count;
      c.readHits += count;
      c.storageHits += count;
    }
    done(ok);
  }

  /** Whether slots[0 .. count - 1] are consecutive slots of one segment, none in a RAM buffer. */
  private oneDeviceRun(slots: Int32Array, count: number): boolean {
    const s = slots[0];
    if (Math.floor(s / this.geometry.blocksPerSegment) !== Math.floor((s + count - 1) / this.geometry.blocksPerSegment)) return false;
    for (let k = 0; k < count; k++) if (slots[k] !== s + k || this.log.ramBuffer(s + k) !== null) return false;
    return true;
  }

  /** A direct run of readHit failed: counted, its blocks dropped. */
  private runFailed(err: Error, volume: number, slot: number, block: number, blocks: number): false {
    this.deviceReadFailed(err, volume, slot, block, blocks);
    return false;
  }

  private holds(slot: number, volume: number, block: number): boolean {
    const bda = this.map.bda;
    return bda.isValid(slot) && bda.volumeOf(slot) === volume && bda.blockOf(slot) === block;
  }

  /** A cache-device read of slots slot.. (blocks block..) failed: drop those still holding them. */
  private deviceReadFailed(err: Error, volume: number, slot: number, block: number, n: number): void {
    this.log.readErrors++;
    this.logger.warn({ err: err.message, slot, blocks: n }, 'cache device read failed; using the backing store');
    for (let j = 0; j < n; j++) if (this.holds(slot + j, volume, block + j) && !this.map.bda.isDirty(slot + j)) this.map.drop(slot + j);
  }

  /**
   * See Log.insert(); nothing is inserted once closing or disabled. `kind` (InsertKind, not
   * dirty: insertDirty() inserts write-back data): blocks a read missed are placed only if
   * admitted (CacheMap.admit); the others (writes, read-ahead) always.
   */
  insert(volume: number, first: number, data: Uint8Array, count: number, accept: () => boolean, kind: InsertKind = WRITTEN): Promise<number> {
    if (this.disabled) return Promise.resolve(0);
    return this.log.insert(volume, first, data, count, accept, kind);
  }

  /**
   * Inserts write-back blocks first .. first + count - 1 of a volume (dirty: never evicted
   * before markClean). Resolves with the number inserted (count, or 0 once disabled or
   * closing); durable once a commit() asked for afterwards resolves true.
   */
  insertDirty(volume: number, first: number, data: Uint8Array, count: number): Promise<number> {
    if (this.disabled) return Promise.resolve(0);
    return this.log.insert(volume, first, data, count, acceptAll, DIRTY);
  }

  /** Makes every block inserted so far durable (group commit); false after a write error. */
  commit(): Promise<boolean> {
    return this.log.commit();
  }

  /**
   * Dirty slots a destage is about to read and write back: each stays watched until
   * markClean() or until it stops being dirty (dropped: superseded by a newer copy, discarded),
   * so a slot refilled meanwhile is never marked clean by `volume`'s round (a round of the
   * volume that refilled it may watch it again: then only that round's marks count).
   */
  watchDestage(volume: number, slots: readonly number[]): void {
    for (const slot of slots) this.destaging.set(slot, volume);
  }

  /** Stops `volume`'s watch of slots (their destage failed: they stay dirty). */
  unwatch(volume: number, slots: readonly number[]): void {
    for (const slot of slots) if (this.destaging.get(slot) === volume) this.destaging.delete(slot);
  }

  /**
   * Slots `volume`'s round watched whose data the backing store now holds (written and
   * flushed): those still holding it (still watched by that volume) are marked clean (in RAM at once), recorded by header rewrites of their segments
   * started by writeCleanMarks() within CLEAN_MARK_DELAY_MS (batched over the rounds of that
   * period, no fdatasync of their own: durable with the next one, log.ts rewrite); every one
   * stops being watched. Returns how many were marked.
   */
  markClean(volume: number, slots: readonly number[]): number {
    let n = 0;
    for (const slot of slots) {
      if (this.destaging.get(slot) !== volume) continue;
      this.destaging.delete(slot);
      this.map.markClean(slot);
      this.log.cleaned(slot);
      this.cleanSegs.add(Math.floor(slot / this.geometry.blocksPerSegment));
      n++;
    }
    if (this.cleanSegs.size > 0 && this.cleanTimer === null) {
      this.cleanTimer = setTimeout(() => this.writeCleanMarks(), CLEAN_MARK_DELAY_MS);
      this.cleanTimer.unref();
    }
    return n;
  }

  /**
   * Starts the header rewrites of the clean marks waiting for one (markClean; the destager
   * calls it when it has nothing left to do): a background batch, under way within the log's
   * rewrite delay. Not awaited: a lost clean mark only destages the
   * same data again (recovery.ts 9.; the slot is not overwritten before a header recording the
   * mark is durable: log.ts write), and after a write error the rewrite waits for the floor,
   * which waits for the destage.
   */
  writeCleanMarks(): void {
    if (this.cleanTimer !== null) clearTimeout(this.cleanTimer);
    this.cleanTimer = null;
    // Once closing: close() started the last ones, abort() drops them (a crash loses them too).
    if (this.cleanSegs.size === 0 || this.closing) return;
    const segs = this.cleanSegs;
    this.cleanSegs = new Set();
    void this.log.rewrite(segs, false);
  }

  /**
   * Invalidates blocks first .. first + count - 1 of a volume (at once, in RAM). Null when no
   * header entry on the device may name them any more; else a promise that resolves once they
   * are invalid for every recovery (their header rewrites written; synced too where write-back
   * data is involved: Log.killFor) and the volume table durable: the caller issues its backing
   * write only then (recovery.ts, the invariant). Rejects (EIO) when, after a cache-device write
   * error, the device refuses to record that nothing is recoverable (retire): the caller must
   * then fail its write without issuing it.
   */
  invalidate(volume: number, first: number, count: number): Promise<void> | null {
    this.map.invalidateRange(volume, first, count);
    return this.killDropped(volume, first, count);
  }

  /**
   * Makes invalid for every recovery each header entry that may still name blocks first ..
   * first + count - 1 of a volume outside the map (dropped.ts), before a backing write of them (a
   * write, or a destage: destage.ts, always durably: rewrite + fdatasync). Null when there is
   * none; never rejects.
   */
  killDropped(volume: number, first: number, count: number, destage = false): Promise<void> | null {
    // After a write error no header changes any more: the dirty entries being destaged outrank
    // every older one of their keys (recovery.ts 8.), and the floor waits for the destage.
    if (destage && this.log.disabled) return null;
    const kill = this.log.killFor(volume, first, count, destage);
    const pending = this.pendingTable.get(volume);
    if (pending === undefined) return kill;
    return Promise.all([pending, kill]).then(() => this.log.killFor(volume, first, count, destage) ?? undefined);
  }

  /** Dirty blocks by volume name (volumes holding some). */
  private dirtyByName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const rec of this.volumes.values()) {
      const n = this.map.dirtyBlocks(rec.id);
      if (n > 0) out[rec.name] = n;
    }
    return out;
  }

  /** Registers what destages a volume's dirty blocks (see raiseFloor); returns its removal. */
  addDrainer(drain: () => Promise<void>): () => void {
    this.drainers.add(drain);
    return () => void this.drainers.delete(drain);
  }

  /** A volume's dirty blocks and the age of its oldest one (ms). */
  private dirtyOf(id: number): { blocks: number; oldestMs: number } {
    const m = this.map.dirty.get(id);
    if (m === undefined || m.size === 0) return { blocks: 0, oldestMs: 0 };
    const oldest = m.values().next().value as number;
    return { blocks: m.size, oldestMs: performance.now() - oldest };
  }

  stats(): CacheStats {
    const total = newCounters();
    const volumes: Record<string, VolumeStats> = {};
    for (const v of this.volumes.values()) {
      const c = this.map.stats(v.id);
      addCounters(total, c);
      volumes[v.name] = withRate(c, this.map.volumeBlocks[v.id], this.dirtyOf(v.id));
    }
    const log = this.log;
    return {
      ...withRate(total, this.map.map.size, { blocks: this.map.dirtyTotal, oldestMs: Math.max(0, ...[...this.volumes.values()].map((v) => this.dirtyOf(v.id).oldestMs)) }),
      commits: log.commits,
      commitLatencyUs: log.commitLatency.meanUs,
      wraps: this.map.wraps,
      segmentsSkipped: this.map.segmentsSkipped,
      segmentsCleaned: this.map.segmentsCleaned,
      blocksCarried: this.map.blocksCarried,
      decayPeriod: this.map.decayPeriod,
      admitShare: this.map.admitShare,
      emptySlots: this.map.slots - this.map.map.size,
      segmentReads: log.segmentReads,
      segmentWrites: log.segmentWrites,
      deviceWriteBytes: log.deviceWriteBytes,
      headerRewrites: log.headerRewrites,
      rewriteBatches: log.rewriteBatches,
      killsMarked: this.marks.kills,
      markedSegments: this.marks.size,
      fdatasyncs: log.fdatasyncs,
      readLatencyUs: log.readLatency.meanUs,
      segmentReadLatencyUs: log.segmentReadLatency.meanUs,
      segmentWriteLatencyUs: log.segmentWriteLatency.meanUs,
      readErrors: log.readErrors,
      writeErrors: log.writeErrors,
      disabled: log.disabled,
      insertsDropped: log.insertsDropped,
      volumes,
    };
  }

  /** Drains insertions, writes buffered segments, saves the metadata, closes the device. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.writeCleanMarks();
    this.closing = true;
    let ok = await this.log.flush();
    await this.log.quiesce();
    if (ok && !this.log.disabled) ok = await this.table.save().then(() => true, (err: Error) => (this.log.writeFailed(`cache volume table write failed: ${err.message}`), false));
    try {
      if (ok && !this.log.disabled) {
        await saveMetadata(
          this.metadataPlace,
          {
            geometry: this.geometry,
            tableCapacity: this.map.map.capacity,
            hand: this.map.hand,
            wraps: this.map.wraps,
            sequence: this.log.sequence,
            floor: this.floor,
            volumes: [...this.volumes.values()],
            bda: this.map.bda,
            table: this.map.map.table,
          },
          { uuid: this.uuid, generation: this.generation },
        ).catch((err: Error) => this.logger.warn({ err: err.message }, 'cache metadata not saved (next start is cold)'));
      } else {
        this.logger.warn({ path: this.path }, 'cache closed after errors: no metadata saved (next start is cold)');
      }
    } finally {
      this.closed = true;
      this.closeFds();
    }
  }

  /** Waits until no insertion, segment or header write, or volume table save is in flight. */
  async quiesce(): Promise<void> {
    await this.table.idle();
    await this.log.quiesce();
  }

  /** Stops like a crash: waits for I/O in flight, writes nothing more, saves no metadata. */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    // A crash loses the clean marks not written yet.
    if (this.cleanTimer !== null) clearTimeout(this.cleanTimer);
    this.cleanTimer = null;
    await this.log.quiesce();
    await this.table.idle();
    this.closed = true;
    this.closeFds();
  }

  private closeFds(): void {
    this.marks.stop();
    if (this.logFd !== this.fd) fs.closeSync(this.logFd);
    native.unlock(this.fd);
    fs.closeSync(this.fd);
  }
}
