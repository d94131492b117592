/**
 * Recovery (recovery.ts) on 0 to 3 worker threads against a simple model of its rules, on
 * seeded random devices (test/support/header-device.ts) of 4,400 segments: more header batches
 * than the ring holds (the main thread waits for slots), an address map of 3 ranges of homes
 * (entries spilling from one range into the next are placed after), keys named by several
 * headers (the newer copy wins: the higher seal, a superseded entry ranked by its age, or below
 * every other without one), torn headers (older sectors:
 * only their dirty entries), corrupt sectors, headers below the floor, entries before their
 * volume's epoch, of an unknown volume or past a volume's end, and dirty entries sealed above
 * the durable mark whose data did or did not land. The model reads the raw header bytes
 * itself (DataView, one CRC-32C per sector) and decides per key with a Map; every count, the
 * BDA, the address map (layout checked) and the segments to rewrite must equal it, whatever
 * the threads.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { AddressMap } from '../../src/cache/address-map';
import { BlockDescriptorArray, FLAG_DIRTY, FLAG_SHADOW, FLAG_VALID } from '../../src/cache/bda';
import type { VolumeRecord } from '../../src/cache/metadata';
import { recoverIndex, type Recovered } from '../../src/cache/recovery';
import { READ_BATCH, RING } from '../../src/cache/recovery-scan';
import { computeGeometry, deviceBytesFor, ENTRIES_PER_SECTOR, type Geometry, HEADER_SECTOR, sealHeader, segmentOffset } from '../../src/cache/segment';
import type { IoEngine } from '../../src/io/io-engine';
import { native } from '../../src/native/binding';
import { VhostError } from '../../src/native/errors';
import { HeaderDevice } from '../support/header-device';
import { checkTable, rng } from './helpers';

const BS = 4096;
const BPS = 32;
const SEGMENTS = 4400;
const uuid = Uint8Array.from({ length: 16 }, (_, i) => i * 7 + 1);

interface Image {
  g: Geometry;
  dev: HeaderDevice;
  floor: number;
  volumes: VolumeRecord[];
}

/** A random device (see the file comment). */
function randomImage(seed: number): Image {
  const r = rng(seed);
  const g = computeGeometry(deviceBytesFor(SEGMENTS, BS, BPS * BS), BS, BPS * BS);
  const dev = new HeaderDevice(g);
  const bda = new BlockDescriptorArray(g.slots);
  // Sequence numbers: distinct, in random segment order; the floor and the epoch of volume 1
  // fall inside their range, and so does the durable mark of most headers.
  const base = 5_000_000;
  const seqs = Array.from({ length: SEGMENTS }, (_, i) => base + 3 * i);
  for (let i = seqs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [seqs[i], seqs[j]] = [seqs[j], seqs[i]];
  }
  const floor = base + 3 * Math.floor(SEGMENTS * 0.05);
  const mark = base + 3 * Math.floor(SEGMENTS * 0.8);
  const volumes: VolumeRecord[] = [
    { id: 0, name: 'a', identity: 'a', sizeBytes: 2 ** 40, maxBytes: 0, epoch: 0 },
    { id: 1, name: 'b', identity: 'b', sizeBytes: 2 ** 40, maxBytes: 0, epoch: base + 3 * Math.floor(SEGMENTS * 0.3) },
    // 1,000 blocks: entries of blocks 1,000 and above are past its end.
    { id: 2, name: 'c', identity: 'c', sizeBytes: 1000 * BS, maxBytes: 0, epoch: 0 },
  ];
  // Volume id 3 has no record. Fewer keys than slots: many keys are named by several headers.
  const key = (): [number, number] => {
    const v = r() < 0.05 ? 3 : Math.floor(r() * 3);
    return [v, Math.floor(r() * (v === 2 ? 1100 : 40000))];
  };
  // Superseded entries: where each stopped being its key's newest copy (seal - age), distinct
  // (no ties), spread over the sequence numbers; a quarter without an age (an older build's).
  const supersededAt = new Map<number, number>();
  const since = new Set<number>();
  /** Fills the BDA slots of segment s with random entries (distinct keys) and returns the header sealed from them. */
  const header = (s: number, seq: number, m: number): Uint8Array => {
    const used = new Set<string>();
    for (let j = 0; j < BPS; j++) {
      const i = s * BPS + j;
      bda.clear(i);
      if (r() < 0.1) continue;
      let [v, b] = key();
      while (used.has(`${v}/${b}`)) [v, b] = key();
      used.add(`${v}/${b}`);
      bda.set(i, v, b);
      const data = new Uint8Array(BS).fill(Math.floor(r() * 256));
      data[0] = j;
      bda.crc[i] = native.crc32c(data);
      const kind = r();
      if (kind < 0.15) bda.flags[i] |= FLAG_DIRTY;
      else if (kind < 0.2) {
        bda.flags[i] = FLAG_SHADOW;
        let q = seq;
        if (r() >= 0.25) {
          do q = seq - 1 - Math.floor(r() * 3 * SEGMENTS);
          while (since.has(q));
          since.add(q);
        }
        supersededAt.set(i, q);
      }
      // The data of a dirty block sealed above the mark: landed (3 in 4) or not (zeros).
      if (kind < 0.2 && r() < 0.75) dev.setBlock(i, data);
    }
    const h = new Uint8Array(g.headerSize);
    sealHeader(h, g, s, bda, seq, m, uuid, null, supersededAt);
    return h;
  };
  for (let s = 0; s < SEGMENTS; s++) {
    if (r() < 0.04) continue; // never written
    const seq = seqs[s];
    const m = r() < 0.5 ? mark : Math.min(mark, seq - 1);
    const kind = r();
    if (kind < 0.12) {
      // Torn: sector 1 of an older write of this header (possibly below the floor).
      const older = header(s, seq - 1 - Math.floor(r() * 3 * SEGMENTS * 0.1), m);
      const h = header(s, seq, m);
      h.set(older.subarray(HEADER_SECTOR, 2 * HEADER_SECTOR), HEADER_SECTOR);
      dev.header(s).set(h);
    } else {
      dev.header(s).set(header(s, seq, m));
      // A corrupt sector (its CRC-32C fails).
      if (kind < 0.16) dev.header(s)[Math.floor(r() * 2) * HEADER_SECTOR + 48 + Math.floor(r() * 400)] ^= 0x40;
    }
  }
  return { g, dev, floor, volumes };
}

