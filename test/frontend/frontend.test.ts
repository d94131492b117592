/**
 * The front end (src/frontend) against qemu-storage-daemon's vhost-user-blk export: handshake,
 * config, data integrity (checked through the front end and in the image file), flush,
 * discard / write-zeroes, multi-queue, indirect descriptors and EVENT_IDX on and off, raw
 * chains, the queue-depth runner, stop/close and reconnection.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { VhostError } from '../../src/native/errors';
import { Feature, FLAG_NEED_REPLY, FLAG_VERSION, hasBit, ProtocolFeature, VhostUserRequest } from '../../src/frontend/protocol';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, type DriverRing } from '../../src/frontend/ring-driver';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { writeBlkHeader } from '../../src/frontend/virtio-blk';
import { type Qsd, startQsd } from '../support/qsd';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/virtio-blk/spec';
import { stamped, verifyStamped } from '../support/stamps';

const BLOCK = 4096;
const SECTORS_PER_BLOCK = BLOCK / 512;

async function writeVerify(q: DriverRing, sector: number, blocks: number, gen: number, segments = 1): Promise<void> {
  const w = await q.write(sector, stamped(sector * 512, blocks * BLOCK, gen), segments);
  assert.equal(w.status, VIRTIO_BLK_S_OK);
  const r = await q.read(sector, blocks * BLOCK, segments);
  assert.equal(r.status, VIRTIO_BLK_S_OK);
  assert.equal(r.len, blocks * BLOCK + 1, 'used length = data + status byte');
  verifyStamped(r.data as Buffer, sector * 512, gen);
}

describe('frontend: vhost-user front end against qemu-storage-daemon @host', function () {
  let qsd: Qsd;
  let fe: VhostUserFrontend | undefined;

  beforeEach(async function () {
    qsd = await startQsd({ numQueues: 2 });
  });

  afterEach(async function () {
    fe?.close();
    fe = undefined;
    await qsd.stop();
  });

  it('negotiates features and parses virtio_blk_config', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath, { queues: 2 });
    assert.ok(hasBit(fe.ackedFeatures, Feature.VERSION_1));
    assert.ok(hasBit(fe.ackedFeatures, Feature.VHOST_USER_PROTOCOL_FEATURES));
    assert.ok(!hasBit(fe.ackedFeatures, Feature.RING_PACKED), 'packed rings are never accepted');
    assert.equal(fe.ackedFeatures & ~fe.deviceFeatures, 0n, 'only offered bits are acked');
    for (const f of [ProtocolFeature.REPLY_ACK, ProtocolFeature.MQ, ProtocolFeature.CONFIG]) {
      assert.ok(hasBit(fe.protocolFeatures, f), `protocol feature ${f}`);
    }
    assert.equal(fe.queueNum, 2);
    const c = fe.config;
    assert.ok(c !== undefined);
    assert.equal(c.capacity, BigInt(qsd.size / 512));
    assert.equal(c.blkSize, 512);
    assert.equal(c.numQueues, 2);
    assert.ok(c.segMax > 0);
    assert.ok(c.maxDiscardSectors > 0 && c.maxWriteZeroesSectors > 0);
    const id = await fe.ring(0).getId();
    assert.equal(id.status, VIRTIO_BLK_S_OK);
    assert.ok(id.id.length > 0);
    assert.deepEqual(await fe.stop(), [1, 0], 'GET_VRING_BASE reports the consumed avail index');
  });

  it('writes self-verifying blocks and reads them back (also from the image file)', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath);
    const q = fe.ring(0);
    await writeVerify(q, 0, 1, 1);
    await writeVerify(q, 2048, 16, 1);
    // Overwrite with a new generation, many requests in flight at once.
    const sectors = Array.from({ length: 48 }, (_x, i) => ((i * 7919) % 4096) * SECTORS_PER_BLOCK);
    const unique = [...new Set(sectors)];
    const ws = await Promise.all(unique.map((s) => q.write(s, stamped(s * 512, BLOCK, 2))));
    assert.ok(ws.every((w) => w.status === VIRTIO_BLK_S_OK));
    const rs = await Promise.all(unique.map((s) => q.read(s, BLOCK)));
    rs.forEach((r, i) => verifyStamped(r.data as Buffer, unique[i] * 512, 2));
    assert.equal((await q.flush()).status, VIRTIO_BLK_S_OK);
    const fd = fs.openSync(qsd.imagePath, 'r');
    try {
      for (const s of unique) {
        const b = Buffer.alloc(BLOCK);
        fs.readSync(fd, b, 0, BLOCK, s * 512);
        verifyStamped(b, s * 512, 2);
      }
      const b = Buffer.alloc(16 * BLOCK);
      fs.readSync(fd, b, 0, b.length, 2048 * 512);
      verifyStamped(b.subarray(BLOCK), (2048 + SECTORS_PER_BLOCK) * 512, 1);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('flushes, discards and writes zeroes', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath);
    const q = fe.ring(0);
    await writeVerify(q, 100 * 8, 4, 3);
    assert.equal((await q.flush()).status, VIRTIO_BLK_S_OK);
    const wz = await q.writeZeroes([{ sector: 100 * 8, sectors: 8 }], false);
    assert.equal(wz.status, VIRTIO_BLK_S_OK);
    const r = await q.read(100 * 8, 4 * BLOCK);
    assert.ok((r.data as Buffer).subarray(0, BLOCK).equals(Buffer.alloc(BLOCK)), 'zeroed block reads as zeros');
    verifyStamped((r.data as Buffer).subarray(BLOCK), 101 * 8 * 512, 3);
    const d = await q.discard([{ sector: 101 * 8, sectors: 8 }]);
    assert.equal(d.status, VIRTIO_BLK_S_OK);
  });

  it('drives two queues concurrently', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath, { queues: 2, queueSize: 64 });
    const [q0, q1] = [fe.ring(0), fe.ring(1)];
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 32; i++) {
      const q = i % 2 === 0 ? q0 : q1;
      jobs.push(writeVerify(q, i * 64, 2, 4));
    }
    await Promise.all(jobs);
    // Data written through one queue is read through the other.
    const r = await q1.read(0, 2 * BLOCK);
    verifyStamped(r.data as Buffer, 0, 4);
    assert.ok(q0.completed > 0 && q1.completed > 0);
    assert.deepEqual(await fe.stop(), [q0.availIndex, q1.availIndex]);
  });

  for (const indirect of [true, false]) {
    it(`multi-segment requests with indirect descriptors ${indirect ? 'on' : 'off'}`, async function () {
      fe = await VhostUserFrontend.open(qsd.socketPath, { indirect, queueSize: 32 });
      assert.equal(hasBit(fe.ackedFeatures, Feature.RING_INDIRECT_DESC), indirect);
      const q = fe.ring(0);
      assert.equal(q.indirect, indirect);
      assert.equal(q.descriptorsFor(8), indirect ? 1 : 10);
      await writeVerify(q, 0, 8, 5, 8);
      // More requests than the ring holds at once: the rest wait for free descriptors.
      const all = Array.from({ length: 40 }, (_x, i) => writeVerify(q, 4096 + i * 32, 4, 6, 4));
      await Promise.all(all);
      assert.equal(q.freeDescriptors, 32, 'every descriptor returned');
    });
  }

  for (const eventIdx of [true, false]) {
    it(`runs a queue-depth workload with EVENT_IDX ${eventIdx ? 'on' : 'off'}`, async function () {
      fe = await VhostUserFrontend.open(qsd.socketPath, { eventIdx, queueSize: 64 });
      assert.equal(hasBit(fe.ackedFeatures, Feature.RING_EVENT_IDX), eventIdx);
      const q = fe.ring(0);
      assert.equal(q.eventIdx, eventIdx);
      const count = 600;
      const blocks = 256;
      const w = await q.runQueueDepth({
        depth: 16,
        count,
        maxLen: BLOCK,
        makeRequest(seq, req) {
          req.type = VIRTIO_BLK_T_OUT;
          req.sector = (seq % blocks) * SECTORS_PER_BLOCK;
          req.len = BLOCK;
          req.buf.bytes.set(stamped(req.sector * 512, BLOCK, 7));
        },
      });
      assert.equal(w.completed, count);
      assert.equal(w.errors, 0);
      assert.equal(w.bytes, count * BLOCK);
      assert.ok(w.latencies.every((l) => l > 0));
      assert.ok(w.kicks >= 1 && w.kicks <= count);
      let verified = 0;
      const r = await q.runQueueDepth({
        depth: 8,
        count: blocks,
        maxLen: BLOCK,
        makeRequest(seq, req) {
          req.type = VIRTIO_BLK_T_IN;
          req.sector = seq * SECTORS_PER_BLOCK;
          req.len = BLOCK;
        },
        onComplete(req, status) {
          assert.equal(status, VIRTIO_BLK_S_OK);
          verifyStamped(Buffer.from(req.buf.bytes), req.sector * 512, 7);
          verified++;
        },
      });
      assert.equal(r.completed, blocks);
      assert.equal(verified, blocks);
      assert.equal(q.pending, 0);
    });
  }

  it('submits a raw chain with the header split across descriptors', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath, { indirect: false });
    const q = fe.ring(0);
    const hdr = fe.memory.alloc(16);
    writeBlkHeader(fe.memory.view, hdr.addr, VIRTIO_BLK_T_OUT, 64);
    const data = fe.memory.alloc(BLOCK, 4096);
    data.bytes.set(stamped(64 * 512, BLOCK, 8));
    const status = fe.memory.alloc(1);
    status.bytes[0] = 0xff;
    const used = await q.submitRaw({
      descs: [
        { addr: hdr.addr, len: 5 },
        { addr: hdr.addr + 5, len: 11 },
        { addr: data.addr, len: 1000 },
        { addr: data.addr + 1000, len: BLOCK - 1000 },
        { addr: status.addr, len: 1, write: true },
      ],
    });
    assert.equal(status.bytes[0], VIRTIO_BLK_S_OK);
    assert.ok(used.len >= 1);
    const r = await q.read(64, BLOCK);
    verifyStamped(r.data as Buffer, 64 * 512, 8);
    assert.equal(q.freeDescriptors, q.size);
    for (const b of [hdr, data, status]) fe.memory.release(b);
  });

  it('is dropped by qsd for chains it cannot map: loop, address outside RAM, head out of range', async function () {
    const attempts: ((fe: VhostUserFrontend, q: DriverRing, hdr: number) => Promise<unknown>)[] = [
      (_fe, q, hdr) =>
        q.submitRaw({
          descs: [
            { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 },
            { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 0 },
          ],
        }),
      (fe, q) =>
        q.submitRaw({
          descs: [
            { addr: fe.memory.size + 4096, len: 16 },
            { addr: fe.memory.size + 8192, len: 1, write: true },
          ],
        }),
      (_fe, q, hdr) => q.submitRaw({ descs: [{ addr: hdr, len: 16 }], availEntry: q.size + 5 }),
      // An unknown request with NEED_REPLY: qsd acks it, then drops the connection.
      (fe) => fe.rawMessage(99, Buffer.alloc(8), [], { flags: FLAG_VERSION | FLAG_NEED_REPLY, expectReply: true }).then(() => fe.whenDisconnected()),
    ];
    for (const attempt of attempts) {
      fe = await VhostUserFrontend.open(qsd.socketPath, { indirect: false });
      const q = fe.ring(0);
      const hdr = fe.memory.alloc(16);
      writeBlkHeader(fe.memory.view, hdr.addr, VIRTIO_BLK_T_IN, 0);
      const pending = q.read(0, BLOCK);
      const outcome = await attempt(fe, q, hdr.addr).then(
        () => null,
        (e: unknown) => e,
      );
      await fe.whenDisconnected();
      assert.equal(fe.connected, false);
      if (outcome !== null) {
        assert.ok(outcome instanceof VhostError);
        assert.equal(outcome.code, 'ECONNRESET');
      }
      // Whatever was in flight is failed, not left hanging.
      await pending.then(
        (r) => assert.equal(r.status, VIRTIO_BLK_S_OK),
        (e: VhostError) => assert.equal(e.code, 'ECONNRESET'),
      );
      fe.close();
    }
    // The export serves the next front end normally.
    fe = await VhostUserFrontend.open(qsd.socketPath);
    await writeVerify(fe.ring(0), 0, 1, 12);
  });

  it('sends raw protocol messages', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath);
    const reply = await fe.rawMessage(VhostUserRequest.GET_FEATURES);
    assert.ok(reply !== undefined);
    assert.equal(reply.payload.readBigUInt64LE(0), fe.deviceFeatures);
    await writeVerify(fe.ring(0), 0, 1, 9);
  });

  it('reconnects after close and sees the data written before', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath, { queues: 2 });
    await writeVerify(fe.ring(1), 512, 4, 10);
    await fe.stop();
    fe.close();
    assert.equal(fe.connected, false);
    await assert.rejects(fe.ring(0).read(0, BLOCK), (e: VhostError) => e.code === 'ECONNRESET');
    for (let i = 0; i < 3; i++) {
      fe = await VhostUserFrontend.open(qsd.socketPath, { queues: 1 + (i % 2) });
      const r = await fe.ring(0).read(512, 4 * BLOCK);
      verifyStamped(r.data as Buffer, 512 * 512, 10);
      fe.close();
    }
  });

  it('fails pending requests when the back end goes away', async function () {
    fe = await VhostUserFrontend.open(qsd.socketPath);
    const gone = fe.whenDisconnected();
    const q = fe.ring(0);
    await writeVerify(q, 0, 1, 11);
    await qsd.stop();
    await gone;
    await assert.rejects(q.read(0, BLOCK), (e: VhostError) => e.code === 'ECONNRESET');
    await assert.rejects(fe.request(VhostUserRequest.GET_FEATURES), (e: VhostError) => e.code === 'ENOTCONN');
  });
});
