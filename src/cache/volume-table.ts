/**
 * The durable volume table: which volume id means which volume (name, backing identity, size)
 * and since when, kept on the cache device at every change, so that a start after a crash
 * (recovery.ts) can tell which segment header entries still belong to whom.
 *
 * Area (device offset Geometry.tableOffset, VOLUME_TABLE_AREA bytes): two copies of
 * VOLUME_TABLE_COPY (128 KiB) bytes, room for ~600 volume records. A table that does not fit is
 * saved without its records and with the floor above every sequence number used: nothing is
 * recovered after a crash (cold, never stale), logged by the caller once. A save writes the copy the previous save did not (counter % 2) and
 * fdatasyncs, so a crash in the middle of a save leaves the other, complete copy; a load takes
 * the intact copy of this device (uuid) with the higher counter. Copy layout (little endian):
 *   0  u32 magic 0x54434256 ('VBCT')     4  u32 version 4
 *   8  u32 J = JSON length (<= VOLUME_TABLE_COPY - 64)   12 u32 zero
 *   16 f64 save counter                   24 16 bytes device uuid
 *   40 20 bytes zero                      60 u32 CRC-32C of bytes [0, 64 + J) with this field zero
 *   64 JSON: { floor, volumes: VolumeRecord[] }
 *
 * `floor`: segment header sectors sealed with a lower sequence number are not trusted (set at a
 * cold start and when a cache-device write fails: nothing written before is recovered).
 * A record's `epoch`: the sequence number from which its id holds this volume's current data
 * (set when the id is assigned, and raised whenever all of the volume's blocks are dropped):
 * entries of that id sealed before it are not recovered.
 *
 * Saves run one at a time. A save asked for while one runs waits for the next save, which starts
 * once the running one is over and reads the state then (group commit: every save asked for
 * meanwhile shares it): a save resolves only once a snapshot taken after it was asked for is
 * durable (never on a save already running, whose snapshot may predate the change its caller
 * made). A failed save rejects its waiters and does not advance the save counter: the next save
 * writes the same copy again, so the other copy still holds the last durable save.
 */
import type { IoEngine } from '../io/io-engine';
import { native } from '../native/binding';
import type { VolumeRecord } from './metadata';

export const VOLUME_TABLE_MAGIC = 0x54434256;
export const VOLUME_TABLE_VERSION = 4;
const HEADER = 64;
const CRC_AT = 60;
/** Bytes of one copy of the table. */
export const VOLUME_TABLE_COPY = 128 * 1024;
const JSON_MAX = VOLUME_TABLE_COPY - HEADER;
/** Bytes of the volume table area (two copies). */
export const VOLUME_TABLE_AREA = 2 * VOLUME_TABLE_COPY;

export interface VolumeTableState {
  floor: number;
  volumes: VolumeRecord[];
}

/** What the cache hands to a save: the table, and the last sequence number used. */
export interface VolumeTableSnapshot extends VolumeTableState {
  sequence: number;
}

export class VolumeTable {
  /** Successful saves so far (the next one goes to copy counter % 2). */
  private counter = 0;
  /** The save writing now (its snapshot taken), and the one that starts after it. */
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(
    private readonly engine: IoEngine,
    private readonly fd: number,
    private readonly offset: number,
    private readonly uuid: Uint8Array,
    /** The state to save, read when a save starts. */
    private readonly snapshot: () => VolumeTableSnapshot,
    /** Called when a table too large for its copy is saved without its records. */
    private readonly onOverflow: () => void = () => {},
  ) {}

  /** The newest intact copy of this device, or null (sets the counter after it). */
  async load(): Promise<VolumeTableState | null> {
    let best: { counter: number; state: VolumeTableState } | null = null;
    for (let c = 0; c < 2; c++) {
      const got = await this.readCopy(c).catch(() => null);
      if (got !== null && (best === null || got.counter > best.counter)) best = got;
    }
    if (best === null) return null;
    this.counter = best.counter + 1;
    return best.state;
  }

  private async readCopy(c: number): Promise<{ counter: number; state: VolumeTableState } | null> {
    const head = new Uint8Array(HEADER);
    const at = this.offset + c * VOLUME_TABLE_COPY;
    await this.engine.readv(this.fd, [head], at, true);
    const dv = new DataView(head.buffer);
    if (dv.getUint32(0, true) !== VOLUME_TABLE_MAGIC || dv.getUint32(4, true) !== VOLUME_TABLE_VERSION) return null;
    const len = dv.getUint32(8, true);
    if (len > JSON_MAX) return null;
    for (let i = 0; i < 16; i++) if (head[24 + i] !== this.uuid[i]) return null;
    const json = new Uint8Array(len);
    await this.engine.readv(this.fd, [json], at + HEADER, true);
    const stored = dv.getUint32(CRC_AT, true);
    dv.setUint32(CRC_AT, 0, true);
    if (native.crc32c(json, native.crc32c(head)) !== stored) return null;
    const state = JSON.parse(Buffer.from(json).toString('utf8')) as VolumeTableState;
    return { counter: dv.getFloat64(16, true), state };
  }

  /** Saves the state durably (see the file comment); resolves once it is on the device. */
  save(): Promise<void> {
    if (this.next !== null) return this.next;
    if (this.running === null) return this.start();
    const next = this.running.then(
      () => undefined,
      () => undefined,
    ).then(() => {
      this.next = null;
      return this.start();
    });
    this.next = next;
    return next;
  }

  /** Starts a save now (the snapshot is read synchronously by write()). */
  private start(): Promise<void> {
    const p = this.write().finally(() => {
      if (this.running === p) this.running = null;
    });
    this.running = p;
    return p;
  }

  /** Waits for the saves in flight (their failures included). */
  async idle(): Promise<void> {
    while (this.running !== null || this.next !== null) await Promise.allSettled([this.running, this.next]);
  }

  private async write(): Promise<void> {
    const { floor, volumes, sequence } = this.snapshot();
    let json = Buffer.from(JSON.stringify({ floor, volumes }), 'utf8');
    if (json.length > JSON_MAX) {
      this.onOverflow();
      json = Buffer.from(JSON.stringify({ floor: Math.max(floor, sequence + 1), volumes: [] }), 'utf8');
    }
    const buf = new Uint8Array(Math.ceil((HEADER + json.length) / 4096) * 4096);
    const dv = new DataView(buf.buffer);
    const counter = this.counter;
    dv.setUint32(0, VOLUME_TABLE_MAGIC, true);
    dv.setUint32(4, VOLUME_TABLE_VERSION, true);
    dv.setUint32(8, json.length, true);
    dv.setFloat64(16, counter, true);
    buf.set(this.uuid, 24);
    buf.set(json, HEADER);
    dv.setUint32(CRC_AT, native.crc32c(buf.subarray(0, HEADER + json.length)), true);
    await this.engine.writev(this.fd, [buf], this.offset + (counter % 2) * VOLUME_TABLE_COPY);
    await this.engine.fdatasync(this.fd);
    this.counter = counter + 1;
  }
}
