/**
 * Protocol paths around stopping and restarting rings, for both of our sides at once: our front
 * end's ring driver (src/frontend) drives our native back end (test/vhost/helpers.ts device over
 * an in-memory disk) and qemu-storage-daemon (the reference back end):
 *   - a queue started at a non-zero ring index, run across the 16-bit wrap (65535 -> 0);
 *   - GET_VRING_BASE after draining, then SET_VRING_BASE at that index and the ring resumed;
 *   - (both) SET_VRING_ENABLE 0 then 1 on one queue while another serves; RESET_DEVICE (RESET_OWNER
 *     where the peer does not offer it), SET_FEATURES and the rings set up again; ADD_MEM_REG of
 *     a second region, REM_MEM_REG of it while stopped, resume, add it again;
 *   - (our back end) REM_MEM_REG of guest RAM while stopped, ADD_MEM_REG again, resume
 *     (qemu-storage-daemon 7.2 drops the connection at the resume after that: a libvhost-user
 *     REM_MEM_REG bug fixed in later QEMU); SET_VRING_ENABLE 0 holds a queue's requests while others are served, 1
 *     serves them; RESET_DEVICE, SET_FEATURES again, resume; REM_MEM_REG of a region not in the
 *     table is refused and the device keeps serving.
 * Every write is read back and compared.
 */
import * as assert from 'node:assert/strict';
import { encodeMemRegion, encodeU64, ProtocolFeature, bit, VhostUserRequest as R } from '../../src/frontend/protocol';
import { GuestMemory } from '../../src/frontend/guest-memory';
import { type DriverRing } from '../../src/frontend/ring-driver';
import { DEFAULT_PROTOCOL_FEATURES, type FrontendOptions, VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VhostError } from '../../src/native/errors';
import { startDevice, type TestDevice } from '../vhost/helpers';
import { type Qsd, startQsd } from '../support/qsd';
import { stamped } from '../support/stamps';

const VIRTIO_BLK_S_OK = 0;
const BLOCK = 4096;

/** Writes then reads back `n` blocks one request each, `depth` at a time. */
async function roundTrips(q: DriverRing, n: number, gen: number, depth = 1, firstSector = 0): Promise<void> {
  for (let k = 0; k < n; k += depth) {
    const batch: Promise<void>[] = [];
    for (let j = k; j < Math.min(n, k + depth); j++) {
      const sector = firstSector + j * 8;
      batch.push(
        (async () => {
          const w = await q.write(sector, stamped(sector * 512, BLOCK, gen));
          assert.equal(w.status, VIRTIO_BLK_S_OK);
          const r = await q.read(sector, BLOCK);
          assert.equal(r.status, VIRTIO_BLK_S_OK);
          assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(sector * 512, BLOCK, gen)), `sector ${sector} read back wrong`);
        })(),
      );
    }
    await Promise.all(batch);
  }
}

interface Peer {
  name: string;
  start(): Promise<{ socket: string; stop(): Promise<void> }>;
}

const peers: Peer[] = [
  {
    name: 'our back end',
    start: async () => {
      const t: TestDevice = startDevice({ maxQueues: 2 });
      return { socket: t.path, stop: async () => t.close() };
    },
  },
  {
    name: 'qemu-storage-daemon @host',
    start: async () => {
      const q: Qsd = await startQsd({ numQueues: 2 });
      return { socket: q.socketPath, stop: () => q.stop() };
    },
  },
];

