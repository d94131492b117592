/**
 * Two RBD clones of one snapshot served by one daemon and one cache, driven by two of our front
 * ends with self-verifying blocks: blocks one clone read from the parent are hits for the other
 * (counted in the stats per volume and per parent); writes, discards and write-zeroes to one
 * clone never change what the other reads; a warm restart keeps the parent's blocks; a clone
 * written by another client while the daemon was down reads that client's data (the owned
 * objects found at open), not the parent's cached blocks; a flattened clone reads the same.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RbdStore } from '../../src/backing/rbd/rbd-store';
import type { VolumeStats } from '../../src/cache/stats';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { silentLogger } from '../../src/util/logger';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { CephCluster } from '../support/ceph-cluster';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';
import { BLOCK } from './nbd-servers';
import { stamped, verifyStamped } from '../support/stamps';

const SECTORS = BLOCK / 512;
const IMAGE = 16 << 20;
/** 1 MiB objects: 256 blocks each. */
const OBJECT_BLOCKS = (1 << 20) / BLOCK;

describe('RBD clones sharing their parent cached blocks @host', function () {
  this.timeout(180_000);
  let ceph: CephCluster;
  let dir: string;
  let config: DaemonConfig;
  let daemon: Daemon | undefined;
  const fes: VhostUserFrontend[] = [];
  /** Block -> expected generation (0 = zeros) per clone, from what each was sent. */
  const want = [new Map<number, number>(), new Map<number, number>()];
  /** Every third block of the first 6 objects. */
  const hot = Array.from({ length: (6 * OBJECT_BLOCKS) / 3 }, (_, i) => i * 3);

  before(async () => {
    ceph = await CephCluster.start();
    dir = tmpDir('rbd-clones');
    await ceph.rbd('create', '--size', '16M', '--object-size', '1M', `${ceph.pool}/golden`);
    const golden = await RbdStore.open(`rbd:${ceph.pool}/golden:conf=${ceph.conf}`);
    await golden.write(0, [stamped(0, IMAGE, 1)]);
    await golden.flush();
    await golden.close();
    await ceph.rbd('snap', 'create', `${ceph.pool}/golden@base`);
    await ceph.rbd('snap', 'protect', `${ceph.pool}/golden@base`);
    for (const c of ['c1', 'c2']) await ceph.rbd('clone', `${ceph.pool}/golden@base`, `${ceph.pool}/${c}`);
    config = validateConfig({
      backingTimeoutMs: 10_000,
      cache: { path: path.join(dir, 'cache.img'), size: '32M' },
      volumes: ['c1', 'c2'].map((c) => ({ name: c, socketPath: path.join(dir, `${c}.sock`), backing: `rbd:${ceph.pool}/${c}:conf=${ceph.conf}` })),
    });
  });

  afterEach(async () => {
    await stop();
  });

  after(async () => {
    await ceph?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(): Promise<void> {
    daemon = await Daemon.start(config, silentLogger);
    for (const c of ['c1', 'c2']) {
      fes.push(await VhostUserFrontend.open(path.join(dir, `${c}.sock`), { queues: 1, queueSize: 128, memorySize: 16 << 20 }));
    }
  }

  async function stop(): Promise<void> {
    for (const fe of fes.splice(0)) fe.close();
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
  }

  function expected(c: number, b: number): number {
    return want[c].get(b) ?? 1;
  }

  async function write(c: number, blocks: number[], gen: number): Promise<void> {
    const q = fes[c].ring(0);
    const rs = await Promise.all(blocks.map((b) => q.write(b * SECTORS, stamped(b * BLOCK, BLOCK, gen))));
    for (const r of rs) assert.equal(r.status, VIRTIO_BLK_S_OK);
    for (const b of blocks) want[c].set(b, gen);
  }

  async function check(c: number, blocks: number[]): Promise<void> {
    const q = fes[c].ring(0);
    const rs = await Promise.all(blocks.map((b) => q.read(b * SECTORS, BLOCK)));
    rs.forEach((r, i) => {
      const b = blocks[i];
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      const data = Buffer.from(r.data as Uint8Array);
      const gen = expected(c, b);
      if (gen === 0) assert.ok(data.every((x) => x === 0), `clone ${c + 1} block ${b} reads as zeros`);
      else verifyStamped(data, b * BLOCK, gen);
    });
  }

  function volumeStats(name: string): VolumeStats {
    const v = daemon?.stats().cache?.volumes[name];
    assert.ok(v, `stats of ${name}`);
    return v;
  }

  function parentStats(): VolumeStats {
    const vols = daemon?.stats().cache?.volumes ?? {};
    const names = Object.keys(vols).filter((n) => n.startsWith('rbd-parent:'));
    assert.equal(names.length, 1, 'one parent entry');
    return vols[names[0]];
  }

  it('blocks one clone read are hits for the other; writes, discards and write-zeroes stay in their clone', async () => {
    await start();
    await check(0, hot);
    await waitFor(() => parentStats().blocks >= hot.length, 'the parent blocks inserted');
    assert.equal(volumeStats('c1').sharedReads, hot.length);
    await check(1, hot);
    assert.equal(volumeStats('c2').sharedHits, hot.length, 'every read of clone 2 was a shared hit');
    assert.equal(volumeStats('c2').reads, 0);
    assert.ok(parentStats().readHits >= hot.length);

    // Clone 1: writes in object 0, a discard of object 2; clone 2: writes in object 1,
    // write-zeroes (allocated) over object 3.
    await write(0, [0, 3, 6], 2);
    const obj = (o: number) => ({ sector: o * OBJECT_BLOCKS * SECTORS, sectors: OBJECT_BLOCKS * SECTORS });
    assert.equal((await fes[0].ring(0).discard([obj(2)])).status, VIRTIO_BLK_S_OK);
    for (let b = 2 * OBJECT_BLOCKS; b < 3 * OBJECT_BLOCKS; b++) want[0].set(b, 0);
    await write(1, [300, 303], 3);
    assert.equal((await fes[1].ring(0).writeZeroes([obj(3)], false)).status, VIRTIO_BLK_S_OK);
    for (let b = 3 * OBJECT_BLOCKS; b < 4 * OBJECT_BLOCKS; b++) want[1].set(b, 0);
    const touched = [0, 3, 6, 300, 303, 2 * OBJECT_BLOCKS, 2 * OBJECT_BLOCKS + 3, 3 * OBJECT_BLOCKS, 3 * OBJECT_BLOCKS + 3];
    for (const c of [0, 1]) {
      await check(c, hot);
      await check(c, touched);
    }
    assert.equal(parentStats().invalidateHits, 0, "no write dropped a parent's block");
  });

  it('a warm restart keeps the parent blocks', async () => {
    await start();
    const parent = parentStats();
    assert.ok(parent.blocks >= hot.length - 2 * (OBJECT_BLOCKS / 3), `parent blocks after the restart: ${parent.blocks}`);
    // Clone 2 owns objects 1 and 3 now: its other hot blocks are all shared hits.
    const shared = hot.filter((b) => Math.floor(b / OBJECT_BLOCKS) !== 1 && Math.floor(b / OBJECT_BLOCKS) !== 3);
    await check(1, shared);
    assert.equal(volumeStats('c2').sharedHits, shared.length);
    await check(0, hot);
  });

  it('a clone written by another client while the daemon was down reads that data, not the cached parent blocks', async () => {
    // Blocks 9 (object 0) and 4 * OBJECT_BLOCKS + 6 (object 4): cached under the parent's key.
    const other = await RbdStore.open(`rbd:${ceph.pool}/c2:conf=${ceph.conf}`);
    const blocks = [9, 4 * OBJECT_BLOCKS + 6];
    for (const b of blocks) await other.write(b * BLOCK, [stamped(b * BLOCK, BLOCK, 4)]);
    await other.flush();
    await other.close();
    for (const b of blocks) want[1].set(b, 4);
    await start();
    await check(1, [...blocks, 12, 4 * OBJECT_BLOCKS + 9]);
    await check(0, [...blocks, 12, 4 * OBJECT_BLOCKS + 9]);
    await check(1, hot);
  });

  it('a clone flattened while the daemon was down reads the same data, from its own objects', async () => {
    await ceph.rbd('flatten', `${ceph.pool}/c1`);
    await start();
    await check(0, hot);
    assert.equal(volumeStats('c1').sharedReads, 0);
    await check(1, hot);
  });
});
