/**
 * The Ceph test cluster itself: two clusters side by side, each serving RBD I/O from nothing,
 * and nothing left behind after stop().
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { CephCluster } from './ceph-cluster';

describe('CephCluster (test harness) @host', function () {
  this.timeout(120_000);

  it('brings up two independent clusters that serve RBD I/O and tears them down', async function () {
    const started = performance.now();
    const [a, b] = await Promise.all([CephCluster.start(), CephCluster.start()]);
    try {
      assert.notEqual(a.fsid, b.fsid);
      assert.notEqual(a.monPort, b.monPort);
      await Promise.all([a.createImage('x', 4 << 20), b.createImage('x', 8 << 20)]);
      const upMs = performance.now() - started;
      const out = await a.rbd('bench', '--io-type', 'write', '--io-size', '4K', '--io-total', '64K', 'rbd/x');
      assert.match(out, /elapsed/);
      const infoA = JSON.parse(await a.rbd('info', '--format', 'json', 'rbd/x')) as { size: number };
      const infoB = JSON.parse(await b.rbd('info', '--format', 'json', 'rbd/x')) as { size: number };
      assert.equal(infoA.size, 4 << 20);
      assert.equal(infoB.size, 8 << 20);
      console.log(`      two clusters up and serving in ${Math.round(upMs)} ms`);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    assert.equal(fs.existsSync(a.dir), false);
    assert.equal(fs.existsSync(b.dir), false);
  });
});
