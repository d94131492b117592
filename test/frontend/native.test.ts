/**
 * The native front end primitives (native/frontend): GuestRam, EventFd and FrontendChannel,
 * exercised against a node:net unix server standing in for a back end.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../../src/native/binding';
import { VhostError } from '../../src/native/errors';
import { decodeMessage, encodeMessage, FLAG_REPLY, FLAG_VERSION } from '../../src/frontend/protocol';
import { tmpDir } from '../support/tmp';

interface Server {
  path: string;
  conn: Promise<net.Socket>;
  close(): void;
}

async function listen(): Promise<Server> {
  const dir = tmpDir('fe');
  const p = path.join(dir, 's.sock');
  const server = net.createServer();
  const conn = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve) => server.listen(p, resolve));
  return {
    path: p,
    conn,
    close() {
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('frontend: native primitives', function () {
  it('GuestRam maps a shared memfd that outlives close() through its views', function () {
    const ram = new native.GuestRam(1 << 20);
    assert.equal(ram.size, 1 << 20);
    assert.ok(ram.fd >= 0);
    const view = new Uint8Array(ram.buffer);
    view[4095] = 0x5a;
    // The memfd holds the same bytes (MAP_SHARED).
    const b = Buffer.alloc(1);
    fs.readSync(ram.fd, b, 0, 1, 4095);
    assert.equal(b[0], 0x5a);
    ram.close();
    assert.equal(ram.fd, -1);
    view[0] = 1;
    assert.equal(view[0], 1);
    assert.throws(() => new native.GuestRam(1000), (e: VhostError) => e.code === 'EINVAL');
  });

  it('EventFd signals, drains and wakes a watcher on the loop', async function () {
    const e = new native.EventFd();
    e.signal();
    e.signal();
    assert.equal(e.drain(), 2);
    assert.equal(e.drain(), 0);
    const counts: number[] = [];
    const woke = new Promise<void>((resolve) =>
      e.watch((n) => {
        counts.push(n);
        e.unwatch();
        resolve();
      }),
    );
    assert.throws(() => e.watch(() => undefined), (err: VhostError) => err.code === 'EBUSY');
    e.signal();
    e.signal();
    e.signal();
    await woke;
    assert.deepEqual(counts, [3]);
    e.close();
    assert.throws(() => e.signal(), (err: VhostError) => err.code === 'EBADF');
  });

  it('FrontendChannel reassembles messages split across reads and sends fds', async function () {
    const srv = await listen();
    const got: Buffer[] = [];
    let closed: Error | null | undefined;
    const done = new Promise<void>((resolve) => {
      const ch = new native.FrontendChannel({
        path: srv.path,
        onMessage: (m, fds) => {
          assert.deepEqual(fds, []);
          got.push(m);
        },
        onClose: (err) => {
          closed = err;
          resolve();
        },
      });
      void srv.conn.then((sock) => {
        // Two messages, delivered byte by byte, then the peer ends cleanly.
        const bytes = Buffer.concat([
          encodeMessage(1, FLAG_VERSION | FLAG_REPLY, Buffer.from('12345678')),
          encodeMessage(24, FLAG_VERSION | FLAG_REPLY, Buffer.alloc(0)),
        ]);
        let i = 0;
        const step = (): void => {
          if (i === bytes.length) {
            sock.end();
            return;
          }
          sock.write(bytes.subarray(i, i + 1));
          i++;
          setTimeout(step, 1);
        };
        step();
        ch.send(encodeMessage(3, FLAG_VERSION), []);
      });
    });
    const conn = await srv.conn;
    const sent = new Promise<Buffer>((resolve) => conn.once('data', resolve));
    await done;
    assert.equal(closed, null);
    assert.equal(got.length, 2);
    assert.equal(decodeMessage(got[0]).payload.toString(), '12345678');
    assert.equal(decodeMessage(got[1]).request, 24);
    assert.equal(decodeMessage(await sent).request, 3);
    srv.close();
  });

  it('FrontendChannel reports an end inside a message as EPROTO', async function () {
    const srv = await listen();
    const closed = new Promise<Error | null>((resolve) => {
      new native.FrontendChannel({ path: srv.path, onMessage: () => undefined, onClose: resolve });
    });
    const sock = await srv.conn;
    sock.end(encodeMessage(1, FLAG_VERSION | FLAG_REPLY, Buffer.alloc(8)).subarray(0, 15));
    const err = await closed;
    assert.ok(err instanceof VhostError);
    assert.equal(err.code, 'EPROTO');
    srv.close();
  });

  it('FrontendChannel throws the connect errno', function () {
    assert.throws(
      () => new native.FrontendChannel({ path: '/nonexistent/x.sock', onMessage: () => undefined, onClose: () => undefined }),
      (e: VhostError) => e.code === 'ENOENT',
    );
  });
});
