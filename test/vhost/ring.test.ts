/**
 * Native VhostDevice driven through its rings by our own front end (src/frontend): data through
 * IN/OUT/GET_ID with and without indirect descriptors and EVENT_IDX, deferred completions,
 * GET_VRING_BASE waiting for requests still in JS, views that outlive the connection (fenced from
 * the guest, detached and unmapped when completed), native
 * IOERR for a wrong data direction, and malformed chains (the device reports 'broken', drops the
 * connection and serves the next front end).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { VhostError } from '../../src/native/errors';
import { VhostUserRequest, encodeVringState } from '../../src/frontend/protocol';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, type RawDesc } from '../../src/frontend/ring-driver';
import { VhostUserFrontend, type FrontendOptions } from '../../src/frontend/vhost-user-frontend';
import { writeBlkHeader } from '../../src/frontend/virtio-blk';
import { mappingsOf, startDevice, type TestDevice } from './helpers';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/virtio-blk/spec';

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

describe('vhost: native VhostDevice rings (with src/frontend)', function () {
  let t: TestDevice | undefined;
  let fe: VhostUserFrontend | undefined;

  afterEach(function () {
    fe?.close();
    fe = undefined;
    t?.close();
    t = undefined;
  });

  async function open(opts: FrontendOptions = {}): Promise<VhostUserFrontend> {
    fe = await VhostUserFrontend.open((t as TestDevice).path, { memorySize: 16 << 20, ...opts });
    return fe;
  }

  for (const indirect of [false, true]) {
    for (const eventIdx of [false, true]) {
      it(`moves data through IN/OUT/GET_ID/FLUSH (indirect ${indirect}, EVENT_IDX ${eventIdx})`, async function () {
        t = startDevice({ async: eventIdx });
        const f = await open({ indirect, eventIdx, queues: 2 });
        const started = await t.waitEvent((e) => e.type === 'queue-started' && e.queue === 1);
        assert.deepEqual(started, { type: 'queue-started', queue: 1, size: 128 });
        for (const qi of [0, 1]) {
          const q = f.ring(qi);
          const data = pattern(3 * 4096, qi + 1);
          const w = await q.write(8 + qi * 64, data, 3);
          assert.equal(w.status, VIRTIO_BLK_S_OK);
          assert.equal(w.len, 1, 'OUT: only the status byte was written');
          assert.ok(Buffer.from(t.disk.subarray((8 + qi * 64) * 512, (8 + qi * 64) * 512 + data.length)).equals(data));
          const r = await q.read(8 + qi * 64, data.length, 4);
          assert.equal(r.status, VIRTIO_BLK_S_OK);
          assert.equal(r.len, data.length + 1);
          assert.ok((r.data as Buffer).equals(data));
          const id = await q.getId();
          assert.equal(id.status, VIRTIO_BLK_S_OK);
          assert.equal(id.id, 'vbc-test-disk');
          assert.equal((await q.flush()).status, VIRTIO_BLK_S_OK);
        }
        // many requests in flight at once: several per onRequests call
        const q = f.ring(0);
        const all = await Promise.all(Array.from({ length: 40 }, (_x, i) => q.write(1000 + i * 8, pattern(4096, i))));
        assert.ok(all.every((x) => x.status === VIRTIO_BLK_S_OK));
        const reads = await Promise.all(Array.from({ length: 40 }, (_x, i) => q.read(1000 + i * 8, 4096)));
        reads.forEach((x, i) => assert.ok((x.data as Buffer).equals(pattern(4096, i))));
        assert.ok(t.batches.some((b) => b.reqs.length > 1), 'requests are batched per kick');
        assert.deepEqual(t.dev.inflight(), [0, 0]);
        assert.ok(!t.events.some((e) => e.type === 'broken'));
      });
    }
  }

  it('maps guest memory sent with ADD_MEM_REG (CONFIGURE_MEM_SLOTS)', async function () {
    t = startDevice();
    const f = await open({ memoryMessage: 'add-mem-reg' });
    const data = pattern(8192, 4);
    assert.equal((await f.ring(0).write(24, data, 2)).status, VIRTIO_BLK_S_OK);
    assert.ok((((await f.ring(0).read(24, 8192)).data) as Buffer).equals(data));
    assert.ok(t.events.some((e) => e.type === 'log' && e.msg === 'VHOST_USER_ADD_MEM_REG'));
  });

  it('carves requests whatever the framing: header and status sharing descriptors with data', async function () {
    t = startDevice();
    const f = await open({ indirect: false });
    const q = f.ring(0);
    const buf = f.memory.alloc(16 + 1024 + 1, 64);
    writeBlkHeader(f.memory.view, buf.addr, VIRTIO_BLK_T_OUT, 40);
    buf.bytes.set(pattern(1024, 9), 16);
    const out = await q.submitRaw({
      descs: [
        { addr: buf.addr, len: 7 },
        { addr: buf.addr + 7, len: 16 + 500 - 7 },
        { addr: buf.addr + 16 + 500, len: 524 },
        { addr: buf.addr + 16 + 1024, len: 1, write: true },
      ],
    });
    assert.equal(out.len, 1);
    assert.equal(buf.bytes[16 + 1024], VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(t.disk.subarray(40 * 512, 40 * 512 + 1024)).equals(pattern(1024, 9)));

    // IN: data and status in one writable descriptor
    const rd = f.memory.alloc(16 + 1024 + 1, 64);
    writeBlkHeader(f.memory.view, rd.addr, VIRTIO_BLK_T_IN, 40);
    rd.bytes.fill(0xee, 16);
    const inn = await q.submitRaw({ descs: [{ addr: rd.addr, len: 16 }, { addr: rd.addr + 16, len: 1025, write: true }] });
    assert.equal(inn.len, 1025);
    assert.equal(rd.bytes[16 + 1024], VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(rd.bytes.subarray(16, 16 + 1024)).equals(pattern(1024, 9)));
    const last = t.batches[t.batches.length - 1].reqs[0];
    assert.equal(last.type, VIRTIO_BLK_T_IN);
    assert.equal(last.dataLen, 1024);
    assert.equal(last.sector, 40);
  });

  it('answers IOERR natively when the data direction is wrong, without calling JS', async function () {
    t = startDevice();
    const f = await open({ indirect: false });
    const q = f.ring(0);
    const buf = f.memory.alloc(16 + 512 + 1, 64);
    writeBlkHeader(f.memory.view, buf.addr, VIRTIO_BLK_T_IN, 0);
    const before = t.batches.length;
    const used = await q.submitRaw({
      descs: [{ addr: buf.addr, len: 16 }, { addr: buf.addr + 16, len: 512 }, { addr: buf.addr + 528, len: 1, write: true }],
    });
    assert.equal(used.len, 1);
    assert.equal(buf.bytes[528], VIRTIO_BLK_S_IOERR);
    assert.equal(t.batches.length, before);
    assert.ok(t.events.some((e) => e.type === 'log' && e.level === 'warn' && /IOERR/.test(e.msg)));
    assert.equal((await q.read(0, 512)).status, VIRTIO_BLK_S_OK, 'the ring keeps working');
  });

  it('defers the GET_VRING_BASE reply until JS completed the queue, and ignores stale tags', async function () {
    t = startDevice();
    const f = await open({ indirect: true });
    const q = f.ring(0);
    t.held = [];
    const pending = [q.write(0, pattern(4096, 1)), q.write(8, pattern(4096, 2))];
    while ((t.held?.length ?? 0) < 2) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(t.dev.inflight(), [2, 0]);
    let replied = false;
    const reply = f.rawMessage(VhostUserRequest.GET_VRING_BASE, encodeVringState(0, 0)).then((m) => {
      replied = true;
      return m;
    });
    await t.waitEvent((e) => e.type === 'queue-stopped' && e.queue === 0);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(replied, false, 'no reply while requests are in JS');
    const tags = (t.held ?? []).map((h) => h.req.tag);
    t.completeHeld();
    const m = await reply;
    assert.ok(m !== undefined);
    assert.equal(m.payload.readUInt32LE(0), 0);
    assert.equal(m.payload.readUInt32LE(4), 2, 'base = requests popped');
    for (const p of pending) assert.equal((await p).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(t.dev.inflight(), [0, 0]);
    // completing the same tags again is ignored (ring stopped, tags gone)
    t.dev.complete(0, 2, Uint32Array.of(tags[0], 0, tags[1], 0));
    assert.throws(() => t?.dev.complete(0, 1, Uint32Array.of(tags[0], 256)), (e: unknown) => e instanceof VhostError && e.code === 'EINVAL');
    assert.throws(() => t?.dev.complete(0, 2, Uint32Array.of(tags[0], 0)), (e: unknown) => e instanceof VhostError && e.code === 'EINVAL');
  });

  it('keeps segment views of a departed guest usable until completed, without reaching its memory; then unmaps at once', async function () {
    t = startDevice();
    const f = await open();
    const ino = fs.fstatSync(f.memory.fd).ino;
    const q = f.ring(0);
    t.held = [];
    void q.read(16, 8192, 2).catch(() => undefined);
    while ((t.held?.length ?? 0) < 1) await new Promise((r) => setTimeout(r, 5));
    const held = (t.held ?? [])[0];
    t.held = null;
    assert.equal(held.req.segs.length, 2);
    const seg = held.req.segs[0];
    seg.fill(0x11);
    const at = Buffer.from(f.memory.bytes).indexOf(Buffer.alloc(seg.byteLength, 0x11));
    assert.ok(at >= 0, 'while connected the view is the guest memory');
    f.close();
    fe = undefined;
    await t.waitEvent((e) => e.type === 'disconnected');
    assert.deepEqual(t.dev.inflight(), [0, 0]);
    // The request is still in JS: its memory stays mapped, but no longer reaches the guest.
    seg.fill(0x5a);
    assert.equal(seg[100], 0x5a);
    assert.equal(f.memory.bytes[at + 100], 0x11, 'a late write of a departed device does not reach the guest');
    assert.equal(mappingsOf(ino), 2);
    t.dev.complete(0, 1, Uint32Array.of(held.req.tag, 0));
    // Its last request completed: the views are detached and the memory unmapped at once.
    assert.equal(seg.byteLength, 0, 'views are detached, not dangling');
    assert.equal(mappingsOf(ino), 1, 'only the front end still maps the guest RAM');
    // a new front end works
    const g = await open();
    assert.equal((await g.ring(0).write(0, pattern(512, 3))).status, VIRTIO_BLK_S_OK);
  });

  it('after RESET_DEVICE writes no status or used entry for requests that were in flight', async function () {
    t = startDevice();
    const f = await open({ indirect: false });
    const q = f.ring(0);
    t.held = [];
    const hdr = f.memory.alloc(32, 64);
    writeBlkHeader(f.memory.view, hdr.addr, VIRTIO_BLK_T_IN, 0);
    f.memory.bytes[hdr.addr + 16] = 0xff;
    const data = f.memory.alloc(512, 512);
    void q.submitRaw({ descs: [{ addr: hdr.addr, len: 16 }, { addr: data.addr, len: 512, write: true }, { addr: hdr.addr + 16, len: 1, write: true }] }).catch(() => undefined);
    while ((t.held?.length ?? 0) < 1) await new Promise((r) => setTimeout(r, 5));
    const held = (t.held ?? [])[0];
    t.held = null;
    const usedIdx = f.memory.view.getUint16(q.usedAddr + 2, true);
    await f.request(VhostUserRequest.RESET_DEVICE);
    assert.deepEqual(t.dev.inflight(), [0, 0], 'the reset forgot the request');
    t.dev.complete(0, 1, Uint32Array.of(held.req.tag, VIRTIO_BLK_S_OK));
    assert.equal(f.memory.bytes[hdr.addr + 16], 0xff, 'no status byte written after the reset');
    assert.equal(f.memory.view.getUint16(q.usedAddr + 2, true), usedIdx, 'no used entry published after the reset');
  });

  async function expectBroken(descs: RawDesc[] | null, reason: RegExp, opts: { availEntry?: number; indirect?: boolean } = {}): Promise<void> {
    const dev = t as TestDevice;
    const f = await open({ indirect: opts.indirect ?? true });
    const q = f.ring(0);
    const hdr = f.memory.alloc(64, 64);
    writeBlkHeader(f.memory.view, hdr.addr, VIRTIO_BLK_T_IN, 0);
    const chain = descs ?? [{ addr: hdr.addr, len: 16 }, { addr: hdr.addr + 16, len: 1, write: true }];
    const r = q.submitRaw({ descs: chain, ...(opts.availEntry !== undefined ? { availEntry: opts.availEntry } : {}) });
    await assert.rejects(r, (e: unknown) => e instanceof VhostError && e.code === 'ECONNRESET');
    const ev = await dev.waitEvent((e) => e.type === 'broken');
    assert.ok(ev.type === 'broken' && reason.test(ev.reason), `reason: ${ev.type === 'broken' ? ev.reason : ''}`);
    f.close();
    fe = undefined;
    dev.events.length = 0;
    const g = await open();
    assert.equal((await g.ring(0).read(0, 512)).status, VIRTIO_BLK_S_OK);
    g.close();
    fe = undefined;
    await dev.waitEvent((e) => e.type === 'disconnected');
    dev.events.length = 0;
  }

  it('declares the device broken on malformed chains and serves the next front end', async function () {
    t = startDevice();
    const MB = 1 << 20;
    // loop
    await expectBroken([
      { addr: 0, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 },
      { addr: 0, len: 16, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 0 },
    ], /loop/);
    // buffer outside guest memory
    await expectBroken([{ addr: 0, len: 16 }, { addr: 64 * MB, len: 1, write: true }], /outside guest memory/);
    // buffer crossing the end of guest memory
    await expectBroken([{ addr: 0, len: 16 }, { addr: 16 * MB - 4, len: 16, write: true }], /outside guest memory/);
    // total chain length beyond 32 bits
    await expectBroken([{ addr: 0, len: 16 }, { addr: 0, len: 0xffffffff, write: true }], /overflows 32 bits/);
    // nested indirect
    await expectBroken([{ indirect: [{ addr: 0, len: 16 }, { indirect: [{ addr: 0, len: 1, write: true }] }] }], /nested indirect/);
    // indirect together with NEXT
    await expectBroken([
      { indirect: [{ addr: 0, len: 16 }], flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, next: 1 },
      { addr: 0, len: 1, write: true },
    ], /indirect descriptor with NEXT/);
    // indirect table length not a multiple of 16
    await expectBroken([{ indirect: [{ addr: 0, len: 16 }, { addr: 0, len: 1, write: true }], len: 24 }], /indirect table length/);
    // indirect without the feature
    await expectBroken([{ indirect: [{ addr: 0, len: 16 }, { addr: 0, len: 1, write: true }] }], /without VIRTIO_RING_F_INDIRECT_DESC/, { indirect: false });
    // header too short
    await expectBroken([{ addr: 0, len: 8 }, { addr: 0, len: 1, write: true }], /shorter than header/);
    // header in a device-writable buffer
    await expectBroken([{ addr: 0, len: 16, write: true }, { addr: 0, len: 1, write: true }], /header is not device-readable/);
    // status not writable
    await expectBroken([{ addr: 0, len: 16 }, { addr: 0, len: 1 }], /status byte is not device-writable/);
    // next index out of range
    await expectBroken([{ addr: 0, len: 16, flags: VIRTQ_DESC_F_NEXT, nextRaw: 1000 }], /next index out of range/);
    // head index >= queue size
    await expectBroken(null, /chain head 500/, { availEntry: 500 });
  });
});
