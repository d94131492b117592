/**
 * NbdStore under faults: NBD error replies (nbdkit error filter), latency (delay filter),
 * servers killed and restarted mid-I/O, servers that stay away, an export that changes size,
 * and a fake server that breaks the protocol.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VhostError } from '../../src/native/errors';
import { NbdStore } from '../../src/backing/nbd/nbd-store';
import { waitFor } from '../support/wait';
import { FakeNbdServer, type Behaviour } from './nbd-fake-server';
import { MemNbdServer } from './nbd-mem-server';
import { tmpDir } from '../support/tmp';
import { BLOCK, startNbdkit, unixUri, type ServerProcess, type NbdkitSpec } from './nbd-servers';
import { stamped, verifyStamped } from '../support/stamps';

async function failure(p: Promise<unknown>): Promise<VhostError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VhostError, `expected a VhostError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a rejection');
}

describe('NbdStore faults @host', function () {
  this.timeout(60_000);
  const dir = tmpDir('nbd-faults');
  let server: ServerProcess | null = null;
  let store: NbdStore | null = null;

  async function serve(spec: NbdkitSpec): Promise<void> {
    server = await startNbdkit(spec);
  }

  afterEach(async () => {
    await store?.close();
    store = null;
    await server?.stop();
    server = null;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('an NBD error reply fails only its request, with the NBD error code', async () => {
    const sock = path.join(dir, 'err.sock');
    await serve({
      socket: sock,
      filters: ['error'],
      plugin: 'memory',
      args: ['16M', 'error-pwrite=ENOSPC', 'error-pwrite-rate=100%', 'error-pread=EIO', 'error-pread-rate=40%'],
    });
    for (const structured of [true, false]) {
      const s = await NbdStore.open(unixUri(sock), { structuredReplies: structured });
      store = s;
      const e = await failure(s.write(0, [stamped(0, BLOCK, 1)]));
      assert.equal(e.code, 'ENOSPC');
      const results = await Promise.allSettled(
        Array.from({ length: 64 }, async (_, i) => {
          const b = Buffer.alloc(2 * BLOCK, 0xee);
          await s.read(i * 2 * BLOCK, [b]);
          assert.ok(b.every((x) => x === 0), 'unwritten memory reads as zeroes');
        }),
      );
      const failed = results.filter((r) => r.status === 'rejected');
      assert.ok(failed.length > 0 && failed.length < 64, `${failed.length} of 64 reads failed`);
      for (const f of failed) assert.equal(((f as PromiseRejectedResult).reason as VhostError).code, 'EIO');
      assert.equal(s.reconnectCount, 0, 'error replies do not drop the connection');
      await s.close();
      store = null;
    }
  });

  it('ESHUTDOWN from the server makes the client disconnect softly and resend', async () => {
    const sock = path.join(dir, 'shut.sock');
    const trigger = path.join(dir, 'shut.trigger');
    await serve({
      socket: sock,
      filters: ['error'],
      plugin: 'memory',
      args: ['16M', 'error-pread=ESHUTDOWN', 'error-pread-rate=100%', `error-pread-file=${trigger}`],
    });
    store = await NbdStore.open(unixUri(sock), { reconnectMinMs: 20, reconnectMaxMs: 50 });
    await store.write(0, [stamped(0, 4 * BLOCK, 2)]);
    fs.writeFileSync(trigger, '');
    const b = Buffer.alloc(4 * BLOCK);
    const s = store;
    const reading = s.read(0, [b]);
    // The read got ESHUTDOWN and the client reconnected: now let the resent read succeed.
    await waitFor(() => s.reconnectCount >= 1, 'a reconnect after ESHUTDOWN');
    fs.rmSync(trigger);
    await reading;
    verifyStamped(b, 0, 2);
    assert.ok(store.reconnectCount >= 1);
  });

  it('pipelines requests: 16 writes are on the server at once, none answered yet', async () => {
    const mem = new MemNbdServer(path.join(dir, 'held.sock'), 1 << 20);
    await mem.listen();
    try {
      mem.holdWrites = true;
      store = await NbdStore.open(unixUri(mem.path), { connections: 1, backingTimeoutMs: 2000, reconnectMinMs: 10 });
      const s = store;
      const writes = Array.from({ length: 16 }, (_, i) => failure(s.write(i * BLOCK, [stamped(i * BLOCK, BLOCK, 2)])));
      await waitFor(() => mem.heldWrites === 16, '16 writes held by the server');
      // Never answered: each times out.
      for (const w of writes) assert.equal((await w).code, 'ETIMEDOUT');
    } finally {
      await mem.close();
    }
  });

  it('a hung request times out with ETIMEDOUT and the store recovers', async () => {
    const sock = path.join(dir, 'hung.sock');
    await serve({ socket: sock, filters: ['delay'], plugin: 'memory', args: ['16M', 'rdelay=3'] });
    store = await NbdStore.open(unixUri(sock), { backingTimeoutMs: 300, reconnectMinMs: 10 });
    const t0 = Date.now();
    const e = await failure(store.read(0, [Buffer.alloc(BLOCK)]));
    assert.equal(e.code, 'ETIMEDOUT');
    assert.ok(Date.now() - t0 >= 290);
    await store.write(0, [stamped(0, BLOCK, 3)]);
  });

  it('server killed and restarted mid-I/O: requests wait and succeed; the next flush reports possible loss', async () => {
    const sock = path.join(dir, 'restart.sock');
    const file = path.join(dir, 'restart.raw');
    fs.writeFileSync(file, Buffer.alloc(16 * 1024 * 1024));
    const spec: NbdkitSpec = { socket: sock, filters: ['delay'], plugin: 'file', args: [file, 'wdelay=20ms', 'rdelay=5ms'] };
    await serve(spec);
    store = await NbdStore.open(unixUri(sock), { reconnectMinMs: 20, reconnectMaxMs: 200 });
    const s = store;
    await s.write(0, [stamped(0, BLOCK, 1)]); // completed, not flushed
    const N = 256;
    let written = 0;
    const io = Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const off = (i + 1) * BLOCK;
        await s.write(off, [stamped(off, BLOCK, 4)]);
        written++;
        const b = Buffer.alloc(BLOCK);
        await s.read(off, [b]);
        verifyStamped(b, off, 4);
      }),
    );
    // Kill the server with I/O in flight (some writes done, most not), restart it once the
    // client has seen the connections go.
    await waitFor(() => written >= 1, 'a first write to complete');
    assert.ok(written < N, 'the I/O finished before the kill');
    await server!.stop('SIGKILL');
    await waitFor(() => s.connectionCount === 0, 'the client to notice the lost connections');
    await serve(spec);
    await io;
    assert.ok(s.reconnectCount >= 1);
    const all = Buffer.alloc((N + 1) * BLOCK);
    await s.read(0, [all]);
    verifyStamped(all.subarray(0, BLOCK), 0, 1);
    verifyStamped(all.subarray(BLOCK), BLOCK, 4);
    await s.flush();
    verifyStamped(all.subarray(0, BLOCK), 0, 1);
  });

  it('requests time out with ETIMEDOUT while the server stays away, then work again', async () => {
    const sock = path.join(dir, 'away.sock');
    const spec: NbdkitSpec = { socket: sock, plugin: 'memory', args: ['16M'] };
    await serve(spec);
    store = await NbdStore.open(unixUri(sock), { backingTimeoutMs: 400, reconnectMinMs: 20, reconnectMaxMs: 100 });
    await server!.stop('SIGKILL');
    const t0 = Date.now();
    const e = await failure(store.read(0, [Buffer.alloc(BLOCK)]));
    assert.equal(e.code, 'ETIMEDOUT');
    assert.ok(Date.now() - t0 >= 390);
    await serve(spec);
    const b = Buffer.alloc(BLOCK, 1);
    await store.read(0, [b]);
    assert.ok(b.every((x) => x === 0));
  });

  it('an export whose size changed across a reconnect fences the store (EIO)', async () => {
    const sock = path.join(dir, 'resize.sock');
    await serve({ socket: sock, plugin: 'memory', args: ['16M'] });
    store = await NbdStore.open(unixUri(sock), { reconnectMinMs: 20 });
    await server!.stop('SIGKILL');
    await serve({ socket: sock, plugin: 'memory', args: ['8M'] });
    const e = await failure(store.read(0, [Buffer.alloc(BLOCK)]));
    assert.equal(e.code, 'EIO');
    assert.match(e.message, /changed size from 16777216 to 8388608/);
    assert.equal((await failure(store.write(0, [Buffer.alloc(BLOCK)]))).code, 'EIO');
  });

  for (const behaviour of ['trickle-simple', 'trickle-structured'] as const) {
    it(`replies cut into 7-byte writes (${behaviour}) are parsed across reads`, async () => {
      const sock = path.join(dir, `${behaviour}.sock`);
      const fake = new FakeNbdServer(sock, [behaviour]);
      await fake.listen();
      try {
        store = await NbdStore.open(unixUri(sock), { structuredReplies: behaviour === 'trickle-structured' });
        const s = store;
        assert.equal(s.info.structured, behaviour === 'trickle-structured');
        const bufs = Array.from({ length: 4 }, () => Buffer.alloc(2 * BLOCK));
        await Promise.all([...bufs.map((b, i) => s.read((2 * i + 1) * BLOCK, [b.subarray(0, 512), b.subarray(512)])), s.flush()]);
        bufs.forEach((b, i) => verifyStamped(b, (2 * i + 1) * BLOCK, 5));
        assert.equal(s.reconnectCount, 0);
        await s.close();
        store = null;
      } finally {
        await fake.close();
      }
    });
  }

  const cases: Array<[string, Behaviour[], boolean]> = [
    ['unknown handle, wrong magic, short data', ['unknown-handle', 'bad-magic', 'short-data', 'good'], false],
    ['an oversized structured chunk', ['oversized-chunk', 'good'], true],
  ];
  for (const [what, behaviours, structured] of cases) {
    it(`a misbehaving server (${what}) gets dropped and reconnected, without a crash`, async () => {
      const sock = path.join(dir, `fake-${behaviours.length}.sock`);
      const fake = new FakeNbdServer(sock, behaviours);
      await fake.listen();
      try {
        store = await NbdStore.open(unixUri(sock), { reconnectMinMs: 10, structuredReplies: structured });
        const b = Buffer.alloc(8 * BLOCK);
        await store.read(8 * BLOCK, [b]);
        verifyStamped(b, 8 * BLOCK, 5);
        assert.equal(store.reconnectCount, behaviours.length - 1);
        assert.equal(fake.connections, behaviours.length);
        await store.close();
        store = null;
      } finally {
        await fake.close();
      }
    });
  }
});
