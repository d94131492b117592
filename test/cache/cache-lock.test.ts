/**
 * The cache device lock: Cache.open takes an exclusive flock on the device, so a second open of a
 * live cache — another Cache in this process, or another process — is refused with EBUSY, and
 * the lock goes with the cache (close, abort) or with the process holding it (kill). An open
 * waits up to lockWaitMs for a held lock (a holder just closed or killed may keep the open file
 * referenced from an io_uring worker for a moment), and close releases the lock itself.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { deviceBytesFor } from '../../src/cache/segment';
import { FsEngine } from '../../src/io/fs-engine';
import { rejectsWithCode } from '../support/assert';
import { tmpDir } from '../support/tmp';

const SIZE = deviceBytesFor(8, 4096, 16384);

describe('cache device lock', () => {
  let dir: string;
  const engine = new FsEngine();
  const held: Cache[] = [];
  const cachePath = (): string => path.join(dir, 'cache');
  const open = async (file = cachePath()): Promise<Cache> => {
    const c = await Cache.open({ path: file, size: SIZE, segmentSize: 16384, engine });
    held.push(c);
    return c;
  };

  beforeEach(() => {
    dir = tmpDir('cache-lock');
  });

  afterEach(async () => {
    for (const c of held.splice(0)) await c.abort();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a second Cache on the same device in this process, under any name, until the first closes', async () => {
    const first = await open();
    fs.symlinkSync(cachePath(), path.join(dir, 'alias'));
    await rejectsWithCode(Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine, lockWaitMs: 0 }), 'EBUSY');
    await rejectsWithCode(Cache.open({ path: path.join(dir, 'alias'), segmentSize: 16384, engine, lockWaitMs: 0 }), 'EBUSY');
    // a refused open of another size does not resize the live device
    await rejectsWithCode(Cache.open({ path: cachePath(), size: 2 * SIZE, segmentSize: 16384, engine, lockWaitMs: 0 }), 'EBUSY');
    assert.equal(fs.statSync(cachePath()).size, SIZE);
    await first.close();
    const second = await open();
    assert.equal(second.warm, true, 'the cache the refused opens left alone loads warm');
    await second.abort();
    await open(path.join(dir, 'alias'));
  });

  it('waits for a lock released within lockWaitMs, and gives EBUSY after it', async () => {
    const first = await open();
    const waiting = Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine, lockWaitMs: 60_000 });
    let settled = false;
    void waiting.then(
      () => (settled = true),
      () => (settled = true),
    );
    await new Promise((r) => setTimeout(r, 100)); // the waiting open polls the lock meanwhile
    assert.equal(settled, false, 'the open waits while the lock is held');
    await first.close();
    const second = await waiting;
    held.push(second);
    assert.equal(second.warm, true, 'it opens the closed cache warm');
    const t = Date.now();
    await rejectsWithCode(Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine, lockWaitMs: 200 }), 'EBUSY');
    assert.ok(Date.now() - t >= 200, 'EBUSY only once the wait is over');
  });

  it('close releases the lock even while another reference to the open file lives on', async () => {
    const first = await open();
    // Another process inherits the device's open file (as an io_uring worker may hold it for a
    // moment after its completion): closing our fd alone would leave the lock with that file.
    const fd = fs
      .readdirSync('/proc/self/fd')
      .map(Number)
      .find((n) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${n}`) === fs.realpathSync(cachePath());
        } catch {
          return false;
        }
      });
    assert.ok(fd !== undefined, 'the cache device is open');
    const holder = spawn(process.execPath, ['-e', 'setInterval(() => undefined, 60000)'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
    try {
      await first.close();
      held.push(await Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine, lockWaitMs: 0 }));
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('refuses a Cache while another process holds the device, and frees it when that process dies', async () => {
    const script = `
      const { Cache } = require(${JSON.stringify(path.join(__dirname, '../../src/cache/cache.js'))});
      const { FsEngine } = require(${JSON.stringify(path.join(__dirname, '../../src/io/fs-engine.js'))});
      Cache.open({ path: ${JSON.stringify(cachePath())}, size: ${SIZE}, segmentSize: 16384, engine: new FsEngine() }).then(
        () => { process.stdout.write('open\\n'); setInterval(() => undefined, 60000); },
        (err) => { process.stderr.write(String(err)); process.exit(1); });`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('open')) resolve();
        });
        child.on('exit', (code) => reject(new Error(`holder exited (${code}) before opening: ${stderr}`)));
      });
      await rejectsWithCode(Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine, lockWaitMs: 0 }), 'EBUSY');
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      child.kill('SIGKILL');
      await exited;
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    const c = await open();
    assert.equal(c.warm, false, 'a killed holder leaves a cache that opens cold');
  });
});
