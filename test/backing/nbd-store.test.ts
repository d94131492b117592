/** NbdStore against real servers: nbdkit (memory plugin, filters) and qemu-nbd on a raw file. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VhostError } from '../../src/native/errors';
import { NbdStore } from '../../src/backing/nbd/nbd-store';
import { tmpDir } from '../support/tmp';
import {
  BLOCK,
  startNbdkit,
  startQemuNbd,
  unixUri,
  type ServerProcess,
} from './nbd-servers';
import { stamped, verifyStamped } from '../support/stamps';
import { freePort } from '../support/net';
import { splitAt } from '../support/scatter';

const MiB = 1024 * 1024;

async function rejectsWith(p: Promise<unknown>, code: string): Promise<VhostError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VhostError, `expected a VhostError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected rejection with ${code}`);
}

/** Round trips, many in flight, flush/trim/zeroes: shared by every server flavour below. */
function basicSuite(name: string, open: () => Promise<NbdStore>): void {
  describe(name, () => {
    let store: NbdStore;
    before(async () => {
      store = await open();
    });
    after(async () => {
      await store?.close();
    });

    it('round-trips stamped blocks through scatter lists', async () => {
      const data = stamped(8 * BLOCK, 16 * BLOCK, 1);
      await store.write(8 * BLOCK, splitAt(data, [512, 3584, 3 * BLOCK, 100 * 512]));
      const back = Buffer.alloc(16 * BLOCK);
      await store.read(8 * BLOCK, splitAt(back, [BLOCK, 512, 7 * 512, 5 * BLOCK]));
      verifyStamped(back, 8 * BLOCK, 1);
    });

    it('keeps 64 requests in flight and gets every block right', async () => {
      const writes: Promise<void>[] = [];
      for (let i = 0; i < 64; i++) {
        const off = (100 + i * 3) * BLOCK;
        writes.push(store.write(off, [stamped(off, 2 * BLOCK, 2)]));
      }
      await Promise.all(writes);
      const bufs = Array.from({ length: 64 }, () => Buffer.alloc(2 * BLOCK));
      await Promise.all(bufs.map((b, i) => store.read((100 + i * 3) * BLOCK, [b])));
      bufs.forEach((b, i) => verifyStamped(b, (100 + i * 3) * BLOCK, 2));
    });

    it('moves requests larger than the maximum payload', async () => {
      const off = 4 * MiB;
      await store.write(off, [stamped(off, 3 * MiB, 3)]);
      const back = Buffer.alloc(3 * MiB);
      await store.read(off, splitAt(back, [MiB + BLOCK, 512]));
      verifyStamped(back, off, 3);
    });

    it('flushes, trims and writes zeroes (with and without unmap)', async () => {
      const off = 12 * MiB;
      await store.write(off, [stamped(off, 64 * BLOCK, 4)]);
      await store.flush();
      await store.writeZeroes(off, 16 * BLOCK, false);
      await store.writeZeroes(off + 16 * BLOCK, 16 * BLOCK, true);
      const back = Buffer.alloc(64 * BLOCK, 0xff);
      await store.read(off, [back]);
      assert.ok(back.subarray(0, 32 * BLOCK).every((x) => x === 0));
      verifyStamped(back.subarray(32 * BLOCK), off + 32 * BLOCK, 4);
      if (store.features.discard) await store.discard(off + 32 * BLOCK, 32 * BLOCK);
      await store.flush();
    });

    it('rejects requests beyond the end of the export', async () => {
      await rejectsWith(store.read(store.size - BLOCK, [Buffer.alloc(2 * BLOCK)]), 'EINVAL');
    });
  });
}