for (const peer of peers) {
  describe(`frontend ring driver x ${peer.name}: ring index resume and wrap`, function () {
    this.timeout(30000);
    let backend: { socket: string; stop(): Promise<void> };
    let fe: VhostUserFrontend | undefined;

    const open = async (o: FrontendOptions): Promise<VhostUserFrontend> => {
      fe = await VhostUserFrontend.open(backend.socket, { memorySize: 8 << 20, ...o });
      return fe;
    };

    beforeEach(async () => {
      backend = await peer.start();
    });

    afterEach(async () => {
      fe?.close();
      fe = undefined;
      await backend.stop();
    });

    it('starts at ring index 65530 and crosses the 16-bit wrap (serial and 4 in flight)', async () => {
      const f = await open({ queueSize: 8, vringBase: 65530 });
      const q = f.ring(0);
      assert.equal(q.availIndex, 65530);
      await roundTrips(q, 6, 1);
      await roundTrips(q, 12, 2, 4, 1024);
      // 36 requests: 65530 + 36 = 65566 -> 30.
      assert.equal(q.availIndex, 30);
      assert.deepEqual(await f.stop(), [30]);
    });

    it('resumes at the index GET_VRING_BASE reported, several times, across the wrap', async () => {
      const f = await open({ queueSize: 16, vringBase: 65500, queues: 1 });
      const q = f.ring(0);
      let expect = 65500;
      for (let round = 0; round < 4; round++) {
        await roundTrips(q, 10, 10 + round, 3, round * 256);
        expect = (expect + 20) & 0xffff;
        assert.deepEqual(await f.stop(), [expect]);
        await f.resume();
      }
      assert.ok(expect < 65500, 'the index wrapped');
      // Data written before every stop is still there.
      for (let round = 0; round < 4; round++) {
        const r = await q.read(round * 256, BLOCK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(round * 256 * 512, BLOCK, 10 + round)));
      }
    });

    it('SET_VRING_ENABLE 0 on one queue while the other serves, 1 again: the queue continues at its index', async () => {
      const f = await open({ queues: 2, queueSize: 8, vringBase: 65534 });
      await roundTrips(f.ring(0), 1, 20);
      await f.setVringEnable(0, false);
      await roundTrips(f.ring(1), 3, 21, 1, 64);
      await f.setVringEnable(0, true);
      await roundTrips(f.ring(0), 3, 22, 1, 128);
      const r = await f.ring(1).read(0, BLOCK);
      assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(0, BLOCK, 20)), 'data written before the disable');
      // Both queues started at 65534: queue 0 ran 8 requests, queue 1 7.
      assert.deepEqual(await f.stop(), [(65534 + 8) & 0xffff, (65534 + 7) & 0xffff]);
    });

    it('resets the device (RESET_DEVICE when offered, else RESET_OWNER), then SET_FEATURES and the rings again at the same index', async () => {
      const f = await open({
        queues: 1,
        vringBase: 65533,
        protocolFeatures: DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.RESET_DEVICE),
      });
      await roundTrips(f.ring(0), 2, 23);
      await f.ring(0).idle();
      // The spec: RESET_OWNER only when RESET_DEVICE was not negotiated (qemu-storage-daemon 7.2
      // does not offer it and panics on it).
      await f.request((f.protocolFeatures & bit(ProtocolFeature.RESET_DEVICE)) !== 0n ? R.RESET_DEVICE : R.RESET_OWNER);
      await f.request(R.SET_FEATURES, encodeU64(f.ackedFeatures));
      await f.resume();
      await roundTrips(f.ring(0), 3, 24, 1, 128);
      const r = await f.ring(0).read(0, BLOCK);
      assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(0, BLOCK, 23)), 'data written before the reset');
      assert.deepEqual(await f.stop(), [(65533 + 11) & 0xffff]);
    });

    it('ADD_MEM_REG of a second region, REM_MEM_REG of it while stopped, resume; add it again', async () => {
      const f = await open({ queues: 1, vringBase: 400, memoryMessage: 'add-mem-reg' });
      const extra = new GuestMemory(1 << 20, { userBase: 0x7e00_0000_0000n });
      try {
        const region = { guestAddr: 1n << 32n, size: BigInt(extra.size), userAddr: extra.userBase, mmapOffset: 0n };
        await f.request(R.ADD_MEM_REG, encodeMemRegion(region), [extra.fd]);
        await roundTrips(f.ring(0), 2, 25);
        assert.deepEqual(await f.stop(), [404]);
        await f.request(R.REM_MEM_REG, encodeMemRegion(region), [extra.fd]);
        await f.resume();
        await roundTrips(f.ring(0), 2, 26, 1, 128);
        await f.request(R.ADD_MEM_REG, encodeMemRegion(region), [extra.fd]);
        await roundTrips(f.ring(0), 1, 27, 1, 256);
        const r = await f.ring(0).read(0, BLOCK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(0, BLOCK, 25)), 'data written before the removal');
        assert.deepEqual(await f.stop(), [411]);
      } finally {
        extra.close();
      }
    });
  });
}

