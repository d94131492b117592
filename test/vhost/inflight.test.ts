/**
 * Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, issue 13 item 3).
 *
 * Restart: a back-end process (inflight-peer.ts, the native VhostDevice holding every request
 * until told) is SIGKILLed with 8 requests popped, 3 of them completed out of order; a new
 * process gets the region back from our front end (reconnect) and must be handed exactly the 5
 * never-completed requests, in the order they were first popped, none of the 3 again; every
 * request then completes exactly once (the front end's ring breaks on a used id that is not in
 * flight) and new requests still flow.
 *
 * Crash point: the same, but the region is rewound to "the last used element was published, its
 * inflight flag not yet cleared" (the spec's used_idx case): that request must not come back.
 *
 * Hostile SET_INFLIGHT_FD (in-process device): a memfd shorter than the region, absurd queue
 * counts and sizes, a size that does not match the geometry, and garbage in the region (unknown
 * version, a flag that is not 0/1, a head beyond the queue, a last batch longer than the queue,
 * a resubmitted head whose descriptor chain is malformed) and a region truncated under the
 * device (SIGBUS contained): each breaks that connection only,
 * nothing reaches JS, and a new front end is served afterwards.
 */
import * as assert from 'node:assert/strict';
import { type ChildProcess, fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bit, encodeInflight, ProtocolFeature, VhostUserRequest as R } from '../../src/frontend/protocol';
import type { BlkResult } from '../../src/frontend/ring-driver';
import { DEFAULT_PROTOCOL_FEATURES, VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { native } from '../../src/native/binding';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT } from '../../src/virtio-blk/spec';
import { startDevice, type TestDevice, tmpSocketPath } from './helpers';

const QUEUE_SIZE = 64;
const INFLIGHT_FEATURES = DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.INFLIGHT_SHMFD);

/** Bytes of one queue's part of the region (16-byte header + 16 per entry, 64-aligned). */
function queueBytes(queueSize: number): number {
  return Math.ceil((16 + 16 * queueSize) / 64) * 64;
}

interface PeerRequest {
  tag: number;
  sector: number;
  type: number;
}

/** A back-end process (inflight-peer.js) and what it reported. */
class Peer {
  readonly requests: PeerRequest[] = [];
  private readonly waiters: (() => void)[] = [];
  private readonly child: ChildProcess;
  private exited: Promise<void>;

