/**
 * The NBD store's first connection: a server that is not accepting yet (ECONNREFUSED: starting
 * up, or restarting while a daemon restarts) is tried again with the reconnect backoff within
 * connectTimeoutMs; nothing listening past it, or a socket path that does not exist, rejects.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import pino from 'pino';
import { NbdStore } from '../../src/backing/nbd/nbd-store';
import { rejectsWithCode } from '../support/assert';
import { freePort } from '../support/net';
import { stamped, verifyStamped } from '../support/stamps';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';
import { MemNbdServer } from './nbd-mem-server';

const SIZE = 1 << 20;

interface LogLine {
  msg: string;
  [k: string]: unknown;
}

/** A logger whose warnings and errors land in `lines`. */
function capture(lines: LogLine[]): pino.Logger {
  return pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l) as LogLine) });
}

describe('NbdStore first connection', () => {
  let dir: string;
  let server: MemNbdServer;
  let proxy: net.Server | null = null;

  beforeEach(async () => {
    dir = tmpDir('nbd-first');
    server = new MemNbdServer(path.join(dir, 'nbd.sock'), SIZE);
    await server.listen();
  });

  afterEach(async () => {
    if (proxy !== null) await new Promise((r) => proxy?.close(r));
    proxy = null;
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A TCP front of the unix-socket server, listening on `port` from now on. */
  function listenOn(port: number): Promise<void> {
    const sockets: net.Socket[] = [];
    proxy = net.createServer((c) => {
      const u = net.connect(server.path);
      sockets.push(c, u);
      c.pipe(u).pipe(c);
      c.on('error', () => u.destroy());
      u.on('error', () => c.destroy());
    });
    proxy.on('close', () => sockets.forEach((s) => s.destroy()));
    return new Promise((resolve) => proxy?.listen(port, '127.0.0.1', () => resolve()));
  }

  it('waits for a server that starts listening after the first refused attempt, and serves', async () => {
    const port = await freePort();
    const lines: LogLine[] = [];
    const opening = NbdStore.open(`nbd://127.0.0.1:${port}`, { connectTimeoutMs: 60_000, reconnectMinMs: 10, reconnectMaxMs: 50, logger: capture(lines) });
    await waitFor(() => lines.some((l) => l.msg === 'NBD server refused the first connection; retrying' && l.code === 'ECONNREFUSED'), 'a refused attempt');
    await listenOn(port);
    const store = await opening;
    try {
      assert.equal(store.size, SIZE);
      await store.write(3 * 4096, [stamped(3 * 4096, 4096, 2)]);
      const back = new Uint8Array(4096);
      await store.read(3 * 4096, [back]);
      verifyStamped(back, 3 * 4096, 2);
    } finally {
      await store.close();
    }
  });

  it('rejects with ECONNREFUSED once connectTimeoutMs has passed with nothing listening', async () => {
    const port = await freePort();
    await rejectsWithCode(NbdStore.open(`nbd://127.0.0.1:${port}`, { connectTimeoutMs: 300, reconnectMinMs: 10, reconnectMaxMs: 50 }), 'ECONNREFUSED');
  });

  it('rejects at once when the socket does not exist (ENOENT is not retried)', async () => {
    const lines: LogLine[] = [];
    await rejectsWithCode(NbdStore.open(`nbd+unix:///?socket=${path.join(dir, 'missing.sock')}`, { connectTimeoutMs: 60_000, logger: capture(lines) }), 'ENOENT');
    assert.deepEqual(lines, [], 'no retry was logged');
  });
});
