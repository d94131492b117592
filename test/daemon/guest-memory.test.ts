/**
 * Guest memory against the whole daemon in-process (two volumes, a shared cache), driven by our
 * own front end (issue 9): regions of any size (4 GiB, 6 GiB, 1 TiB sparse; one SET_MEM_TABLE
 * or ADD_MEM_REG), a memfd shrunk under a running queue (SIGBUS contained: only that device is
 * dropped), requests beyond seg_max / size_max / the queue size, an oversized DISCARD table,
 * and the resources of 1,000 reconnects. Volume b serves in parallel throughout: every hostile
 * case checks that the other volume keeps answering with the right data.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import {
  encodeMemRegion,
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
  VhostUserRequest as R,
} from '../../src/frontend/protocol';
import type { RawDesc } from '../../src/frontend/ring-driver';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { writeBlkHeader } from '../../src/frontend/virtio-blk';
import { native } from '../../src/native/binding';
import { type NativeGuestRam } from '../../src/native/types';
import { silentLogger } from '../../src/util/logger';
import { mappingsOf } from '../vhost/helpers';
import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../src/virtio-blk/spec';
import { stamp, stamps } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const BLOCK = 4096;
/** Where the big region sits in guest-physical space (like QEMU's RAM above 4 GiB). */
const HIGH_GPA = 4 * GiB;
const HIGH_USER = 0x7e00_0000_0000n;

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

