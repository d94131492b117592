/**
 * A recovery worker thread (started by recovery.ts, never loaded otherwise): scans the header
 * batches it claims as the main thread publishes them (recovery-scan.ts HeaderScan), posts its
 * ScanResult; then, told to place, fills the ranges of the address map it claims
 * (address-map.ts RangePlacer) and posts what it placed. It writes only shared memory its
 * claims give it (recovery-scan.ts) and stops at once when the main thread sets Ctl.Abort.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MapBuilder, RangePlacer, rangesOf } from './address-map';
import { BlockDescriptorArray } from './bda';
import { Ctl, HeaderScan, READ_BATCH, type RecoveryShared, RING } from './recovery-scan';

/** The main thread's order to place (after the scan): every builder, and the map's layout. */
export interface PlaceOrder {
  builders: MapBuilder['memory'][];
  slotBits: number;
  distMax: number;
}

/** What a worker placed (PlaceOrder). */
export interface Placed {
  placed: number;
  late: number[];
  twins: number[];
}

const port = parentPort;
if (port === null) throw new Error('recovery-worker: not a worker thread');
const s = workerData as RecoveryShared;
const ctl = new Int32Array(s.ctl);
const batches = Math.ceil(s.geometry.segments / READ_BATCH);
const scan = new HeaderScan(s);
let aborted = false;
for (;;) {
  const b = Atomics.add(ctl, Ctl.Claimed, 1);
  if (b >= batches) break;
  // The main thread publishes in order; an abort publishes everything (and sets Ctl.Abort).
  for (let v = Atomics.load(ctl, Ctl.Published); v <= b; v = Atomics.load(ctl, Ctl.Published)) Atomics.wait(ctl, Ctl.Published, v);
  aborted = Atomics.load(ctl, Ctl.Abort) !== 0;
  if (aborted) break;
  scan.batch(b, b % RING);
  Atomics.store(ctl, Ctl.Done + (b % RING), Math.floor(b / RING) + 1);
  Atomics.notify(ctl, Ctl.Done + (b % RING));
}
if (!aborted) port.postMessage(scan.result());
// Kept alive (listening) until the main thread terminates it: an exit before that is a failure.
port.on('message', (o: PlaceOrder) => {
  const capacity = s.tableCapacity;
  const bda = new BlockDescriptorArray(s.geometry.slots, s.bda);
  const builders = o.builders.map((m) => new MapBuilder(capacity, 0, m));
  const placer = new RangePlacer({ table: new Int32Array(s.table), capacity, slotBits: o.slotBits, distMax: o.distMax, keyLo: bda.keyLo, keyHi: bda.keyHi });
  const out: Placed = { placed: 0, late: [], twins: [] };
  const ranges = rangesOf(capacity);
  for (let r = Atomics.add(ctl, Ctl.Ranges, 1); r < ranges && Atomics.load(ctl, Ctl.Abort) === 0; r = Atomics.add(ctl, Ctl.Ranges, 1)) {
    out.placed += placer.place(r, builders, out.late, out.twins);
  }
  port.postMessage(out);
});
