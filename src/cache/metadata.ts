/**
 * Warm-restart metadata: the cache index saved at a clean close, trusted at the next open only
 * if it is bound to this very state of the cache device.
 *
 * Where: the metadata area of the cache device (after the superblock, sized by
 * metadataAreaBytes() for the device's slot count), or a file when the operator names one
 * (--cache-metadata). Both hold the same bytes.
 *
 * Layout (little endian; the typed arrays are written as they sit in memory, which the header
 * records as little endian; a big-endian host refuses the metadata):
 *
 *   0   u32 magic 0x4d434256 ('VBCM')
 *   4   u32 format version (4)
 *   8   u32 1 (little-endian arrays)
 *   12  u32 J = byte length of the JSON document (at most METADATA_JSON_MAX)
 *   16  f64 L = total length in bytes
 *   24  16 bytes device uuid (superblock)
 *   40  u32+u32 generation (low, high): the superblock generation this metadata belongs to
 *   48  12 bytes zero
 *   60  u32 CRC-32C of the L bytes with this field zero
 *   64  JSON (utf-8): MetadataDoc (geometry, table capacity, hand, wraps, sequence, volume
 *       table), zero-padded to a multiple of 8
 *   ..  keyLo  Uint32Array(slots)    BDA (bda.ts)
 *   ..  crc    Uint32Array(slots)
 *   ..  keyHi  Uint8Array(slots)
 *   ..  flags  Uint8Array(slots), zero-padded to a multiple of 4
 *   ..  table  Int32Array(capacity)  address map (address-map.ts: slot and displacement bits)
 *
 * Version 4 (40-bit BDA keys, Robin Hood address map entries) replaced 3 (64-bit keys, plain
 * slot entries): a version 3 copy is never read, since a version 3 device is formatted at open
 * (format 4 also added the durable mark to the segment headers: segment.ts, recovery.ts 10.).
 *
 * Binding (cache.ts): the superblock holds the device uuid and a generation that is bumped
 * (and made durable) at every open, before the cache can change. close() writes the metadata
 * with the current generation after every segment is written and fdatasync'ed. A metadata copy
 * is accepted only when its uuid and generation equal the superblock's: an unclean stop, an old
 * copy, a file from another run or another device all carry another generation or uuid.
 * The volume records' `identity` is opaque here (compared by the cache for equality only).
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { IoEngine } from '../io/io-engine';
import { native } from '../native/binding';
import { AddressMap, MIN_LOAD_FACTOR } from './address-map';
import { BlockDescriptorArray } from './bda';
import type { Geometry } from './segment';

export const METADATA_MAGIC = 0x4d434256;
export const METADATA_VERSION = 4;
/** Room for the JSON document (the volume table) in the metadata area. */
export const METADATA_JSON_MAX = 1024 * 1024;
const HEADER = 64;
const CRC_AT = 60;

const pad = (n: number, a: number) => Math.ceil(n / a) * a;

/** Bytes of the arrays after the JSON for `slots` slots and an address map of `capacity`. */
function arrayBytes(slots: number, capacity: number): number {
  return 8 * slots + pad(2 * slots, 4) + 4 * capacity;
}

/**
 * Size of the on-device metadata area for a cache of `slots` slots: the header, the largest
 * JSON document, 13 bytes per slot and the address map at the lowest load factor, in whole
 * 4 KiB. 13 bytes per slot was version 3's BDA (version 4 needs 10): the area is part of the
 * device geometry, so it keeps its size and devices formatted before keep their layout.
 */
export function metadataAreaBytes(slots: number): number {
  return pad(HEADER + METADATA_JSON_MAX + 12 * slots + pad(slots, 4) + 4 * AddressMap.capacityFor(slots, MIN_LOAD_FACTOR), 4096);
}

export interface VolumeRecord {
  id: number;
  name: string;
  /** Opaque: the backing store's identity, compared for equality only. */
  identity: string;
  sizeBytes: number;
  /** Cap in bytes, 0 = none. */
  maxBytes: number;
  /**
   * Sequence number from which segment header entries of this id hold this volume's current
   * blocks (volume-table.ts): set when the id is assigned and whenever all its blocks are dropped.
   */
  epoch: number;
}

