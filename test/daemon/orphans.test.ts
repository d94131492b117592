/**
 * The daemon's explicit way out for write-back blocks written to another backing file of a
 * volume's name (serve --discard-dirty NAME, POST /volumes?discardDirty=1): without it the
 * volume is refused (EBUSY, the message says how to discard), with it the blocks are discarded,
 * the count is answered, and the guest reads the file's own data.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cache } from '../../src/cache/cache';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { controlJson } from '../../src/control/client';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { createIoEngine } from '../../src/io/index';
import type { VhostError } from '../../src/native/errors';
import { silentLogger } from '../../src/util/logger';
import { tmpDir } from '../support/tmp';
import { BLOCK, checkBlocks, range, stamp } from './helpers';

const N = 6;

describe('daemon: write-back blocks of another backing file (--discard-dirty)', function () {
  this.timeout(60_000);
  let dir: string;
  let config: DaemonConfig;
  let daemon: Daemon | undefined;

  /** The cache holds N dirty blocks of volume `a` written to a file that no longer exists. */
  const orphanDirtyBlocks = async (): Promise<void> => {
    const c = config.cache;
    assert.ok(c !== null);
    const engine = createIoEngine('threadpool');
    try {
      const cache = await Cache.open({ path: c.path, size: c.size, blockSize: c.blockSize, segmentSize: c.segmentSize, engine });
      const v = cache.registerVolume('a', 'file:1:999:gen=1:birth=1#ctime=1:mtime=1:size=16777216', 16 << 20);
      const data = Buffer.concat(range(N).map((b) => stamp('old', b, 1)));
      assert.equal(await cache.insertDirty(v, 0, data, N), N);
      assert.equal(await cache.commit(), true);
      cache.unregisterVolume(v, 'file:1:999:gen=1:birth=1#ctime=2:mtime=2:size=16777216');
      await cache.close();
    } finally {
      engine.close();
    }
  };
  /** Volume a's file: its own stamped data. */
  const writeFile = (): void => {
    fs.writeFileSync(path.join(dir, 'a.img'), Buffer.concat([...range(N).map((b) => stamp('a', b, 3)), Buffer.alloc((16 << 20) - N * BLOCK)]));
  };
  const guestSees = async (): Promise<void> => {
    const fe = await VhostUserFrontend.open(path.join(dir, 'a.sock'), { queues: 2, queueSize: 64, memorySize: 8 << 20 });
    try {
      await checkBlocks(fe, 'a', range(N), 3);
      await fe.stop();
    } finally {
      fe.close();
    }
  };

  beforeEach(async () => {
    dir = tmpDir('orphans');
    config = validateConfig({
      cache: { path: path.join(dir, 'cache.img'), size: '8M' },
      control: path.join(dir, 'control.sock'),
      volumes: [{ name: 'a', socketPath: path.join(dir, 'a.sock'), backing: path.join(dir, 'a.img'), size: '16M', cacheMode: 'writeback' }],
    });
    await orphanDirtyBlocks();
    writeFile();
  });
  afterEach(async () => {
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serve: refused without --discard-dirty; with it the blocks are discarded and the file is served', async () => {
    await assert.rejects(Daemon.start(config, silentLogger), (e: VhostError) => e.code === 'EBUSY' && new RegExp(`${N} write-back blocks not yet written back.*--discard-dirty`).test(e.message));
    daemon = await Daemon.start({ ...config, discardDirty: ['a'] }, silentLogger);
    assert.equal(daemon.getVolume('a')?.discardedDirty, N);
    assert.equal(daemon.stats().cache?.volumes.a?.dirtyBlocks, 0);
    await guestSees();
    await daemon.shutdown();
    daemon = undefined;
    const file = fs.readFileSync(path.join(dir, 'a.img'));
    for (const b of range(N)) assert.ok(file.subarray(b * BLOCK, (b + 1) * BLOCK).equals(stamp('a', b, 3)), `block ${b} of the file kept its data`);
  });

  it('POST /volumes: refused (409) without ?discardDirty=1; with it the answer says how many were discarded', async () => {
    const vol = config.volumes[0];
    daemon = await Daemon.start({ ...config, volumes: [] }, silentLogger);
    const ctl = config.control as string;
    await assert.rejects(controlJson(ctl, 'POST', '/volumes', vol), (e: VhostError) => e.code === 'EBUSY' && /--discard-dirty/.test(e.message));
    const added = (await controlJson(ctl, 'POST', '/volumes?discardDirty=1', vol)) as { name: string; discardedDirty: number };
    assert.equal(added.name, 'a');
    assert.equal(added.discardedDirty, N);
    await guestSees();
  });
});
