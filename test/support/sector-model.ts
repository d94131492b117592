/**
 * The sector rule of the randomized model tests (model-run.ts, writeback-model.test.ts,
 * writeback-crash.test.ts), written once: a read must return, per 512-byte sector, the data the
 * model expects (the backing store's when the read started, or the newest acknowledged) or the
 * data of an operation that overlapped the read in time (a write's bytes; zeros for a discard or
 * write-zeroes).
 */
import { strict as assert } from 'node:assert';

export const SECTOR = 512;

/** A write-like operation of volume v on bytes [start, end): its data, or null for zeros. */
export interface WriteRec {
  v: number;
  start: number;
  end: number;
  data: Uint8Array | null;
}

/** A read: its range, the model's data when it started, and the writes that overlapped it in time. */
export interface ReadRec {
  v: number;
  start: number;
  end: number;
  snap: Uint8Array;
  concurrent: WriteRec[];
}

/** Whether `sector`, at byte `abs` of volume v, is what `x` wrote there. */
function wrote(x: WriteRec, v: number, abs: number, sector: Uint8Array): boolean {
  if (x.v !== v || abs < x.start || abs >= x.end) return false;
  if (x.data === null) return sector.every((b) => b === 0);
  return Buffer.compare(sector, x.data.subarray(abs - x.start, abs - x.start + SECTOR)) === 0;
}

const hex8 = (b: Uint8Array): string => Buffer.from(b.subarray(0, 8)).toString('hex');

/**
 * Asserts that each sector of `got` (volume v, bytes [start, start + got.byteLength)) holds the
 * same bytes as `expected` (at the same offsets as `got`) or what one of `overlapping` wrote
 * there; returns the number of sectors checked. `at` names the place; `expectedIs` and
 * `othersAre` what the two kinds of acceptable data are, for the message.
 */
export function checkSectors(
  v: number,
  start: number,
  got: Uint8Array,
  expected: Uint8Array,
  overlapping: Iterable<WriteRec>,
  at: string,
  expectedIs = 'the newest acknowledged data',
  othersAre = "an overlapping operation's",
): number {
  const others = [...overlapping];
  let sectors = 0;
  for (let s = 0; s < got.byteLength; s += SECTOR, sectors++) {
    const sector = got.subarray(s, s + SECTOR);
    if (Buffer.compare(sector, expected.subarray(s, s + SECTOR)) === 0) continue;
    const abs = start + s;
    assert.ok(
      others.some((x) => wrote(x, v, abs, sector)),
      `${at}: volume ${v} sector at ${abs} holds ${hex8(sector)}, neither ${expectedIs} (${hex8(expected.subarray(s))}) nor ${othersAre}`,
    );
  }
  return sectors;
}