interface Model {
  /** Per slot recovered: its key and dirty flag. */
  slots: Map<number, { v: number; b: number; dirty: boolean }>;
  entries: number;
  skipped: number;
  verified: number;
  torn: number;
  mark: number;
  sequence: number;
  hand: number;
  rewrite: number[];
}

/** The rules of recovery.ts, read straight off the header bytes. */
async function model(im: Image): Promise<Model> {
  const { g, dev, floor, volumes } = im;
  const rewrite = new Set<number>();
  interface Cand {
    slot: number;
    v: number;
    b: number;
    crc: number;
    dirty: boolean;
    superseded: boolean;
    /** Of a superseded entry (flag bits 3..31). */
    age: number;
    seq: number;
  }
  const cands: Cand[] = [];
  let skipped = 0;
  let mark = 0;
  let best = -1;
  let bestSeq = -1;
  for (let s = 0; s < g.segments; s++) {
    const h = dev.header(s);
    const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
    const seqOf: number[] = [];
    for (let k = 0; k < g.headerSectors; k++) {
      const at = k * HEADER_SECTOR;
      const intact =
        native.crc32c(h.subarray(at, at + HEADER_SECTOR - 4)) === dv.getUint32(at + HEADER_SECTOR - 4, true) &&
        dv.getUint32(at, true) === 0x53434256 &&
        dv.getUint16(at + 4, true) === 4 &&
        dv.getUint16(at + 6, true) === k &&
        dv.getUint32(at + 8, true) === s &&
        dv.getUint32(at + 12, true) === BPS &&
        dv.getUint32(at + 16, true) === BS &&
        h.subarray(at + 28, at + 44).every((x, i) => x === uuid[i]);
      seqOf.push(intact ? dv.getUint32(at + 20, true) + dv.getUint32(at + 24, true) * 2 ** 32 : -1);
    }
    const top = Math.max(...seqOf.filter((q) => q >= floor), -1);
    if (top < 0) continue;
    if (top > bestSeq) [best, bestSeq] = [s, top];
    for (let k = 0; k < g.headerSectors; k++) {
      const seq = seqOf[k];
      if (seq < floor) continue;
      mark = Math.max(mark, dv.getUint32(k * HEADER_SECTOR + 496, true) + dv.getUint32(k * HEADER_SECTOR + 500, true) * 2 ** 32);
      for (let j = k * ENTRIES_PER_SECTOR; j < Math.min(BPS, (k + 1) * ENTRIES_PER_SECTOR); j++) {
        const e = k * HEADER_SECTOR + 48 + (j - k * ENTRIES_PER_SECTOR) * 16;
        const flags = dv.getUint32(e + 12, true);
        if ((flags & 1) === 0) continue;
        const dirty = (flags & 2) !== 0;
        if (seq !== top) {
          rewrite.add(s);
          if (!dirty) {
            skipped++;
            continue;
          }
        }
        const b = dv.getUint32(e, true);
        const hi = dv.getUint32(e + 4, true);
        const rec = volumes.find((x) => x.id === hi >>> 16);
        if (rec === undefined || seq < rec.epoch || (hi & 0xffff) !== 0 || b >= Math.ceil(rec.sizeBytes / BS)) {
          skipped++;
          continue;
        }
        cands.push({ slot: s * BPS + j, v: hi >>> 16, b, crc: dv.getUint32(e + 8, true), dirty, superseded: (flags & 4) !== 0, age: flags >>> 3, seq });
      }
    }
  }
  // Dirty entries sealed above the mark: their data must match.
  let verified = 0;
  let torn = 0;
  const checked: Cand[] = [];
  for (const c of cands) {
    if (c.dirty && c.seq > mark) {
      verified++;
      const data = new Uint8Array(BS);
      await dev.readv(-1, [data], g.dataOffset + Math.floor(c.slot / BPS) * g.stride + g.headerSize + (c.slot % BPS) * BS);
      if (native.crc32c(data) !== c.crc) {
        torn++;
        skipped++;
        rewrite.add(Math.floor(c.slot / BPS));
        continue;
      }
    }
    checked.push(c);
  }
  // One entry per key: the newest copy: the highest seal; a superseded entry was the newest
  // through seal - age (+ 1/2: newer than the entries sealed then, older than those after), or
  // without an age below every other.
  const rank = (c: Cand) => (!c.superseded ? c.seq : c.age === 0 ? c.seq - 2 ** 52 : c.seq - c.age + 0.5);
  const winner = new Map<string, Cand>();
  for (const c of checked) {
    const k = `${c.v}/${c.b}`;
    const w = winner.get(k);
    const [keep, lose] = w === undefined || rank(c) > rank(w) ? [c, w] : [w, c];
    winner.set(k, keep);
    if (lose !== undefined) {
      skipped++;
      rewrite.add(Math.floor(lose.slot / BPS));
    }
  }
  const slots = new Map<number, { v: number; b: number; dirty: boolean }>();
  for (const c of winner.values()) slots.set(c.slot, { v: c.v, b: c.b, dirty: c.dirty });
  return {
    slots,
    entries: slots.size,
    skipped,
    verified,
    torn,
    mark,
    sequence: Math.max(0, bestSeq),
    hand: best < 0 ? 0 : ((best + 1) % g.segments) * BPS,
    rewrite: [...rewrite].sort((a, b) => a - b),
  };
}