  constructor(socketPath: string) {
    this.child = fork(path.join(__dirname, 'inflight-peer.js'), [socketPath], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    this.child.on('message', (m: { kind: string; reqs?: PeerRequest[] }) => {
      if (m.kind === 'requests' && m.reqs !== undefined) this.requests.push(...m.reqs);
      this.seen.push(m.kind);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  private readonly seen: string[] = [];

  /** Resolves once cond() holds after some message (or at once). */
  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  ready(): Promise<void> {
    return this.until(() => this.seen.includes('ready'), 'peer listening');
  }

  async complete(tags: number[]): Promise<void> {
    const n = this.seen.filter((k) => k === 'completed').length;
    this.child.send({ complete: tags });
    await this.until(() => this.seen.filter((k) => k === 'completed').length > n, 'completion');
  }

  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

function stampBlock(i: number): Buffer {
  return Buffer.alloc(4096, `req ${i};`);
}

describe('vhost: inflight I/O tracking (INFLIGHT_SHMFD)', function () {
  this.timeout(60_000);
  const cleanups: (() => void | Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /**
   * 8 writes (sectors 0, 8, ..., 56) popped by a first back end that completes sectors 40, 16
   * and 56 (out of order) and is SIGKILLed; `between` may edit the region before a second back
   * end gets it. Returns what the second back end was handed and the front end's results.
   */
  async function crashAndRecover(between: (fd: number) => void = () => undefined): Promise<{
    resubmitted: number[];
    results: BlkResult[];
    fe: VhostUserFrontend;
    second: Peer;
  }> {
    const sock = tmpSocketPath('inflight');
    cleanups.push(() => fs.rmSync(path.dirname(sock), { recursive: true, force: true }));
    const first = new Peer(sock);
    cleanups.push(() => first.kill());
    await first.ready();
    const fe = new VhostUserFrontend({ queueSize: QUEUE_SIZE, survive: true, protocolFeatures: INFLIGHT_FEATURES });
    cleanups.push(() => fe.close());
    fe.connect(sock);
    await fe.negotiate();
    await fe.start();
    assert.ok(fe.inflightFd >= 0, 'GET_INFLIGHT_FD gave the front end a region');
    const ring = fe.ring(0);
    const results: BlkResult[] = [];
    const done = Array.from({ length: 8 }, (_, i) =>
      ring.write(i * 8, stampBlock(i)).then((r) => {
        results[i] = r;
      }),
    );
    await first.until(() => first.requests.length === 8, '8 requests popped');
    assert.deepEqual(first.requests.map((r) => r.sector), [0, 8, 16, 24, 32, 40, 48, 56]);
    const tagOf = (sector: number): number => first.requests.find((r) => r.sector === sector)?.tag ?? -1;
    for (const s of [40, 16, 56]) await first.complete([tagOf(s)]);
    await Promise.all([done[5], done[2], done[7]]);
    await first.kill();
    await fe.whenDisconnected();
    between(fe.inflightFd);

    const second = new Peer(sock);
    cleanups.push(() => second.kill());
    await second.ready();
    await fe.reconnect(sock);
    await second.until(() => second.requests.length >= 5, 'resubmitted requests');
    return { resubmitted: second.requests.map((r) => r.sector), results, fe, second };
  }

  async function finish(fe: VhostUserFrontend, second: Peer, results: BlkResult[]): Promise<void> {
    await second.complete(second.requests.map((r) => r.tag));
    await fe.ring(0).idle();
    assert.equal(results.length, 8);
    for (const r of results) assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.ok(fe.connected, 'no used id outside the in-flight set (the ring would have broken)');
    assert.equal(fe.ring(0).completed, 8, 'each request completed exactly once');
    // New requests after the resubmitted ones: next avail index = used + in flight.
    const more = fe.ring(0).write(64 * 8, stampBlock(9));
    await second.until(() => second.requests.length === 6, 'a new request');
    assert.deepEqual(second.requests[5], { ...second.requests[5], sector: 512, type: VIRTIO_BLK_T_OUT });
    await second.complete([second.requests[5].tag]);
    assert.equal((await more).status, VIRTIO_BLK_S_OK);
    assert.ok(fe.connected);
  }

  it('resubmits exactly the never-completed requests after SIGKILL, in pop order, none twice', async () => {
    const { resubmitted, results, fe, second } = await crashAndRecover();
    assert.deepEqual(resubmitted, [0, 8, 24, 32, 48]);
    await finish(fe, second, results);
  });

  it('fixes up a last batch that reached the used ring before its inflight flags were cleared', async () => {
    const { resubmitted, results, fe, second } = await crashAndRecover((fd) => {
      // Rewind the region to "sector 56's used element published, flag not cleared": set the
      // flag of the entry with counter 7 again and used_idx back by one (last_batch_head is
      // that entry already: it was the last completion).
      const part = Buffer.alloc(queueBytes(QUEUE_SIZE));
      fs.readSync(fd, part, 0, part.length, 0);
      let head = -1;
      for (let h = 0; h < QUEUE_SIZE; h++) {
        if (part.readBigUInt64LE(16 + 16 * h + 8) === 7n && part[16 + 16 * h] === 0) head = h;
      }
      assert.ok(head >= 0, 'the entry of the 8th request is in the region');
      assert.equal(part.readUInt16LE(12), head, 'last_batch_head is the last completed request');
      assert.equal(part.readUInt16LE(14), 3, 'used_idx after 3 completions');
      part[16 + 16 * head] = 1;
      part.writeUInt16LE(2, 14);
      fs.writeSync(fd, part, 0, part.length, 0);
    });
    assert.deepEqual(resubmitted, [0, 8, 24, 32, 48]);
    await finish(fe, second, results);
  });

  describe('a hostile SET_INFLIGHT_FD breaks that connection only', () => {
    let t: TestDevice;
    beforeEach(() => {
      t = startDevice({ maxQueues: 1 });
      cleanups.push(() => t.close());
    });

    /** A memfd of `size` bytes (GuestRam) with `fill` applied; returns a fd the caller owns. */
    function regionFd(size: number, fill: (b: Buffer) => void = () => undefined): number {
      const ram = new native.GuestRam(size);
      fill(Buffer.from(ram.buffer));
      const fd = fs.openSync(`/proc/self/fd/${ram.fd}`, 'r+');
      ram.close();
      cleanups.push(() => fs.closeSync(fd));
      return fd;
    }

    async function expectBroken(
      send: (fe: VhostUserFrontend) => Promise<unknown>,
      reason: RegExp,
      checkNothingServed = true,
    ): Promise<void> {
      const batches = t.batches.length;
      const fe = new VhostUserFrontend({ queueSize: QUEUE_SIZE, protocolFeatures: INFLIGHT_FEATURES });
      cleanups.push(() => fe.close());
      fe.connect(t.path);
      await fe.negotiate();
      const sent = send(fe).catch(() => undefined);
      const ev = await t.waitEvent((e) => e.type === 'broken');
      assert.equal(ev.type, 'broken');
      if (ev.type === 'broken') assert.match(ev.reason, reason);
      await sent;
      if (checkNothingServed) assert.equal(t.batches.length, batches, 'nothing reached JS');
      await fe.whenDisconnected();
      // The device listens again and serves a well-behaved front end (with inflight tracking).
      t.events.length = 0;
      const good = await VhostUserFrontend.open(t.path, { queueSize: QUEUE_SIZE, protocolFeatures: INFLIGHT_FEATURES });
      cleanups.push(() => good.close());
      const w = await good.ring(0).write(0, stampBlock(1));
      assert.equal(w.status, VIRTIO_BLK_S_OK);
      assert.ok(good.inflightFd >= 0);
      good.close();
      await t.waitEvent((e) => e.type === 'disconnected');
      t.events.length = 0;
    }

    function setInflight(fd: number, numQueues: number, queueSize: number, mmapSize?: number) {
      return (fe: VhostUserFrontend) =>
        fe.request(
          R.SET_INFLIGHT_FD,
          encodeInflight({
            mmapSize: BigInt(mmapSize ?? numQueues * queueBytes(queueSize)),
            mmapOffset: 0n,
            numQueues,
            queueSize,
          }),
          [fd],
        );
    }

    it('refuses a memfd shorter than the region', async () => {
      // 1 queue of 256: 4160 bytes, in a 4096-byte memfd.
      await expectBroken(setInflight(regionFd(4096), 1, 256), /outside the file/);
    });

    it('refuses absurd queue counts and sizes, and a size that does not match them', async () => {
      await expectBroken(setInflight(regionFd(4096), 65535, 64), /65535 queues/);
      await expectBroken(setInflight(regionFd(4096), 1, 65535), /queues of 65535/);
      await expectBroken(setInflight(regionFd(4096), 0, 64), /0 queues/);
      await expectBroken(setInflight(regionFd(4096), 1, 64, 1 << 30), /expected/);
    });

    /**
     * A region for 1 queue of `regionQueue` entries written by `fill`, handed over, then the
     * queue (QUEUE_SIZE) set up.
     */
    function garbage(fill: (b: Buffer) => void, regionQueue = QUEUE_SIZE, fresh = -1) {
      const fd =
        fresh >= 0
          ? fresh
          : regionFd(4096, (b) => {
              b.writeUInt16LE(1, 8); // version
              b.writeUInt16LE(regionQueue, 10); // desc_num
              fill(b);
            });
      return async (fe: VhostUserFrontend) => {
        fe.inflightFd = fs.openSync(`/proc/self/fd/${fd}`, 'r+');
        fe.inflight = { mmapSize: BigInt(queueBytes(regionQueue)), mmapOffset: 0n, numQueues: 1, queueSize: regionQueue };
        await fe.start();
      };
    }
    const entry = (h: number): number => 16 + 16 * h;

    it('refuses garbage in the region: version, flags, heads, batch length', async () => {
      await expectBroken(garbage((b) => b.writeUInt16LE(9, 8)), /version 9/);
      await expectBroken(garbage((b) => (b[entry(3)] = 7)), /entry 3 marked 7/);
      await expectBroken(garbage((b) => (b[entry(100)] = 1), 128), /entry 100 marked 1 beyond the queue size/);
      await expectBroken(garbage((b) => b.writeUInt16LE(0xff00, 14)), /last batch of/);
    });

    it('contains a region the front end shrinks after handing it over (SIGBUS)', async () => {
      let fd = -1;
      await expectBroken(async (fe) => {
        // A fresh region in an unsealed memfd: accepted, then truncated under the device.
        fd = regionFd(4096);
        await garbage(() => undefined, QUEUE_SIZE, fd)(fe);
        const ok = await fe.ring(0).write(0, stampBlock(2));
        assert.equal(ok.status, VIRTIO_BLK_S_OK, 'served while the region is intact');
        fs.ftruncateSync(fd, 0);
        await fe.ring(0).write(8, stampBlock(3));
      }, /SIGBUS/, false); // requests were served before the region vanished
    });

    it('validates a resubmitted head like any descriptor chain', async () => {
      // Head 3 marked in flight, but its descriptor (all zero) is no request at all.
      await expectBroken(
        garbage((b) => {
          b[entry(3)] = 1;
        }),
        /resubmitted|shorter than header/,
      );
    });
  });
});
