/**
 * Recovery: after an unclean stop (crash, kill -9, power cut: the metadata of the last clean
 * close is stale) the cache index is rebuilt from the segment headers on the device, so the
 * cache starts warm.
 *
 * THE INVARIANT (kept by log.ts, cache.ts and cached-store.ts; this file relies on it):
 *   At every instant, for every key K (volume id, block) and every header entry that may be on
 *   the device (durable, or written and not yet synced) saying "slot s holds K, valid", with a
 *   sequence number >= the volume table's floor and >= the epoch of K's volume id: either the
 *   data the guest would read for K equals what slot s holds (checked against the entry's
 *   CRC-32C), or K's backing write has not been issued yet.
 * How each way of breaking it is ruled out:
 *   1. A guest write, discard or write-zeroes (every mode, `none` included) drops K from the map
 *      and, before its backing write is issued, rewrites the headers of every segment that may
 *      still name K (Log.killFor), then fdatasync: batched, one device write set + one
 *      fdatasync per batch.
 *   2. Keys leaving the map without a write (evicted when the slot is refilled, read-ahead or
 *      device read errors, checksum drops, a block moved to another slot) are remembered with
 *      their slot (dropped.ts) until a header of their segment sealed after the drop is durable,
 *      so 1. finds them; a volume shrink or identity change drops all of its blocks through 4.
 *   3. Every device write of a segment is chained after the ones issued before it (Log
 *      onSegment): a header rewrite never lands before a segment write still in flight.
 *   4. Volume ids are reused: the volume table (volume-table.ts) is saved and synced before any
 *      segment holding a new id's blocks is written (inserts wait for it) and before any write
 *      of a volume whose blocks were all dropped; entries sealed before the id's epoch are not
 *      recovered, entries of ids the table does not know neither.
 *   5. Changes behind our back while stopped: a volume is kept only if its backing identity
 *      equals the one last recorded (cache.ts registerVolume; cached-store.ts records it when
 *      the volume is quiet), else all its blocks go (4.). Never sampled for this.
 *   6. Torn writes: header sectors are self-describing (CRC-32C, sequence number; segment.ts),
 *      only the sectors of a segment's highest sequence number are used (a mix is detected and
 *      that header rewritten before the cache opens); data is checked against the entry's
 *      CRC-32C on every device read (a torn block is a miss), never read here.
 *   7. A cache-device write error: nothing is sealed any more and the floor is raised above
 *      every sequence number used (Log.fail); writes wait until that is durable.
 *
 * Algorithm: read every segment header (batches of reads in flight); per segment keep the
 * intact sectors of the highest sequence number (>= floor); each valid entry of a known volume
 * id, sealed at or after its epoch and inside the volume, goes to its slot; a key found twice
 * keeps the entry of the higher sequence number. Segments whose headers name entries not
 * recovered for another reason than floor or epoch (older sectors of a torn header, the loser
 * of a duplicate) are returned in `rewrite`: the caller rewrites them from the rebuilt index
 * (and syncs) before the cache is used, so every entry still valid on the device is in the
 * index again (the invariant's starting point). The hand restarts after the segment of the
 * highest sequence number.
 */
import type { IoEngine } from '../io/io-engine';
import { native } from '../native/binding';
import { AddressMap } from './address-map';
import { BlockDescriptorArray, FLAG_VALID, packHi } from './bda';
import type { VolumeRecord } from './metadata';
import { checkHeaderSectors, entryOffset, entrySector, type Geometry, SEGMENT_ALIGNMENT, segmentOffset } from './segment';

/** Segment headers read per batch (their reads are in flight together). */
const READ_BATCH = 256;

export interface RecoveryInput {
  engine: IoEngine;
  fd: number;
  geometry: Geometry;
  uuid: Uint8Array;
  floor: number;
  volumes: readonly VolumeRecord[];
  tableCapacity: number;
}