/** Everything recovered equals the model. */
function check(got: Recovered, want: Model, g: Geometry): void {
  const what = `${got.workers} workers`;
  assert.deepEqual(
    { entries: got.entries, skipped: got.skipped, verified: got.verified, torn: got.torn, mark: got.mark, sequence: got.sequence, hand: got.hand },
    { entries: want.entries, skipped: want.skipped, verified: want.verified, torn: want.torn, mark: want.mark, sequence: want.sequence, hand: want.hand },
    what,
  );
  assert.deepEqual([...got.rewrite].sort((a, b) => a - b), want.rewrite, `${what}: segments to rewrite`);
  const { bda } = got;
  const { map, segValid, volumeBlocks, dirty } = got.index;
  const segs = new Uint16Array(g.segments);
  const vols = new Uint32Array(volumeBlocks.length);
  const dirtySlots: number[] = [];
  for (let i = 0; i < g.slots; i++) {
    const w = want.slots.get(i);
    const f = bda.flags[i];
    if (w === undefined) {
      assert.equal(f & FLAG_VALID, 0, `${what}: slot ${i} not recovered`);
      continue;
    }
    assert.equal(f, FLAG_VALID | (w.dirty ? FLAG_DIRTY : 0), `${what}: flags of slot ${i}`);
    assert.deepEqual([bda.keyHi[i], bda.keyLo[i]], [w.v, w.b], `${what}: key of slot ${i}`);
    assert.equal(map.get(w.v, w.b), i, `${what}: map of ${w.v}/${w.b}`);
    segs[Math.floor(i / BPS)]++;
    vols[w.v]++;
    if (w.dirty) dirtySlots.push(i);
  }
  assert.equal(map.size, want.entries, what);
  assert.deepEqual(segValid, segs, `${what}: per segment`);
  assert.deepEqual(volumeBlocks, vols, `${what}: per volume`);
  assert.deepEqual(dirty, dirtySlots, `${what}: dirty slots`);
  checkTable(map, bda);
}

