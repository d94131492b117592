/**
 * The cache device lock: Cache.open takes an exclusive flock on the device, so a second open of a
 * live cache — another Cache in this process, or another process — is refused with EBUSY, and
 * the lock goes with the cache (close, abort) or with the process holding it (kill).
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
    await rejectsWithCode(Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine }), 'EBUSY');
    await rejectsWithCode(Cache.open({ path: path.join(dir, 'alias'), segmentSize: 16384, engine }), 'EBUSY');
    // a refused open of another size does not resize the live device
    await rejectsWithCode(Cache.open({ path: cachePath(), size: 2 * SIZE, segmentSize: 16384, engine }), 'EBUSY');
    assert.equal(fs.statSync(cachePath()).size, SIZE);
    await first.close();
    const second = await open();
    assert.equal(second.warm, true, 'the cache the refused opens left alone loads warm');
    await second.abort();
    await open(path.join(dir, 'alias'));
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
      await rejectsWithCode(Cache.open({ path: cachePath(), size: SIZE, segmentSize: 16384, engine }), 'EBUSY');
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
