/**
 * Crash recovery time (recovery.ts) for a cache of 16 M blocks (64 GiB of 4 KiB blocks, 512 KiB
 * segments; argument = blocks), every slot holding a block, on a simulated device that keeps
 * the segment headers in RAM (test/support/header-device.ts: reads of them are copies, this
 * measures recovery's own cost, not the SSD's; a real device adds reading segments *
 * headerSize bytes, 512 MiB here). The
 * newest DIRTY_SEGMENTS segments hold dirty blocks sealed above the durable mark (a crash
 * right after a burst of write-back commits): their data is read and checked (recovery.ts 10.).
 * Prints the median of `runs` runs (default 3; the first one's code is not optimized yet, as in
 * a daemon's recovery: 1 measures that) of: reading and checking every header, rebuilding the
 * BDA and address map (recoverIndex; `workers`: worker threads, default recoverIndex's), then
 * adopting them (CacheMap), wall and CPU time (the process's: every thread).
 * Run: node dist/bench/recovery.js [blocks] [workers|auto] [runs]
 */
import { AddressMap } from '../src/cache/address-map';
import { BlockDescriptorArray, FLAG_DIRTY } from '../src/cache/bda';
import { CacheMap } from '../src/cache/cache-map';
import { recoverIndex } from '../src/cache/recovery';
import { computeGeometry, deviceBytesFor, sealHeader } from '../src/cache/segment';
import { native } from '../src/native/binding';
import { HeaderDevice } from '../test/support/header-device';
import { benchPositionals, positiveNumber } from '../src/bench/cli';

/** Segments (the newest) whose dirty blocks are above the durable mark. */
const DIRTY_SEGMENTS = 8;

async function main(): Promise<void> {
  const [blocks, w, runsArg] = benchPositionals('Usage: node dist/bench/recovery.js [blocks (default 16777216)] [workers|auto (default auto)] [runs (default 3)]', [
    String(1 << 24),
    'auto',
    '3',
  ]);
  const want = positiveNumber(blocks, 'blocks');
  const workers = w === 'auto' ? undefined : positiveNumber(w, 'workers');
  const count = positiveNumber(runsArg, 'runs');
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
  const dev = new HeaderDevice(g);
  const base = 1_000_000;
  const mark = base + g.segments - DIRTY_SEGMENTS - 1;
  for (let s = 0; s < g.segments; s++) sealHeader(dev.header(s), g, s, bda, base + s, Math.min(mark, base + s - 1), uuid, null, new Map());
  const volumes = [0, 1, 2, 3].map((id) => ({ id, name: `v${id}`, identity: `id${id}`, sizeBytes: 2 ** 40, maxBytes: 0, epoch: 0 }));
  const tableCapacity = AddressMap.capacityFor(g.slots);
  const runs: { ms: number; cpuMs: number; adoptMs: number; workers: number }[] = [];
  for (let r = 0; r < count; r++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const rec = await recoverIndex({ engine: dev, fd: -1, geometry: g, uuid, floor: 0, volumes, tableCapacity, workers });
    const t1 = performance.now();
    const map = new CacheMap(g.slots, { segmentBlocks: g.blocksPerSegment }, rec.bda, rec.index);
    const t2 = performance.now();
    const cpu = process.cpuUsage(cpu0);
    if (rec.entries !== g.slots || map.map.size !== g.slots || map.peek(1, 3) !== 5) throw new Error(`recovered ${rec.entries} of ${g.slots}`);
    if (rec.verified !== DIRTY_SEGMENTS * g.blocksPerSegment || rec.torn !== 0) throw new Error(`verified ${rec.verified} dirty blocks, ${rec.torn} torn`);
    runs.push({ ms: t2 - t0, cpuMs: (cpu.user + cpu.system) / 1000, adoptMs: t2 - t1, workers: rec.workers });
  }
  const median = (k: 'ms' | 'cpuMs' | 'adoptMs') => runs.map((x) => x[k]).sort((a, b) => a - b)[Math.floor((count - 1) / 2)];
  console.log(
    JSON.stringify({
      blocks: g.slots,
      segments: g.segments,
      headerBytesRead: g.segments * g.headerSize,
      dirtyBlocksVerified: DIRTY_SEGMENTS * g.blocksPerSegment,
      workers: runs[0].workers,
      recoveryMs: Math.round(median('ms')),
      cpuMs: Math.round(median('cpuMs')),
      adoptMs: Math.round(median('adoptMs')),
      runsMs: runs.map((x) => Math.round(x.ms)),
      runsCpuMs: runs.map((x) => Math.round(x.cpuMs)),
    }),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