describe('cache recovery on worker threads (seeded, against a model of the rules)', function () {
  // ~4 s per seed on an idle machine.
  this.timeout(120_000);
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: 0 to 3 workers recover exactly what the model does`, async () => {
      const im = randomImage(seed);
      const { g } = im;
      assert.ok(g.segments > RING * READ_BATCH, 'more batches than ring slots');
      const tableCapacity = AddressMap.capacityFor(g.slots);
      assert.ok(tableCapacity > 2 * 2 ** 16, 'an address map of 3 ranges');
      const want = await model(im);
      // The cases the file comment lists all occur.
      assert.ok(want.torn > 50 && want.verified > want.torn, `${want.torn} of ${want.verified} dirty entries torn`);
      assert.ok(want.rewrite.length > 300, `${want.rewrite.length} segments to rewrite`);
      for (const workers of [0, 1, 2, 3]) {
        const got = await recoverIndex({ engine: im.dev, fd: -1, geometry: g, uuid, floor: im.floor, volumes: im.volumes, tableCapacity, workers });
        assert.equal(got.workers, workers);
        check(got, want, g);
      }
    });
  }

  it('a header read failing fails the recovery (EIO) on workers too; the workers are stopped, and a recovery after it gets everything', async () => {
    const im = randomImage(4);
    const { g } = im;
    const tableCapacity = AddressMap.capacityFor(g.slots);
    // A read of a batch past the ring's first round fails: workers have scanned batches by then.
    const bad = segmentOffset(g, (RING + 1) * READ_BATCH + 3);
    let failed = 0;
    const engine: IoEngine = Object.assign(Object.create(im.dev) as IoEngine, {
      readv: (fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> => {
        if (offset === bad && failed++ === 0) return Promise.reject(new VhostError('injected read error', 'EIO'));
        return im.dev.readv(fd, bufs, offset);
      },
    });
    const input = { engine, fd: -1, geometry: g, uuid, floor: im.floor, volumes: im.volumes, tableCapacity, workers: 2 };
    const threads = () => fs.readdirSync('/proc/self/task').length;
    const before = threads();
    await assert.rejects(recoverIndex(input), (err: Error & { code?: string }) => err.code === 'EIO');
    assert.equal(failed, 1);
    assert.equal(threads(), before, 'the worker threads are gone');
    check(await recoverIndex(input), await model(im), g);
  });
});