export interface MetadataDoc {
  geometry: Geometry;
  tableCapacity: number;
  hand: number;
  wraps: number;
  sequence: number;
  /** Header sectors sealed below this sequence number are never recovered (volume-table.ts). */
  floor: number;
  volumes: VolumeRecord[];
}

export interface MetadataState extends MetadataDoc {
  bda: BlockDescriptorArray;
  table: Int32Array;
}

/** What the metadata must be bound to: the superblock's uuid and current generation. */
export interface MetadataBinding {
  uuid: Uint8Array;
  generation: number;
}

/** The metadata area of a cache device, or a file. */
export type MetadataPlace = { file: string } | { fd: number; engine: IoEngine; offset: number; bytes: number };

export function describePlace(p: MetadataPlace): string {
  return 'file' in p ? p.file : `cache device metadata area (${p.bytes} bytes at ${p.offset})`;
}

function bytes(a: Uint32Array | Int32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * Writes the metadata durably: into the device area (one write, fdatasync) or a file (temp
 * file, fsync, rename, fsync of the directory). Throws when it does not fit the area.
 */
export async function saveMetadata(place: MetadataPlace, st: MetadataState, bind: MetadataBinding): Promise<void> {
  if (os.endianness() !== 'LE') throw new Error('cache metadata needs a little-endian host');
  const json = Buffer.from(JSON.stringify(toDoc(st)), 'utf8');
  if (json.length > METADATA_JSON_MAX) throw new Error(`volume table of ${json.length} bytes exceeds the metadata area`);
  const slots = st.bda.size;
  const jsonEnd = pad(HEADER + json.length, 8);
  const total = jsonEnd + arrayBytes(slots, st.table.length);
  if ('bytes' in place && total > place.bytes) throw new Error(`metadata of ${total} bytes exceeds the ${place.bytes}-byte area`);
  const head = new Uint8Array(jsonEnd);
  const dv = new DataView(head.buffer);
  dv.setUint32(0, METADATA_MAGIC, true);
  dv.setUint32(4, METADATA_VERSION, true);
  dv.setUint32(8, 1, true);
  dv.setUint32(12, json.length, true);
  dv.setFloat64(16, total, true);
  head.set(bind.uuid, 24);
  dv.setUint32(40, bind.generation >>> 0, true);
  dv.setUint32(44, Math.floor(bind.generation / 2 ** 32), true);
  head.set(json, HEADER);
  const flagPad = new Uint8Array(pad(2 * slots, 4) - 2 * slots);
  const parts = [head, bytes(st.bda.keyLo), bytes(st.bda.crc), st.bda.keyHi, st.bda.flags, flagPad, bytes(st.table)];
  let crc = 0;
  for (const p of parts) crc = native.crc32c(p, crc);
  dv.setUint32(CRC_AT, crc, true);

  if ('fd' in place) {
    await place.engine.writev(place.fd, parts, place.offset);
    await place.engine.fdatasync(place.fd);
    return;
  }
  const tmp = `${place.file}.tmp`;
  const h = await fsp.open(tmp, 'w', 0o600);
  try {
    let pos = 0;
    for (const p of parts) {
      let done = 0;
      while (done < p.byteLength) {
        const { bytesWritten } = await h.write(p, done, p.byteLength - done, pos + done);
        done += bytesWritten;
      }
      pos += p.byteLength;
    }
    await h.sync();
  } finally {
    await h.close();
  }
  await fsp.rename(tmp, place.file);
  await fsyncDir(path.dirname(path.resolve(place.file)));
}

function toDoc(st: MetadataDoc): MetadataDoc {
  return {
    geometry: st.geometry,
    tableCapacity: st.tableCapacity,
    hand: st.hand,
    wraps: st.wraps,
    sequence: st.sequence,
    floor: st.floor,
    volumes: st.volumes,
  };
}

/** Exact reads of the metadata bytes; `size` = bytes available. */
interface Reader {
  size: number;
  read(into: Uint8Array, pos: number): Promise<void>;
  close(): Promise<void>;
}

async function openReader(place: MetadataPlace): Promise<Reader | null> {
  if ('fd' in place) {
    return {
      size: place.bytes,
      read: (into, pos) => place.engine.readv(place.fd, [into], place.offset + pos, true),
      close: async () => {},
    };
  }
  let h: fsp.FileHandle;
  try {
    h = await fsp.open(place.file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return {
    size: (await h.stat()).size,
    async read(into, pos) {
      let done = 0;
      while (done < into.byteLength) {
        const { bytesRead } = await h.read(into, done, into.byteLength - done, pos + done);
        if (bytesRead === 0) throw new Error('metadata file is truncated');
        done += bytesRead;
      }
    },
    close: () => h.close(),
  };
}

export type LoadResult = { ok: true; state: MetadataState } | { ok: false; reason: string };

/**
 * Reads and checks metadata. It is accepted only when bound to `bind` (uuid and generation)
 * and of the geometry and table capacity of the cache being opened; anything else is refused
 * with a reason (the caller starts cold).
 */
export async function loadMetadata(
  place: MetadataPlace,
  bind: MetadataBinding,
  expect: { geometry: Geometry; tableCapacity: number },
): Promise<LoadResult> {
  let r: Reader | null;
  try {
    r = await openReader(place);
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
  if (r === null) return { ok: false, reason: 'no metadata' };
  try {
    if (r.size < HEADER) return { ok: false, reason: 'metadata too short' };
    const fixed = new Uint8Array(HEADER);
    await r.read(fixed, 0);
    const dv = new DataView(fixed.buffer);
    if (dv.getUint32(0, true) !== METADATA_MAGIC) return { ok: false, reason: 'no metadata (bad magic)' };
    if (dv.getUint32(4, true) !== METADATA_VERSION) return { ok: false, reason: 'unknown metadata version' };
    if (dv.getUint32(8, true) !== 1 || os.endianness() !== 'LE') return { ok: false, reason: 'endianness' };
    for (let i = 0; i < 16; i++) if (fixed[24 + i] !== bind.uuid[i]) return { ok: false, reason: 'metadata of another cache device' };
    const generation = dv.getUint32(40, true) + dv.getUint32(44, true) * 2 ** 32;
    if (generation !== bind.generation) {
      return { ok: false, reason: `stale metadata (generation ${generation}, device at ${bind.generation})` };
    }
    const total = dv.getFloat64(16, true);
    const jsonLen = dv.getUint32(12, true);
    if (jsonLen > METADATA_JSON_MAX || !Number.isSafeInteger(total) || total > r.size) return { ok: false, reason: 'length mismatch' };
    const jsonEnd = pad(HEADER + jsonLen, 8);
    if (jsonEnd > total) return { ok: false, reason: 'length mismatch' };
    const head = new Uint8Array(jsonEnd);
    head.set(fixed);
    await r.read(head.subarray(HEADER), HEADER);
    const doc = JSON.parse(Buffer.from(head.subarray(HEADER, HEADER + jsonLen)).toString('utf8')) as MetadataDoc;
    if (JSON.stringify(doc.geometry) !== JSON.stringify(expect.geometry)) return { ok: false, reason: 'geometry changed' };
    if (doc.tableCapacity !== expect.tableCapacity) return { ok: false, reason: 'address map size changed' };
    const slots = doc.geometry.slots;
    if (jsonEnd + arrayBytes(slots, doc.tableCapacity) !== total) return { ok: false, reason: 'length mismatch' };
    const bda = new BlockDescriptorArray(slots);
    const table = new Int32Array(doc.tableCapacity);
    const flagPad = new Uint8Array(pad(2 * slots, 4) - 2 * slots);
    const parts = [bytes(bda.keyLo), bytes(bda.crc), bda.keyHi, bda.flags, flagPad, bytes(table)];
    const stored = dv.getUint32(CRC_AT, true);
    new DataView(head.buffer).setUint32(CRC_AT, 0, true);
    let crc = native.crc32c(head, 0);
    let pos = jsonEnd;
    for (const p of parts) {
      await r.read(p, pos);
      pos += p.byteLength;
      crc = native.crc32c(p, crc);
    }
    if (crc !== stored) return { ok: false, reason: 'checksum mismatch' };
    return { ok: true, state: { ...doc, bda, table } };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  } finally {
    await r.close();
  }
}
