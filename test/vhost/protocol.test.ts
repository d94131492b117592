/**
 * Native VhostDevice: socket creation (mode, EADDRINUSE, stale socket), and vhost-user messages
 * that need no fds exchanged over a plain unix socket: feature queries, config space, unknown
 * and malformed messages (the device drops the connection and serves the next one).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../../src/native/binding';
import { VhostError } from '../../src/native/errors';
import { BLK_FEATURES, RawClient, blkConfig, startDevice, tmpSocketPath, u64, type TestDevice } from './helpers';

const GET_FEATURES = 1;
const SET_FEATURES = 2;
const GET_PROTOCOL_FEATURES = 15;
const SET_PROTOCOL_FEATURES = 16;
const GET_QUEUE_NUM = 17;
const GET_CONFIG = 24;
const SET_CONFIG = 25;
const GET_INFLIGHT_FD = 31;
const GET_STATUS = 40;
const GET_MAX_MEM_SLOTS = 36;
const NEED_REPLY = 0x8;
const REPLY_ACK_BIT = 3n;

function configMsg(offset: number, size: number, data?: Uint8Array): Buffer {
  const b = Buffer.alloc(12 + size);
  b.writeUInt32LE(offset, 0);
  b.writeUInt32LE(size, 4);
  if (data !== undefined) b.set(data, 12);
  return b;
}

describe('vhost: native VhostDevice socket and protocol', function () {
  let t: TestDevice | undefined;

  afterEach(function () {
    t?.close();
    t = undefined;
  });

  it('creates the socket with mode 0600, reports listening and removes it on close', async function () {
    t = startDevice();
    assert.equal(fs.statSync(t.path).mode & 0o777, 0o600);
    assert.ok(fs.statSync(t.path).isSocket());
    const ev = await t.waitEvent((e) => e.type === 'listening');
    assert.deepEqual(ev, { type: 'listening', path: t.path });
    assert.equal(t.dev.connected, false);
    assert.deepEqual(t.dev.inflight(), [0, 0]);
    t.dev.close();
    assert.equal(fs.existsSync(t.path), false);
  });

  it('honours socketMode', function () {
    t = startDevice({ socketMode: 0o660 });
    assert.equal(fs.statSync(t.path).mode & 0o777, 0o660);
  });

  it('refuses a socket path a live listener uses (EADDRINUSE), for ours and for others', async function () {
    t = startDevice();
    assert.throws(
      () => startDevice({ socketPath: t?.path }),
      (e: unknown) => e instanceof VhostError && e.code === 'EADDRINUSE',
    );
    const other = tmpSocketPath('other');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(other, resolve));
    try {
      assert.throws(
        () => startDevice({ socketPath: other }),
        (e: unknown) => e instanceof VhostError && e.code === 'EADDRINUSE',
      );
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(path.dirname(other), { recursive: true, force: true });
    }
    // the first device still serves
    const c = await RawClient.connect(t.path);
    assert.equal(await c.requestU64(GET_QUEUE_NUM), 2n);
    c.destroy();
  });

  it('replaces a stale socket file, and refuses a path that is not a socket', async function () {
    const p = tmpSocketPath('stale');
    // a process that listens and dies without unlinking leaves a stale socket
    const r = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(p)}, () => process.exit(0))`]);
    assert.equal(r.status, 0);
    assert.ok(fs.statSync(p).isSocket());
    t = startDevice({ socketPath: p });
    const c = await RawClient.connect(p);
    assert.equal(await c.requestU64(GET_MAX_MEM_SLOTS), 32n);
    c.destroy();

    const file = tmpSocketPath('file');
    fs.writeFileSync(file, 'x');
    assert.throws(
      () => startDevice({ socketPath: file }),
      (e: unknown) => e instanceof VhostError && e.code === 'EEXIST',
    );
    assert.equal(fs.readFileSync(file, 'utf8'), 'x');
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });

  it('validates its options', function () {
    const base = {
      socketPath: tmpSocketPath('opts'),
      maxQueues: 1,
      maxQueueSize: 256,
      maxSegments: 126,
      maxSegmentSize: 1 << 20,
      deviceFeatures: 0n,
      config: new Uint8Array(60),
      onRequests: () => undefined,
      onEvent: () => undefined,
    };
    const bad = (o: object, why?: string): void =>
      assert.throws(() => new native.VhostDevice({ ...base, ...o }), (e: unknown) => e instanceof VhostError && e.code === 'EINVAL', why);
    bad({ maxQueueSize: 100 });
    bad({ maxQueues: 0 });
    bad({ maxQueues: 65 });
    bad({ config: new Uint8Array(257) });
    bad({ maxSegments: 0 });
    bad({ maxSegmentSize: 2 ** 30 + 1 }, 'a data piece must fit one 1 GiB window stride');
    bad({ fd: 3 });
    fs.rmSync(path.dirname(base.socketPath), { recursive: true, force: true });
  });

  it('answers feature, queue, memory-slot and config queries', async function () {
    t = startDevice({ maxQueues: 4 });
    const c = await RawClient.connect(t.path);
    await t.waitEvent((e) => e.type === 'connected');
    assert.equal(t.dev.connected, true);
    const feats = await c.requestU64(GET_FEATURES);
    assert.equal(feats, BLK_FEATURES | (1n << 32n) | (1n << 28n) | (1n << 29n) | (1n << 30n));
    const pf = await c.requestU64(GET_PROTOCOL_FEATURES);
    // MQ, REPLY_ACK, CONFIG, INFLIGHT_SHMFD, RESET_DEVICE, CONFIGURE_MEM_SLOTS
    assert.equal(pf, (1n << 0n) | (1n << 3n) | (1n << 9n) | (1n << 12n) | (1n << 13n) | (1n << 15n));
    assert.equal(await c.requestU64(GET_QUEUE_NUM), 4n);
    assert.equal(await c.requestU64(GET_MAX_MEM_SLOTS), 32n);

    c.send(GET_CONFIG, configMsg(0, 60));
    let r = await c.read();
    assert.equal(r.request, GET_CONFIG);
    assert.equal(r.flags, 0x5);
    assert.equal(r.payload.length, 72);
    assert.deepEqual(new Uint8Array(r.payload.subarray(12)), blkConfig(4));

    // beyond the image (but inside 256 bytes): zeros; setConfig replaces the image
    const img = blkConfig(4);
    img[32] = 1;
    t.dev.setConfig(img);
    c.send(GET_CONFIG, configMsg(30, 40));
    r = await c.read();
    assert.equal(r.payload.readUInt32LE(0), 30);
    assert.equal(r.payload.readUInt32LE(4), 40);
    assert.equal(r.payload[12 + 2], 1);
    assert.ok(r.payload.subarray(12 + 30).equals(Buffer.alloc(10)));

    // out of range: empty reply payload (error)
    c.send(GET_CONFIG, configMsg(250, 10));
    r = await c.read();
    assert.equal(r.request, GET_CONFIG);
    assert.equal(r.payload.length, 0);

    const debug = t.events.filter((e) => e.type === 'log' && e.level === 'debug').map((e) => (e.type === 'log' ? e.msg : ''));
    assert.ok(debug.includes('VHOST_USER_GET_FEATURES'));
    assert.ok(debug.includes('VHOST_USER_GET_CONFIG'));
    c.destroy();
    const d = await t.waitEvent((e) => e.type === 'disconnected');
    assert.deepEqual(d, { type: 'disconnected', reason: 'front end closed the connection' });
    assert.equal(t.dev.connected, false);
  });

  it('reports SET_CONFIG as config-write and acks it with REPLY_ACK', async function () {
    t = startDevice();
    const c = await RawClient.connect(t.path);
    c.send(SET_PROTOCOL_FEATURES, u64(1n << REPLY_ACK_BIT));
    c.send(SET_CONFIG, configMsg(32, 1, Uint8Array.of(1)), 1 | NEED_REPLY);
    const r = await c.read();
    assert.equal(r.request, SET_CONFIG);
    assert.equal(r.payload.readBigUInt64LE(0), 0n);
    const ev = await t.waitEvent((e) => e.type === 'config-write');
    assert.deepEqual(ev, { type: 'config-write', offset: 32, data: Uint8Array.of(1) });
    c.destroy();
  });

  it('answers an unknown message failure when NEED_REPLY is set with REPLY_ACK, ignores it otherwise', async function () {
    t = startDevice();
    const c = await RawClient.connect(t.path);
    c.send(99, Buffer.alloc(24)); // no reply wanted: logged only
    c.send(SET_PROTOCOL_FEATURES, u64(1n << REPLY_ACK_BIT));
    c.send(99, Buffer.alloc(8), 1 | NEED_REPLY);
    const r = await c.read();
    assert.equal(r.request, 99);
    assert.equal(r.flags, 0x5);
    assert.equal(r.payload.readBigUInt64LE(0), 1n);
    // unsupported but known (SET_LOG_FD) with NEED_REPLY: failure too
    c.send(7, new Uint8Array(0), 1 | NEED_REPLY);
    assert.equal((await c.read()).payload.readBigUInt64LE(0), 1n);
    assert.equal(await c.requestU64(GET_QUEUE_NUM), 2n);
    assert.ok(t.events.some((e) => e.type === 'log' && e.level === 'warn' && e.msg === 'VHOST_USER_UNKNOWN_99'));
    assert.ok(t.events.some((e) => e.type === 'log' && e.level === 'warn' && e.msg === 'VHOST_USER_SET_LOG_FD'));
    assert.ok(!t.events.some((e) => e.type === 'broken'));
    c.destroy();
  });

  async function expectBroken(send: (c: RawClient) => void, reason: RegExp): Promise<void> {
    const dev = t as TestDevice;
    const c = await RawClient.connect(dev.path);
    send(c);
    await c.whenClosed();
    const ev = await dev.waitEvent((e) => e.type === 'broken');
    assert.ok(ev.type === 'broken' && reason.test(ev.reason), `reason: ${ev.type === 'broken' ? ev.reason : ''}`);
    dev.events.length = 0;
    // the next front end is served
    const next = await RawClient.connect(dev.path);
    assert.equal(await next.requestU64(GET_QUEUE_NUM), 2n);
    next.destroy();
    await dev.waitEvent((e) => e.type === 'disconnected');
    dev.events.length = 0;
  }

  it('drops a front end that sends malformed headers and serves the next one', async function () {
    t = startDevice();
    await expectBroken((c) => c.send(GET_FEATURES, new Uint8Array(0), 1, 100000), /announces a payload of 100000 bytes/);
    await expectBroken((c) => c.send(GET_FEATURES, new Uint8Array(0), 2), /version/);
    await expectBroken((c) => c.send(GET_FEATURES, new Uint8Array(0), 1 | 0x4), /flags/);
    await expectBroken((c) => c.send(SET_FEATURES, Buffer.alloc(4)), /expected 8/);
    await expectBroken((c) => c.send(SET_FEATURES, u64(1n << 40n)), /did not offer/);
    await expectBroken((c) => c.send(GET_STATUS), /requires a reply/);
    await expectBroken((c) => c.send(GET_INFLIGHT_FD, Buffer.alloc(16)), /announces a payload of 16 bytes, expected 20..24/);
    await expectBroken((c) => c.send(GET_INFLIGHT_FD, Buffer.alloc(24)), /without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD/);
    await expectBroken((c) => c.send(18, Buffer.from([9, 0, 0, 0, 1, 0, 0, 0])), /queue index 9/);
  });

  it('treats a truncated message as a disconnect and serves the next front end', async function () {
    t = startDevice();
    const c = await RawClient.connect(t.path);
    c.writeRaw(Buffer.from([1, 0, 0, 0, 1, 0]));
    c.end();
    const ev = await t.waitEvent((e) => e.type === 'disconnected');
    assert.deepEqual(ev, { type: 'disconnected', reason: 'connection closed in the middle of a message' });
    const next = await RawClient.connect(t.path);
    assert.equal(await next.requestU64(GET_QUEUE_NUM), 2n);
    next.destroy();
  });

  it('refuses a second front end at once while one is connected, and serves the next after the first leaves', async function () {
    t = startDevice();
    const a = await RawClient.connect(t.path);
    assert.equal(await a.requestU64(GET_QUEUE_NUM), 2n);
    const b = await RawClient.connect(t.path);
    b.send(GET_QUEUE_NUM);
    await b.whenClosed();
    assert.ok(t.events.some((e) => e.type === 'log' && e.msg === 'refusing a second front end while one is connected'));
    assert.equal(await a.requestU64(GET_QUEUE_NUM), 2n);
    a.destroy();
    await t.waitEvent((e) => e.type === 'disconnected');
    const c = await RawClient.connect(t.path);
    assert.equal(await c.requestU64(GET_QUEUE_NUM), 2n);
    c.destroy();
  });
});
