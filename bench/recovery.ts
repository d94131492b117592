/**
 * Crash recovery time (recovery.ts) for a cache of 16 M blocks (64 GiB of 4 KiB blocks, 512 KiB
 * segments; argument = blocks), every slot holding a block, on a simulated device that keeps
 * the segment headers in RAM (reads of them are copies: this measures recovery's own cost,
 * not the SSD's; a real device adds reading segments * headerSize bytes, 512 MiB here). The
 * newest DIRTY_SEGMENTS segments hold dirty blocks sealed above the durable mark (a crash
 * right after a burst of write-back commits): their data is read and checked (recovery.ts 10.).
 * Prints the median of 3 runs of: reading and checking every header, rebuilding the BDA and
 * address map (recoverIndex), then adopting them (CacheMap), wall and CPU time.
 * Run: node dist/bench/recovery.js [blocks]
 */
import { type IoEngine, readvCheckedOf } from '../src/io/io-engine';
import { VhostError } from '../src/native/errors';
import { AddressMap } from '../src/cache/address-map';
import { BlockDescriptorArray, FLAG_DIRTY } from '../src/cache/bda';
import { CacheMap } from '../src/cache/cache-map';
import { recoverIndex } from '../src/cache/recovery';
import { computeGeometry, deviceBytesFor, sealHeader, segmentOffset } from '../src/cache/segment';
import { native } from '../src/native/binding';

/** Segments (the newest) whose dirty blocks are above the durable mark. */
const DIRTY_SEGMENTS = 8;

/** A device holding only what was written to it at exact offsets (the headers); zeros elsewhere. */
class HeaderDevice implements IoEngine {
  readonly kind = 'threadpool';
  private readonly at = new Map<number, Uint8Array>();
  put(offset: number, bytes: Uint8Array): void {
    this.at.set(offset, bytes);
  }
  readv(_fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> {
    const src = this.at.get(offset);
    if (src === undefined || bufs.length !== 1) bufs.forEach((b) => b.fill(0));
    else bufs[0].set(src.subarray(0, bufs[0].byteLength));
    return Promise.resolve();
  }
  readvChecked(fd: number, bufs: readonly Uint8Array[], offset: number, blockSize: number, crcs: Uint32Array, at: number, done: (err: Error | null, ok: boolean) => void): void {
    readvCheckedOf(this, fd, bufs, offset, blockSize, crcs, at, done);
  }
  writev(): Promise<void> {
    return Promise.reject(new VhostError('read-only bench device', 'EROFS'));
  }
  fdatasync(): Promise<void> {
    return Promise.resolve();
  }
  fallocate(): Promise<void> {
    return Promise.reject(new VhostError('bench device', 'EOPNOTSUPP'));
  }
  blockRange(): Promise<void> {
    return Promise.reject(new VhostError('bench device', 'EOPNOTSUPP'));
  }
  close(): void {}
}

async function main(): Promise<void> {
  const want = Number(process.argv[2] ?? 1 << 24);
  const g = computeGeometry(deviceBytesFor(Math.ceil(want / 128)), 4096, 512 * 1024);
  const uuid = new Uint8Array(16).fill(7);
  const bda = new BlockDescriptorArray(g.slots);
  // Unwritten data reads as zeros (HeaderDevice): the dirty blocks' CRC-32C is that of zeros.
  const zerosCrc = native.crc32c(new Uint8Array(g.blockSize));
  const dirtyFrom = (g.segments - DIRTY_SEGMENTS) * g.blocksPerSegment;
  for (let i = 0; i < g.slots; i++) {
    bda.set(i, i % 4, Math.floor(i / 4) * 3);
    bda.crc[i] = i >= dirtyFrom ? zerosCrc : (i * 2654435761) >>> 0;
    if (i >= dirtyFrom) bda.flags[i] |= FLAG_DIRTY;
  }
  const dev = new HeaderDevice();
  const base = 1_000_000;
  const mark = base + g.segments - DIRTY_SEGMENTS - 1;
  for (let s = 0; s < g.segments; s++) {
    const h = new Uint8Array(g.headerSize);
    sealHeader(h, g, s, bda, base + s, Math.min(mark, base + s - 1), uuid, null);
    dev.put(segmentOffset(g, s), h);
  }
  const volumes = [0, 1, 2, 3].map((id) => ({ id, name: `v${id}`, identity: `id${id}`, sizeBytes: 2 ** 40, maxBytes: 0, epoch: 0 }));
  const tableCapacity = AddressMap.capacityFor(g.slots);
  const runs: { ms: number; cpuMs: number; adoptMs: number }[] = [];
  for (let r = 0; r < 3; r++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const rec = await recoverIndex({ engine: dev, fd: -1, geometry: g, uuid, floor: 0, volumes, tableCapacity });
    const t1 = performance.now();
    const map = new CacheMap(g.slots, { segmentBlocks: g.blocksPerSegment }, rec.bda, rec.table);
    const t2 = performance.now();
    const cpu = process.cpuUsage(cpu0);
    if (rec.entries !== g.slots || map.map.size !== g.slots || map.peek(1, 3) !== 5) throw new Error(`recovered ${rec.entries} of ${g.slots}`);
    if (rec.verified !== DIRTY_SEGMENTS * g.blocksPerSegment || rec.torn !== 0) throw new Error(`verified ${rec.verified} dirty blocks, ${rec.torn} torn`);
    runs.push({ ms: t2 - t0, cpuMs: (cpu.user + cpu.system) / 1000, adoptMs: t2 - t1 });
  }
  const median = (k: 'ms' | 'cpuMs' | 'adoptMs') => runs.map((x) => x[k]).sort((a, b) => a - b)[1];
  console.log(
    JSON.stringify({
      blocks: g.slots,
      segments: g.segments,
      headerBytesRead: g.segments * g.headerSize,
      dirtyBlocksVerified: DIRTY_SEGMENTS * g.blocksPerSegment,
      recoveryMs: Math.round(median('ms')),
      cpuMs: Math.round(median('cpuMs')),
      adoptMs: Math.round(median('adoptMs')),
      runsMs: runs.map((x) => Math.round(x.ms)),
    }),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
