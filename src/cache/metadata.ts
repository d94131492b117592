/**
 * Warm-restart metadata: the cache index saved at a clean close, trusted at the next open only
 * if nothing can have changed since.
 *
 * File layout (little endian; the typed arrays are written as they sit in memory, which the
 * header records as little endian; a big-endian host refuses the file):
 *
 *   0   u32 magic 0x4d434256 ('VBCM')
 *   4   u32 format version (1)
 *   8   u32 1 (little-endian arrays)
 *   12  u32 J = byte length of the JSON document
 *   16  f64 total file length in bytes
 *   24  40 bytes zero
 *   64  JSON (utf-8): MetadataDoc (geometry, device uuid, table capacity, hand, wraps,
 *       sequence, volume table), zero-padded to a multiple of 8
 *   ..  keyLo  Uint32Array(slots)    BDA (bda.ts)
 *   ..  keyHi  Uint32Array(slots)
 *   ..  flags  Uint8Array(slots), zero-padded to a multiple of 4
 *   ..  table  Int32Array(capacity)  address map (address-map.ts)
 *   end-4: u32 CRC-32 (zlib) of every byte before it
 *
 * Protocol against stale metadata: save() writes `<path>.tmp`, fsyncs it, renames it over
 * `path` and fsyncs the directory, after the cache device was flushed and fdatasync'ed. The
 * reader consumes the file: Cache.open() loads it, then removes it and fsyncs the directory
 * before the cache can change, so after a crash there is no metadata and the cache starts cold.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { BlockDescriptorArray } from './bda';
import type { Geometry } from './segment';

export const METADATA_MAGIC = 0x4d434256;
export const METADATA_VERSION = 1;
const FIXED = 64;

export interface VolumeRecord {
  id: number;
  name: string;
  identity: string;
  sizeBytes: number;
  /** Cap in bytes, 0 = none. */
  maxBytes: number;
}

export interface MetadataDoc {
  geometry: Geometry;
  /** Hex uuid of the cache device (superblock). */
  deviceUuid: string;
  tableCapacity: number;
  hand: number;
  wraps: number;
  sequence: number;
  volumes: VolumeRecord[];
}

export interface MetadataState extends MetadataDoc {
  bda: BlockDescriptorArray;
  table: Int32Array;
}

const pad = (n: number, a: number) => Math.ceil(n / a) * a;

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

/** Writes the metadata durably (temp file, fsync, rename, fsync of the directory). */
export async function saveMetadata(file: string, st: MetadataState): Promise<void> {
  if (os.endianness() !== 'LE') throw new Error('cache metadata needs a little-endian host');
  const json = Buffer.from(JSON.stringify(toDoc(st)), 'utf8');
  const slots = st.bda.size;
  const jsonEnd = pad(FIXED + json.length, 8);
  const flagsEnd = jsonEnd + 8 * slots + pad(slots, 4);
  const total = flagsEnd + st.table.byteLength + 4;
  const head = new Uint8Array(jsonEnd);
  const dv = new DataView(head.buffer);
  dv.setUint32(0, METADATA_MAGIC, true);
  dv.setUint32(4, METADATA_VERSION, true);
  dv.setUint32(8, 1, true);
  dv.setUint32(12, json.length, true);
  dv.setFloat64(16, total, true);
  head.set(json, FIXED);
  const flagPad = new Uint8Array(pad(slots, 4) - slots);
  const parts = [head, bytes(st.bda.keyLo), bytes(st.bda.keyHi), st.bda.flags, flagPad, bytes(st.table)];
  let crc = 0;
  for (const p of parts) crc = crc32(p, crc);
  const trailer = new Uint8Array(4);
  new DataView(trailer.buffer).setUint32(0, crc, true);
  parts.push(trailer);

  const tmp = `${file}.tmp`;
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
  await fsp.rename(tmp, file);
  await fsyncDir(path.dirname(path.resolve(file)));
}