describe('guest memory (daemon in-process, our front end)', function () {
  this.timeout(120_000);
  let dir: string;
  let config: DaemonConfig;
  let daemon: Daemon;
  const open: VhostUserFrontend[] = [];
  const rams: NativeGuestRam[] = [];
  let b: VhostUserFrontend;

  async function connect(vol: 'a' | 'b', queueSize = 128): Promise<VhostUserFrontend> {
    const fe = await VhostUserFrontend.open(path.join(dir, `${vol}.sock`), { queues: 1, queueSize, memorySize: 16 * MiB });
    open.push(fe);
    return fe;
  }

  /** A sparse memfd of `size` bytes given to the back end at HIGH_GPA (ADD_MEM_REG or a new table). */
  async function addHighRegion(fe: VhostUserFrontend, size: number, via: 'add-mem-reg' | 'set-mem-table'): Promise<NativeGuestRam> {
    const ram = new native.GuestRam(size);
    rams.push(ram);
    const high = { guestAddr: BigInt(HIGH_GPA), size: BigInt(size), userAddr: HIGH_USER, mmapOffset: 0n };
    if (via === 'add-mem-reg') await fe.request(R.ADD_MEM_REG, encodeMemRegion(high), [ram.fd]);
    else await fe.request(R.SET_MEM_TABLE, encodeMemTable([fe.memRegion(), high]), [fe.memory.fd, ram.fd]);
    return ram;
  }

  /** One request as an explicit chain: header and status in low RAM, data where `data` says. */
  async function rawRequest(fe: VhostUserFrontend, type: number, sector: number, data: RawDesc[], indirect = false): Promise<number> {
    const hdr = fe.memory.alloc(32, 64);
    try {
      writeBlkHeader(fe.memory.view, hdr.addr, type, sector);
      fe.memory.bytes[hdr.addr + 16] = 0xff;
      const descs: RawDesc[] = [{ addr: hdr.addr, len: 16 }, ...data, { addr: hdr.addr + 16, len: 1, write: true }];
      await fe.ring(0).submitRaw({ descs: indirect ? [{ indirect: descs }] : descs });
      return fe.memory.bytes[hdr.addr + 16] as number;
    } finally {
      fe.memory.release(hdr);
    }
  }

  async function waitDisconnected(vol: string): Promise<void> {
    while (daemon.getVolume(vol)?.connected === true) await new Promise((r) => setImmediate(r));
  }

  /** Volume b answers with the data written in `before` (keeps serving while a is attacked). */
  async function checkB(): Promise<void> {
    const q = b.ring(0);
    const rs = await Promise.all([0, 1, 2, 3].map((blk) => q.read(blk * 8, BLOCK)));
    rs.forEach((r, blk) => {
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.ok(Buffer.from(r.data as Uint8Array).equals(stamp('b', blk, 1)), `b block ${blk}`);
    });
  }

  before(async () => {
    dir = tmpDir('gm');
    config = validateConfig({
      cache: { path: path.join(dir, 'cache.img'), size: '16M' },
      volumes: ['a', 'b'].map((n) => ({
        name: n,
        socketPath: path.join(dir, `${n}.sock`),
        backing: path.join(dir, `${n}.img`),
        size: '64M',
        numQueues: 1,
        queueSize: 256,
      })),
    });
    daemon = await Daemon.start(config, silentLogger);
    b = await connect('b');
    for (let blk = 0; blk < 4; blk++) assert.equal((await b.ring(0).write(blk * 8, stamp('b', blk, 1))).status, VIRTIO_BLK_S_OK);
  });

  afterEach(() => {
    for (const fe of open.splice(0)) if (fe !== b) fe.close();
    open.push(b);
    for (const r of rams.splice(0)) r.close();
  });

  after(async () => {
    for (const fe of open.splice(0)) fe.close();
    await daemon.shutdown();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [size, via, offsets] of [
    [4 * GiB, 'set-mem-table', [4 * GiB - MiB, GiB - 32 * 1024, 3 * GiB + 5 * BLOCK]],
    [6 * GiB, 'add-mem-reg', [5 * GiB + BLOCK, 6 * GiB - 64 * 1024, 2 * GiB - 8 * 1024]],
    [1024 * GiB, 'add-mem-reg', [1024 * GiB - 2 * MiB, 700 * GiB + 12 * BLOCK, 4 * GiB]],
  ] as const) {
    it(`does real I/O from a ${size / GiB} GiB sparse region above 4 GiB (${via})`, async () => {
      const fe = await connect('a');
      const ram = await addHighRegion(fe, size, via);
      let gen = 1;
      for (const off of offsets) {
        // Write 64 KiB stamped data from the region, in two segments of which the second
        // starts at a window boundary when off is one 32 KiB before it.
        const blocks = 16;
        const src = new Uint8Array(ram.window(off - (off % BLOCK), blocks * BLOCK));
        const data = stamps('a', off / BLOCK, blocks, gen);
        src.set(data);
        const half = (blocks / 2) * BLOCK;
        const sector = (off / BLOCK) % 4096 * 8;
        const w = await rawRequest(fe, VIRTIO_BLK_T_OUT, sector, [
          { addr: HIGH_GPA + off, len: half },
          { addr: HIGH_GPA + off + half, len: half },
        ]);
        assert.equal(w, VIRTIO_BLK_S_OK, `write from region offset ${off}`);
        // Read it back into another place of the region (one segment in low RAM, one high).
        const dstOff = off >= 8 * MiB ? off - 8 * MiB : off + 8 * MiB;
        const low = fe.memory.alloc(half, BLOCK);
        const r = await rawRequest(fe, VIRTIO_BLK_T_IN, sector, [
          { addr: low.addr, len: half, write: true },
          { addr: HIGH_GPA + dstOff, len: half, write: true },
        ]);
        assert.equal(r, VIRTIO_BLK_S_OK, `read into region offset ${dstOff}`);
        const got = Buffer.concat([Buffer.from(low.bytes), Buffer.from(ram.window(dstOff, half))]);
        fe.memory.release(low);
        assert.ok(got.equals(data), `data read back at region offset ${dstOff} (and low RAM) matches`);
        gen++;
      }
      await checkB();
    });
  }

  it('serves requests whose segments lie in 24 regions added one by one (CONFIGURE_MEM_SLOTS)', async () => {
    const fe = await connect('a');
    const regions: NativeGuestRam[] = [];
    for (let i = 0; i < 24; i++) {
      const ram = new native.GuestRam(2 * MiB);
      rams.push(ram);
      regions.push(ram);
      const r = { guestAddr: BigInt(HIGH_GPA + i * GiB), size: BigInt(2 * MiB), userAddr: HIGH_USER + BigInt(i) * BigInt(GiB), mmapOffset: 0n };
      await fe.request(R.ADD_MEM_REG, encodeMemRegion(r), [ram.fd]);
    }
    const data = stamps('a', 100, regions.length, 7);
    regions.forEach((ram, i) => new Uint8Array(ram.buffer).set(data.subarray(i * BLOCK, (i + 1) * BLOCK)));
    const segs = (at: number, write: boolean): RawDesc[] => regions.map((_r, i) => ({ addr: HIGH_GPA + i * GiB + at, len: BLOCK, write }));
    assert.equal(await rawRequest(fe, VIRTIO_BLK_T_OUT, 800, segs(0, false)), VIRTIO_BLK_S_OK);
    assert.equal(await rawRequest(fe, VIRTIO_BLK_T_IN, 800, segs(MiB, true)), VIRTIO_BLK_S_OK);
    const got = Buffer.concat(regions.map((ram) => Buffer.from(ram.buffer, MiB, BLOCK)));
    assert.ok(got.equals(data), 'each region received its own block');
    await checkB();
  });

  it('refuses a region the memfd does not cover (fstat at ADD_MEM_REG), and keeps the device', async () => {
    const fe = await connect('a');
    const ram = new native.GuestRam(MiB);
    rams.push(ram);
    for (const [size, offset] of [[2 * MiB, 0], [MiB, 4096], [MiB, 2 ** 62]] as const) {
      const r = { guestAddr: BigInt(HIGH_GPA), size: BigInt(size), userAddr: HIGH_USER, mmapOffset: BigInt(offset) };
      await assert.rejects(fe.request(R.ADD_MEM_REG, encodeMemRegion(r), [ram.fd]), (e: unknown) => (e as { code?: string }).code === 'ENACK');
    }
    assert.equal((await fe.ring(0).write(80, stamp('a', 10, 1))).status, VIRTIO_BLK_S_OK, 'the device still serves');
  });

  it('drops only the device whose memfd shrinks under a running queue (SIGBUS contained)', async () => {
    for (const where of ['header', 'write data'] as const) {
      const fe = await connect('a');
      const ram = await addHighRegion(fe, 64 * MiB, 'add-mem-reg');
      // The request lives in the region that is about to vanish: its header (copied by native
      // code) or its write data (read by the cache in JS).
      const view = new DataView(ram.buffer);
      writeBlkHeader(view, 0, VIRTIO_BLK_T_OUT, 64);
      new Uint8Array(ram.buffer).fill(0x5a, BLOCK, 2 * BLOCK);
      fs.ftruncateSync(ram.fd, 0);
      const hdr = fe.memory.alloc(32, 64);
      writeBlkHeader(fe.memory.view, hdr.addr, VIRTIO_BLK_T_OUT, 64);
      const descs: RawDesc[] =
        where === 'header'
          ? [{ addr: HIGH_GPA, len: 16 }, { addr: fe.memory.size - BLOCK, len: BLOCK }, { addr: hdr.addr + 16, len: 1, write: true }]
          : [{ addr: hdr.addr, len: 16 }, { addr: HIGH_GPA + BLOCK, len: BLOCK }, { addr: hdr.addr + 16, len: 1, write: true }];
      const during = checkB();
      const outcome = await Promise.race([
        fe.ring(0).submitRaw({ descs }).then(() => 'answered' as const, () => 'dropped' as const),
        fe.whenDisconnected().then(() => 'dropped' as const),
      ]);
      await during;
      if (where === 'header') {
        // Native code faulted on the header: the device is marked broken and dropped (the
        // zeroed header may get an IOERR answer first).
        assert.ok(outcome === 'dropped' || fe.memory.bytes[hdr.addr + 16] === VIRTIO_BLK_S_IOERR, outcome);
        await fe.whenDisconnected();
      } else {
        // The data is unreadable: either the device was dropped (SIGBUS in JS) or the request
        // failed (EFAULT in the kernel); never OK, never a crash.
        assert.ok(outcome === 'dropped' || fe.memory.bytes[hdr.addr + 16] === VIRTIO_BLK_S_IOERR, `${where}: ${outcome}`);
        fe.close();
      }
      await checkB();
      // Volume a serves its next front end.
      const again = await connect('a');
      assert.equal((await again.ring(0).write(64, stamp('a', 8, 9))).status, VIRTIO_BLK_S_OK);
      assert.ok(Buffer.from((await again.ring(0).read(64, BLOCK)).data as Uint8Array).equals(stamp('a', 8, 9)));
      again.close();
    }
    assert.equal(daemon.getVolume('b')?.connected, true);
  });

  it('drops only the device whose ring memfd shrinks after SET_MEM_TABLE: the next kick faults (SIGBUS contained)', async () => {
    // A front end with its queue in a region of its own (no ring driver of ours touches it).
    const fe = new VhostUserFrontend({ queues: 1, queueSize: 64, memorySize: 16 * MiB });
    open.push(fe);
    fe.connect(path.join(dir, 'a.sock'));
    await fe.negotiate();
    const ring = new native.GuestRam(MiB);
    rams.push(ring);
    const table = [fe.memRegion(), { guestAddr: BigInt(HIGH_GPA), size: BigInt(MiB), userAddr: HIGH_USER, mmapOffset: 0n }];
    await fe.request(R.SET_MEM_TABLE, encodeMemTable(table), [fe.memory.fd, ring.fd]);
    const kick = new native.EventFd();
    const call = new native.EventFd();
    try {
      await fe.request(R.SET_VRING_NUM, encodeVringState(0, 64));
      await fe.request(R.SET_VRING_BASE, encodeVringState(0, 0));
      await fe.request(R.SET_VRING_ADDR, encodeVringAddr({ index: 0, flags: 0, desc: HIGH_USER, avail: HIGH_USER + 4096n, used: HIGH_USER + 8192n, log: 0n }));
      await fe.request(R.SET_VRING_KICK, encodeU64(0), [kick.fd]);
      await fe.request(R.SET_VRING_CALL, encodeU64(0), [call.fd]);
      await fe.request(R.SET_VRING_ENABLE, encodeVringState(0, 1));
      fs.ftruncateSync(ring.fd, 0);
      const during = checkB();
      kick.signal();
      await fe.whenDisconnected();
      await during;
    } finally {
      kick.close();
      call.close();
    }
    await checkB();
    const again = await connect('a');
    assert.equal((await again.ring(0).write(72, stamp('a', 9, 1))).status, VIRTIO_BLK_S_OK);
  });

  it('answers IOERR for chains over seg_max, size_max or the queue size (an indirect table of queue size + 3)', async () => {
    // seg_max (126) on a 256-entry queue, so that only seg_max is exceeded.
    const big = await connect('a', 256);
    const bbuf = big.memory.alloc(MiB, BLOCK);
    const bseg = (n: number): RawDesc[] => Array.from({ length: n }, (_x, i) => ({ addr: bbuf.addr + i * 512, len: 512 }));
    assert.equal(await rawRequest(big, VIRTIO_BLK_T_OUT, 0, bseg(126), true), VIRTIO_BLK_S_OK, 'seg_max data segments are fine');
    assert.equal(await rawRequest(big, VIRTIO_BLK_T_OUT, 0, bseg(127), true), VIRTIO_BLK_S_IOERR, 'seg_max + 1 data segments');
    // size_max is 1 MiB per segment.
    const two = big.memory.alloc(2 * MiB, BLOCK);
    assert.equal(await rawRequest(big, VIRTIO_BLK_T_OUT, 0, [{ addr: two.addr, len: MiB }]), VIRTIO_BLK_S_OK);
    assert.equal(await rawRequest(big, VIRTIO_BLK_T_OUT, 0, [{ addr: two.addr, len: 2 * MiB }]), VIRTIO_BLK_S_IOERR, 'a 2 MiB segment');
    assert.ok(big.connected, 'an error status, not a dropped device');
    const gone = waitDisconnected('a');
    big.close();
    await gone;
    // Queue size 64: an indirect table of 67 entries (65 data segments, under seg_max).
    const fe = await connect('a', 64);
    const buf = fe.memory.alloc(MiB, BLOCK);
    const seg = (n: number): RawDesc[] => Array.from({ length: n }, (_x, i) => ({ addr: buf.addr + i * 512, len: 512 }));
    assert.equal(await rawRequest(fe, VIRTIO_BLK_T_OUT, 0, seg(62), true), VIRTIO_BLK_S_OK, 'a table of queue size entries');
    assert.equal(await rawRequest(fe, VIRTIO_BLK_T_OUT, 0, seg(65), true), VIRTIO_BLK_S_IOERR, 'a table of queue size + 3');
    assert.ok(fe.connected, 'an error status, not a dropped device');
    await checkB();
  });

  it('refuses an oversized DISCARD table from its length: IOERR at once, RSS bounded', async () => {
    const fe = await connect('a');
    // 126 descriptors of 1 MiB over the same buffer: a 126 MiB table (8 M ranges) within seg_max
    // and size_max, so only the 32-segment limit of DISCARD refuses it.
    const table = fe.memory.alloc(MiB, BLOCK);
    const before = process.memoryUsage().rss;
    const st = await rawRequest(fe, VIRTIO_BLK_T_DISCARD, 0, Array.from({ length: 126 }, () => ({ addr: table.addr, len: MiB })));
    const grew = process.memoryUsage().rss - before;
    assert.equal(st, VIRTIO_BLK_S_IOERR);
    assert.ok(grew < 64 * MiB, `RSS grew by ${Math.round(grew / MiB)} MiB for a refused table`);
    await checkB();
  });

  it('unmaps a departed guest at once and keeps RSS and fds bounded over 1,000 reconnects', async function () {
    this.timeout(600_000);
    const round = async (i: number): Promise<void> => {
      const fe = await VhostUserFrontend.open(path.join(dir, 'a.sock'), { queues: 1, queueSize: 64, memorySize: 4 * MiB });
      const ino = fs.fstatSync(fe.memory.fd).ino;
      const q = fe.ring(0);
      assert.equal((await q.write((i % 256) * 8, stamp('a', i % 256, i))).status, VIRTIO_BLK_S_OK);
      assert.ok(Buffer.from((await q.read((i % 256) * 8, BLOCK)).data as Uint8Array).equals(stamp('a', i % 256, i)));
      assert.equal(mappingsOf(ino), 2, 'front end and daemon map the guest RAM');
      const gone = waitDisconnected('a');
      fe.close();
      await gone;
      assert.equal(mappingsOf(ino), 1, 'the daemon unmapped the departed guest at once (only the front end maps it)');
    };
    for (let i = 0; i < 50; i++) await round(i);
    const fds0 = openFds();
    const rss0 = process.memoryUsage().rss;
    for (let i = 50; i < 1050; i++) await round(i);
    const fds1 = openFds();
    const rss1 = process.memoryUsage().rss;
    console.log(`      1,000 reconnects: open fds ${fds0} -> ${fds1}, RSS ${(rss0 / MiB).toFixed(1)} -> ${(rss1 / MiB).toFixed(1)} MiB`);
    assert.ok(fds1 <= fds0 + 2, `open fds ${fds0} -> ${fds1}`);
    assert.ok(rss1 - rss0 < 48 * MiB, `RSS ${rss0} -> ${rss1}`);
    await checkB();
  });
});