export interface Recovered {
  bda: BlockDescriptorArray;
  table: Int32Array;
  /** First slot of the segment after the one with the highest sequence number. */
  hand: number;
  /** Highest sequence number found (0: none). */
  sequence: number;
  /** Segments whose headers must be rewritten before use (see the file comment). */
  rewrite: number[];
  /** Entries recovered, and entries seen but not recovered (floor, epoch, torn, duplicate). */
  entries: number;
  skipped: number;
  ms: number;
}

export async function recoverIndex(o: RecoveryInput): Promise<Recovered> {
  const t0 = performance.now();
  const g = o.geometry;
  const bps = g.blocksPerSegment;
  const bda = new BlockDescriptorArray(g.slots);
  const index = new AddressMap(bda, 0.5, new Int32Array(o.tableCapacity).fill(-1));
  const epoch = new Float64Array(65536).fill(Infinity);
  const limit = new Float64Array(65536);
  for (const v of o.volumes) {
    epoch[v.id] = v.epoch;
    limit[v.id] = v.sizeBytes === 0 ? 2 ** 48 : Math.ceil(v.sizeBytes / g.blockSize);
  }
  const segSeq = new Float64Array(g.segments).fill(-1);
  const rewrite = new Set<number>();
  const seqs = new Float64Array(g.headerSectors);
  const crcs = new Uint32Array(g.headerSectors);
  const H = g.headerSize;
  const buf = native.alignedBuffer(READ_BATCH * H, SEGMENT_ALIGNMENT);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let entries = 0;
  let skipped = 0;
  let best = -1;
  let bestSeq = -1;
  for (let from = 0; from < g.segments; from += READ_BATCH) {
    const n = Math.min(READ_BATCH, g.segments - from);
    await Promise.all(Array.from({ length: n }, (_, j) => o.engine.readv(o.fd, [buf.subarray(j * H, (j + 1) * H)], segmentOffset(g, from + j), true)));
    for (let j = 0; j < n; j++) {
      const seg = from + j;
      const h = buf.subarray(j * H, (j + 1) * H);
      checkHeaderSectors(h, g, seg, o.uuid, seqs, crcs);
      let top = -1;
      for (let k = 0; k < g.headerSectors; k++) if (seqs[k] >= o.floor && seqs[k] > top) top = seqs[k];
      if (top < 0) continue;
      segSeq[seg] = top;
      if (top > bestSeq) {
        bestSeq = top;
        best = seg;
      }
      const first = seg * bps;
      for (let k = 0; k < bps; k++) {
        const e = j * H + entryOffset(k);
        if ((view.getUint32(e + 12, true) & 1) === 0) continue;
        const sector = seqs[entrySector(k)];
        // Valid in an intact sector of an older write of this header (torn): not recovered.
        if (sector !== top) {
          if (sector >= o.floor) {
            skipped++;
            rewrite.add(seg);
          }
          continue;
        }
        const lo = view.getUint32(e, true);
        const hi = view.getUint32(e + 4, true);
        const id = hi >>> 16;
        const block = (hi & 0xffff) * 2 ** 32 + lo;
        if (top < epoch[id] || block >= limit[id]) {
          skipped++;
          continue;
        }
        const other = index.get(id, block);
        if (other >= 0) {
          skipped++;
          const otherSeg = Math.floor(other / bps);
          if (segSeq[otherSeg] > top) {
            rewrite.add(seg);
            continue;
          }
          rewrite.add(otherSeg);
          index.remove(other);
          bda.clear(other);
          entries--;
        }
        const slot = first + k;
        bda.keyLo[slot] = lo;
        bda.keyHi[slot] = packHi(id, block);
        bda.crc[slot] = view.getUint32(e + 8, true);
        bda.flags[slot] = FLAG_VALID;
        index.add(slot);
        entries++;
      }
    }
  }
  return {
    bda,
    table: index.table,
    hand: best < 0 ? 0 : ((best + 1) % g.segments) * bps,
    sequence: Math.max(0, bestSeq),
    rewrite: [...rewrite],
    entries,
    skipped,
    ms: performance.now() - t0,
  };
}