describe('our back end: SET_VRING_ENABLE, RESET_DEVICE, REM_MEM_REG (driven by our front end)', function () {
  let t: TestDevice;
  let fe: VhostUserFrontend | undefined;

  beforeEach(() => {
    t = startDevice({ maxQueues: 2 });
  });

  afterEach(() => {
    fe?.close();
    fe = undefined;
    t.close();
  });

  it('SET_VRING_ENABLE 0 holds a queue (other queues are served), 1 serves what it held', async () => {
    fe = await VhostUserFrontend.open(t.path, { memorySize: 8 << 20, queues: 2 });
    await fe.setVringEnable(0, false);
    let done = false;
    const held = fe
      .ring(0)
      .write(0, stamped(0, BLOCK, 5))
      .then((r) => {
        done = true;
        return r;
      });
    // A request on queue 1 kicked after queue 0's went through the back end: queue 0's did not.
    await roundTrips(fe.ring(1), 2, 6, 1, 64);
    assert.equal(done, false, 'a request on a disabled queue was served');
    assert.equal(t.batches.filter((b) => b.queue === 0).length, 0);
    await fe.setVringEnable(0, true);
    assert.equal((await held).status, VIRTIO_BLK_S_OK);
    await roundTrips(fe.ring(0), 2, 7);
  });

  it('RESET_DEVICE stops the rings; SET_FEATURES and the rings set up again serve I/O at the same index', async () => {
    fe = await VhostUserFrontend.open(t.path, {
      memorySize: 8 << 20,
      queues: 1,
      vringBase: 65533,
      protocolFeatures: DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.RESET_DEVICE),
    });
    assert.ok((fe.protocolFeatures & bit(ProtocolFeature.RESET_DEVICE)) !== 0n, 'RESET_DEVICE offered');
    await roundTrips(fe.ring(0), 2, 8);
    await fe.ring(0).idle();
    await fe.request(R.RESET_DEVICE);
    await fe.request(R.SET_FEATURES, encodeU64(fe.ackedFeatures));
    await fe.resume();
    await roundTrips(fe.ring(0), 3, 9, 1, 128);
    assert.equal(fe.ring(0).availIndex, (65533 + 10) & 0xffff);
    assert.deepEqual(await fe.stop(), [(65533 + 10) & 0xffff]);
  });

  it('REM_MEM_REG while stopped, ADD_MEM_REG again, resume', async function () {
    const f = (fe = await VhostUserFrontend.open(t.path, { memorySize: 8 << 20, memoryMessage: 'add-mem-reg', queues: 1, vringBase: 300 }));
    const q = f.ring(0);
    await roundTrips(q, 4, 3, 2);
    assert.deepEqual(await f.stop(), [308]);
    await f.request(R.REM_MEM_REG, encodeMemRegion(f.memRegion()), [f.memory.fd]);
    await f.request(R.ADD_MEM_REG, encodeMemRegion(f.memRegion()), [f.memory.fd]);
    await f.resume();
    await roundTrips(q, 4, 4, 2, 512);
    const r = await q.read(0, BLOCK);
    assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(0, BLOCK, 3)));
  });

  it('refuses REM_MEM_REG of a region not in the table and keeps serving', async () => {
    fe = await VhostUserFrontend.open(t.path, { memorySize: 8 << 20, queues: 1, memoryMessage: 'add-mem-reg' });
    const wrong = { ...fe.memRegion(), guestAddr: 1n << 40n };
    await assert.rejects(fe.request(R.REM_MEM_REG, encodeMemRegion(wrong), [fe.memory.fd]), (e: VhostError) => e.code === 'ENACK');
    await roundTrips(fe.ring(0), 2, 11);
    assert.equal(fe.connected, true);
  });
});
