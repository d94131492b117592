/**
 * Kill marks (src/cache/kill-marks.ts) on their own: what reaches the superblock's mark area and
 * when (a mark before mark() returns, a clear with the next mark's write or on writeClears), the
 * slot limit and a failed write (then the kill must wait: mark() says false), and the marks a
 * superblock carries read back.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { deviceBytesFor } from '../../src/cache/segment';
import { UringEngine } from '../../src/io/uring-engine';
import { tmpDir } from '../support/tmp';
import { CLEAR_DELAY_MS, KillMarks, MARK_SLOTS, MARKS_OFFSET, readMarks } from '../../src/cache/kill-marks';
import type { SyncRegion } from '../../src/io/io-engine';
import { VhostError } from '../../src/native/errors';

describe('kill marks', () => {
  /** A superblock's 4 KiB as a SyncRegion, and the writes into it. */
  function device(): SyncRegion & { sb: Uint8Array; writes: number; fail: boolean; closed: boolean } {
    const d = {
      sb: new Uint8Array(4096),
      writes: 0,
      fail: false,
      closed: false,
      write: (b: Uint8Array, at: number): void => {
        if (d.closed) throw new VhostError('sync region closed', 'ESHUTDOWN');
        if (d.fail) throw new VhostError('injected write error', 'EIO');
        d.writes++;
        d.sb.set(b, at);
      },
      close: (): void => {
        d.closed = true;
      },
    };
    return d;
  }

  it('a mark is on the device when mark() returns; a segment marked twice stays marked until both are done; clears ride on the next mark', () => {
    const d = device();
    const m = new KillMarks(d);
    assert.equal(m.mark(new Set([3, 7])), true);
    assert.deepEqual(readMarks(d.sb), [3, 7]);
    assert.equal(d.writes, 1, 'one write for the call');
    assert.equal(m.mark(new Set([3])), true);
    assert.equal(d.writes, 1, 'segment 3 is marked already: no write');
    m.unmark(new Set([3, 7]));
    assert.equal(m.size, 1, 'segment 3 still has a mark outstanding');
    assert.deepEqual(readMarks(d.sb), [3, 7], 'a clear changes nothing on the device by itself');
    assert.equal(m.mark(new Set([9])), true);
    assert.deepEqual(readMarks(d.sb).sort((a, b) => a - b), [3, 9], "segment 7's clear went with segment 9's mark");
    m.unmark(new Set([3]));
    m.unmark(new Set([9]));
    m.writeClears();
    assert.deepEqual(readMarks(d.sb), []);
    assert.equal(m.kills, 3);
    m.stop();
  });

  it('clears not carried by a mark are written CLEAR_DELAY_MS later', async () => {
    const d = device();
    const m = new KillMarks(d);
    m.mark(new Set([1]));
    m.unmark(new Set([1]));
    assert.deepEqual(readMarks(d.sb), [1]);
    await new Promise((r) => setTimeout(r, CLEAR_DELAY_MS + 20));
    assert.deepEqual(readMarks(d.sb), []);
    assert.equal(d.writes, 2);
    m.stop();
  });

  it('every slot taken: false (the kill waits), nothing written; a write failure: false, and marks stay off', () => {
    const d = device();
    const m = new KillMarks(d);
    assert.equal(m.mark(new Set(Array.from({ length: MARK_SLOTS }, (_, i) => i))), true);
    assert.equal(readMarks(d.sb).length, MARK_SLOTS);
    const writes = d.writes;
    assert.equal(m.mark(new Set([MARK_SLOTS])), false);
    assert.equal(d.writes, writes);
    assert.equal(m.mark(new Set([0])), true, 'a segment marked already needs no slot');
    m.unmark(new Set([5]));
    assert.equal(m.mark(new Set([MARK_SLOTS])), true, 'a freed slot is reused');
    d.fail = true;
    m.unmark(new Set([6]));
    assert.equal(m.mark(new Set([MARK_SLOTS + 1])), false, 'the write failed: the caller waits');
    d.fail = false;
    assert.equal(m.mark(new Set([MARK_SLOTS + 2])), false, 'off for the rest of the run');
    m.stop();
  });

  it('marks found on the device are kept in every area written until clearRecovered; stop() writes nothing more', () => {
    const d = device();
    const m = new KillMarks(d, [4, 11]);
    const sb = m.onto(new Uint8Array(4096));
    assert.deepEqual(readMarks(sb), [4, 11], 'the superblock that open writes carries them');
    assert.deepEqual(Array.from(sb.subarray(0, MARKS_OFFSET)), Array.from(new Uint8Array(MARKS_OFFSET)), 'and nothing else');
    d.sb.set(sb);
    assert.equal(m.mark(new Set([2])), true);
    assert.deepEqual(readMarks(d.sb), [4, 11, 2]);
    m.clearRecovered([4, 11]);
    assert.deepEqual(readMarks(d.sb), [2]);
    m.stop();
    assert.ok(d.closed, 'stop() closes the region (before the descriptor is)');
    const writes = d.writes;
    assert.equal(m.mark(new Set([8])), false);
    m.writeClears();
    assert.equal(d.writes, writes);
  });

  it('the mark area of a cache file is a mapping of its superblock page (io_uring engine) while the cache is open, none after close or abort', async () => {
    const dir = tmpDir('kill-marks-map');
    const file = path.join(dir, 'cache.img');
    const engine = new UringEngine();
    const mapped = (): number => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.endsWith(file)).length;
    try {
      const size = deviceBytesFor(8, 4096, 16384);
      const a = await Cache.open({ path: file, size, segmentSize: 16384, engine });
      assert.equal(mapped(), 1, 'mapped while open');
      await a.close();
      assert.equal(mapped(), 0, 'unmapped by close');
      const b = await Cache.open({ path: file, size, segmentSize: 16384, engine });
      assert.equal(mapped(), 1);
      await b.abort();
      assert.equal(mapped(), 0, 'unmapped by abort');
    } finally {
      engine.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