function toDoc(st: MetadataDoc): MetadataDoc {
  return {
    geometry: st.geometry,
    deviceUuid: st.deviceUuid,
    tableCapacity: st.tableCapacity,
    hand: st.hand,
    wraps: st.wraps,
    sequence: st.sequence,
    volumes: st.volumes,
  };
}

async function readFully(h: fsp.FileHandle, into: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const { bytesRead } = await h.read(into, done, into.byteLength - done, pos + done);
    if (bytesRead === 0) throw new Error('metadata file is truncated');
    done += bytesRead;
  }
}

export type LoadResult = { ok: true; state: MetadataState } | { ok: false; reason: string };

/**
 * Reads and checks metadata. `expect` gives the geometry, device uuid and table capacity of the
 * cache being opened; anything else is refused (the caller starts cold). Does not remove the file.
 */
export async function loadMetadata(
  file: string,
  expect: { geometry: Geometry; deviceUuid: string; tableCapacity: number },
): Promise<LoadResult> {
  let h: fsp.FileHandle;
  try {
    h = await fsp.open(file, 'r');
  } catch (err) {
    return { ok: false, reason: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no metadata' : (err as Error).message };
  }
  try {
    const size = (await h.stat()).size;
    if (size < FIXED + 4) return { ok: false, reason: 'metadata file too short' };
    const fixed = new Uint8Array(FIXED);
    await readFully(h, fixed, 0);
    const dv = new DataView(fixed.buffer);
    if (dv.getUint32(0, true) !== METADATA_MAGIC) return { ok: false, reason: 'bad magic' };
    if (dv.getUint32(4, true) !== METADATA_VERSION) return { ok: false, reason: 'unknown version' };
    if (dv.getUint32(8, true) !== 1 || os.endianness() !== 'LE') return { ok: false, reason: 'endianness' };
    if (dv.getFloat64(16, true) !== size) return { ok: false, reason: 'length mismatch' };
    const jsonLen = dv.getUint32(12, true);
    const jsonEnd = pad(FIXED + jsonLen, 8);
    if (jsonEnd > size) return { ok: false, reason: 'length mismatch' };
    const head = new Uint8Array(jsonEnd);
    head.set(fixed);
    await readFully(h, head.subarray(FIXED), FIXED);
    const doc = JSON.parse(Buffer.from(head.subarray(FIXED, FIXED + jsonLen)).toString('utf8')) as MetadataDoc;
    if (JSON.stringify(doc.geometry) !== JSON.stringify(expect.geometry)) return { ok: false, reason: 'geometry changed' };
    if (doc.deviceUuid !== expect.deviceUuid) return { ok: false, reason: 'cache device changed' };
    if (doc.tableCapacity !== expect.tableCapacity) return { ok: false, reason: 'address map size changed' };
    const slots = doc.geometry.slots;
    const total = jsonEnd + 8 * slots + pad(slots, 4) + 4 * doc.tableCapacity + 4;
    if (total !== size) return { ok: false, reason: 'length mismatch' };
    const bda = new BlockDescriptorArray(slots);
    const table = new Int32Array(doc.tableCapacity);
    const flagPad = new Uint8Array(pad(slots, 4) - slots);
    const trailer = new Uint8Array(4);
    const parts = [bytes(bda.keyLo), bytes(bda.keyHi), bda.flags, flagPad, bytes(table), trailer];
    let pos = jsonEnd;
    let crc = crc32(head);
    for (const p of parts) {
      await readFully(h, p, pos);
      pos += p.byteLength;
      if (p !== trailer) crc = crc32(p, crc);
    }
    if (new DataView(trailer.buffer).getUint32(0, true) !== crc) return { ok: false, reason: 'checksum mismatch' };
    return { ok: true, state: { ...doc, bda, table } };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  } finally {
    await h.close();
  }
}

/** Removes the metadata file (if any) durably: after this a crash leaves no metadata. */
export async function discardMetadata(file: string): Promise<void> {
  try {
    await fsp.unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await fsyncDir(path.dirname(path.resolve(file)));
}
