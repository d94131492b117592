/**
 * The daemon on an RBD image (rbd: backing, librbd in the addon) behind the shared cache,
 * driven by our own front end with self-verifying blocks: data written through the cache lands
 * on the image; while the OSD is stopped cache hits are served and misses fail after
 * --backing-timeout; a restart is warm; an image re-created under the same name while the
 * daemon was down is never served from the old image's cached blocks.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { silentLogger } from '../../src/util/logger';
import { CephCluster } from '../support/ceph-cluster';
import { tmpDir } from '../support/tmp';
import { BLOCK } from './nbd-servers';
import { stamped, verifyStamped } from '../support/stamps';

const SECTORS = BLOCK / 512;

describe('daemon on an RBD image through the cache @host', function () {
  this.timeout(120_000);
  let ceph: CephCluster;
  let dir: string;
  let config: DaemonConfig;
  let daemon: Daemon | undefined;
  let fe: VhostUserFrontend | undefined;

  before(async () => {
    ceph = await CephCluster.start();
    dir = tmpDir('rbd-daemon');
    await ceph.createImage('vol', 16 << 20);
    config = validateConfig({
      backingTimeoutMs: 1500,
      cache: { path: path.join(dir, 'cache.img'), size: '16M' },
      volumes: [{ name: 'r', socketPath: path.join(dir, 'r.sock'), backing: `rbd:${ceph.pool}/vol:conf=${ceph.conf}` }],
    });
  });

  afterEach(async () => {
    fe?.close();
    fe = undefined;
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
  });

  after(async () => {
    await ceph?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(): Promise<VhostUserFrontend> {
    daemon = await Daemon.start(config, silentLogger);
    fe = await VhostUserFrontend.open(path.join(dir, 'r.sock'), { queues: 1, queueSize: 128, memorySize: 16 << 20 });
    return fe;
  }

  async function write(blocks: number[], gen: number): Promise<void> {
    const q = (fe as VhostUserFrontend).ring(0);
    const rs = await Promise.all(blocks.map((b) => q.write(b * SECTORS, stamped(b * BLOCK, BLOCK, gen))));
    for (const r of rs) assert.equal(r.status, VIRTIO_BLK_S_OK);
  }

  async function check(blocks: number[], gen: number | 'zero'): Promise<void> {
    const q = (fe as VhostUserFrontend).ring(0);
    const rs = await Promise.all(blocks.map((b) => q.read(b * SECTORS, BLOCK)));
    rs.forEach((r, i) => {
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      const data = Buffer.from(r.data as Uint8Array);
      if (gen === 'zero') assert.ok(data.every((x) => x === 0), `block ${blocks[i]} reads as zeros`);
      else verifyStamped(data, (blocks[i] as number) * BLOCK, gen);
    });
  }

  function cacheStats(): { reads: number; readHits: number } {
    const v = daemon?.stats().cache?.volumes.r;
    assert.ok(v);
    return v;
  }

  const hot = Array.from({ length: 64 }, (_, i) => i * 3);

  it('writes through the cache onto the image and serves hits during an OSD outage', async () => {
    await start();
    await write(hot, 1);
    await check(hot, 1);
    // The blocks are on the image (read by the rbd tool, not through us).
    const file = path.join(dir, 'export');
    await ceph.rbd('export', `${ceph.pool}/vol`, file);
    const img = fs.readFileSync(file);
    for (const b of hot) verifyStamped(img.subarray(b * BLOCK, (b + 1) * BLOCK), b * BLOCK, 1);
    fs.rmSync(file);

    ceph.stopOsd();
    try {
      const before = cacheStats();
      await check(hot, 1);
      const after = cacheStats();
      assert.equal(after.readHits - before.readHits, hot.length, 'every read during the outage was a hit');
      const t0 = Date.now();
      const miss = await (fe as VhostUserFrontend).ring(0).read(1000 * SECTORS, BLOCK);
      assert.equal(miss.status, VIRTIO_BLK_S_IOERR, 'a miss fails once --backing-timeout passed');
      assert.ok(Date.now() - t0 >= 1400);
    } finally {
      ceph.resumeOsd();
    }
    await check([1000], 'zero');
    await write([1000], 2);
    await check([1000], 2);
  });

  it('restarts warm on the same image', async () => {
    await start();
    const before = cacheStats();
    await check(hot, 1);
    assert.equal(cacheStats().readHits - before.readHits, hot.length);
  });

  it('never serves blocks cached for an image that was re-created under the same name', async () => {
    await ceph.rbd('rm', `${ceph.pool}/vol`);
    await ceph.createImage('vol', 16 << 20);
    await start();
    await check(hot, 'zero');
    await check([1000], 'zero');
  });
});