describe('NbdStore on real servers @host', function () {
  this.timeout(60_000);
  const dir = tmpDir('nbd-store');
  const servers: ServerProcess[] = [];
  after(async () => {
    for (const s of servers) await s.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('nbdkit memory over a Unix socket', () => {
    const sock = path.join(dir, 'mem.sock');
    before(async () => {
      servers.push(await startNbdkit({ socket: sock, plugin: 'memory', args: ['64M'] }));
    });
    for (const structured of [true, false]) {
      basicSuite(`structured replies ${structured ? 'on' : 'off'}`, () =>
        NbdStore.open(unixUri(sock), { structuredReplies: structured }),
      );
    }

    it('reports the export and its features', async () => {
      const s = await NbdStore.open(unixUri(sock));
      try {
        assert.equal(s.kind, 'nbd');
        assert.equal(s.size, 64 * MiB);
        assert.equal(s.readOnly, false);
        assert.deepEqual(s.features, { flush: true, discard: true, writeZeroes: true });
        assert.equal(s.location, `nbd:unix:${sock}:""`);
        assert.equal(s.identity, `${s.location}#size=${64 * MiB}`);
        assert.equal(s.changesVisible, false);
        assert.equal(s.info.structured, true);
      } finally {
        await s.close();
      }
    });

    it('uses several connections when the server allows multi-conn', async () => {
      const s = await NbdStore.open(unixUri(sock), { connections: 4 });
      try {
        assert.equal(s.connectionCount, 4);
        assert.equal(s.reconnectCount, 0);
        const offs = Array.from({ length: 32 }, (_, i) => (2000 + i * 5) * BLOCK);
        await Promise.all(offs.map((o) => s.write(o, [stamped(o, BLOCK, 9)])));
        await s.flush();
        const bufs = offs.map(() => Buffer.alloc(BLOCK));
        await Promise.all(offs.map((o, i) => s.read(o, [bufs[i]])));
        bufs.forEach((b, i) => verifyStamped(b, offs[i], 9));
      } finally {
        await s.close();
      }
    });

    it('rejects requests after close with ESHUTDOWN', async () => {
      const s = await NbdStore.open(unixUri(sock));
      await s.close();
      await rejectsWith(s.read(0, [Buffer.alloc(BLOCK)]), 'ESHUTDOWN');
    });
  });

  describe('nbdkit memory over TCP', () => {
    let port = 0;
    before(async () => {
      port = await freePort();
      servers.push(await startNbdkit({ port, plugin: 'memory', args: ['64M'] }));
    });
    basicSuite('round trips', () => NbdStore.open(`nbd://127.0.0.1:${port}/`));
  });

  describe('block size constraints (nbdkit blocksize-policy: min 4K, max 64K, errors enforced)', () => {
    const sock = path.join(dir, 'bs.sock');
    before(async () => {
      servers.push(
        await startNbdkit({
          socket: sock,
          filters: ['blocksize-policy'],
          plugin: 'memory',
          args: [
            '64M',
            'blocksize-minimum=4096',
            'blocksize-preferred=65536',
            'blocksize-maximum=65536',
            'blocksize-error-policy=error',
          ],
        }),
      );
    });
    basicSuite('split requests', () => NbdStore.open(unixUri(sock)));

    it('honours the advertised sizes and rejects unaligned requests', async () => {
      const s = await NbdStore.open(unixUri(sock));
      try {
        assert.equal(s.blockSize, 4096);
        assert.equal(s.info.maxPayload, 65536);
        await rejectsWith(s.write(512, [Buffer.alloc(512)]), 'EINVAL');
        await rejectsWith(s.read(0, [Buffer.alloc(4096 + 512)]), 'EINVAL');
        // Discard is advisory: an unaligned range shrinks to its aligned interior.
        await s.discard(512, 3 * BLOCK);
      } finally {
        await s.close();
      }
    });
  });

  describe('read-only export (nbdkit -r)', () => {
    const sock = path.join(dir, 'ro.sock');
    before(async () => {
      servers.push(await startNbdkit({ socket: sock, readOnly: true, plugin: 'pattern', args: ['16M'] }));
    });

    it('reads, and rejects every kind of write with EROFS without sending it', async () => {
      const s = await NbdStore.open(unixUri(sock));
      try {
        assert.equal(s.readOnly, true);
        assert.equal(s.features.discard, false);
        assert.equal(s.features.writeZeroes, false);
        const b = Buffer.alloc(BLOCK);
        await s.read(BLOCK, [b]);
        // The pattern plugin stores each 8-byte word's own offset, big-endian.
        assert.equal(b.readBigUInt64BE(8), BigInt(BLOCK + 8));
        await rejectsWith(s.write(0, [b]), 'EROFS');
        await rejectsWith(s.writeZeroes(0, BLOCK, false), 'EROFS');
        await rejectsWith(s.discard(0, BLOCK), 'EROFS');
      } finally {
        await s.close();
      }
    });
  });

  describe('qemu-nbd on a raw file', () => {
    const sock = path.join(dir, 'qemu.sock');
    const file = path.join(dir, 'disk.raw');
    before(async () => {
      fs.writeFileSync(file, Buffer.alloc(0));
      fs.truncateSync(file, 32 * MiB);
      servers.push(await startQemuNbd(file, sock, 'disk0'));
    });
    basicSuite('round trips', () => NbdStore.open(unixUri(sock, 'disk0')));

    it('fails open for an unknown export with ENOENT', async () => {
      await rejectsWith(NbdStore.open(unixUri(sock, 'no-such-export')), 'ENOENT');
    });

    it('writes reach the file', async () => {
      const s = await NbdStore.open(unixUri(sock, 'disk0'), { connections: 2 });
      try {
        const off = 20 * MiB;
        await s.write(off, [stamped(off, 8 * BLOCK, 7)]);
        await s.flush();
        const fd = fs.openSync(file, 'r');
        const b = Buffer.alloc(8 * BLOCK);
        fs.readSync(fd, b, 0, b.length, off);
        fs.closeSync(fd);
        verifyStamped(b, off, 7);
      } finally {
        await s.close();
      }
    });
  });
});
