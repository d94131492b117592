/**
 * Two RBD clones of one golden image (an ext4 file system made on the host) as two disks of a
 * real QEMU/TCG guest, through one daemon and its cache: the guest reads the same files on
 * both (the second disk's reads are shared hits on the parent's blocks, counted in /stats),
 * rewrites a file on the first, and the second still reads the golden content (after dropping
 * the guest's page cache); after a SIGTERM restart (warm) a second guest sees the same, with the
 * second disk's reads served from the parent's cached blocks.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { VolumeStats } from '../../src/cache/stats';
import type { DaemonStats } from '../../src/control/daemon-api';
import { CephCluster } from '../support/ceph-cluster';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest } from './vm/guest';
import { one, report, sha256, tagged } from './vm/output';

const MiB = 1 << 20;

/** Prints the sums of both disks' files after dropping the page cache. */
const SUMS = `
sync
echo 3 > /proc/sys/vm/drop_caches
echo "a $(sha256sum /a/data/random.bin | cut -d' ' -f1)"
echo "b $(sha256sum /b/data/random.bin | cut -d' ' -f1)"
`;

describe('two RBD clones of one image as two disks of a real-QEMU guest @e2e', function () {
  this.timeout(600_000);
  let dir: string;
  let ceph: CephCluster | undefined;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-e2e-clones-'));
    ceph = await CephCluster.start();
  });

  after(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    await ceph?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function shared(stats: DaemonStats, name: string): VolumeStats {
    const v = stats.cache?.volumes[name];
    assert.ok(v, `stats of ${name}`);
    return v;
  }

  it('a file rewritten on one clone keeps its golden content on the other; reads are shared, also after a warm restart', async () => {
    const c = ceph as CephCluster;
    // The golden image: ext4 with 16 MiB of random data.
    const root = path.join(dir, 'root');
    fs.mkdirSync(path.join(root, 'data'), { recursive: true });
    const golden = randomBytes(16 * MiB);
    fs.writeFileSync(path.join(root, 'data', 'random.bin'), golden);
    const img = path.join(dir, 'golden.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', root, img, '64M']);
    await c.rbd('import', img, `${c.pool}/golden`);
    await c.rbd('snap', 'create', `${c.pool}/golden@base`);
    await c.rbd('snap', 'protect', `${c.pool}/golden@base`);
    for (const n of ['c1', 'c2']) await c.rbd('clone', `${c.pool}/golden@base`, `${c.pool}/${n}`);
    const control = path.join(dir, 'control.sock');
    const sock = (n: string): string => path.join(dir, `${n}.sock`);
    const config = path.join(dir, 'config.json');
    fs.writeFileSync(
      config,
      JSON.stringify({
        cache: { path: path.join(dir, 'cache.bin'), size: '128M' },
        control,
        backingTimeoutMs: 60_000,
        volumes: ['c1', 'c2'].map((n) => ({ name: n, socketPath: sock(n), backing: `rbd:${c.pool}/${n}:conf=${c.conf}` })),
      }),
    );
    daemon = await VbcDaemon.start({ control, args: ['--config', config, '--log-level', 'info'] });
    const goldenSum = sha256(golden);

    const first = await runGuest({
      disks: [{ socketPath: sock('c1') }, { socketPath: sock('c2') }],
      timeoutMs: 300_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
vbc_wait_dev /dev/vdb
mkdir -p /a /b
mount -t ext4 /dev/vda /a
mount -t ext4 -o ro /dev/vdb /b
${SUMS}
dd if=/dev/urandom of=/a/data/random.bin bs=1M count=16 conv=notrunc 2>/dev/null
${SUMS}
umount /a
umount /b
`,
    });
    report('rbd clones: read, rewrite one', first);
    assert.equal(first.exitCode, 0, first.output);
    const a = tagged(first.output, 'a');
    assert.deepEqual(tagged(first.output, 'b'), [goldenSum, goldenSum], 'the second clone keeps the golden file');
    assert.equal(a.length, 2);
    assert.equal(a[0], goldenSum);
    assert.notEqual(a[1], goldenSum, 'the first clone has the rewritten file');
    const rewritten = a[1];
    const s1 = await daemon.stats();
    assert.ok(shared(s1, 'c2').sharedHits >= (16 * MiB) / 4096 / 2, `shared hits of c2: ${JSON.stringify(shared(s1, 'c2'))}`);
    assert.equal(s1.volumes.reduce((n, v) => n + v.requests.ioErrors, 0), 0);

    assert.equal(await daemon.stop('SIGTERM'), 0, 'SIGTERM: clean exit');
    await daemon.restart();
    const second = await runGuest({
      disks: [{ socketPath: sock('c1') }, { socketPath: sock('c2') }],
      timeoutMs: 300_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
vbc_wait_dev /dev/vdb
mkdir -p /a /b
mount -t ext4 -o ro /dev/vda /a
mount -t ext4 -o ro /dev/vdb /b
${SUMS}
umount /a
umount /b
`,
    });
    report('rbd clones: warm restart', second);
    assert.equal(second.exitCode, 0, second.output);
    assert.equal(one(second.output, 'a'), rewritten);
    assert.equal(one(second.output, 'b'), goldenSum);
    const s2 = await daemon.stats();
    const c2 = shared(s2, 'c2');
    assert.ok(c2.sharedHits >= (16 * MiB) / 4096 / 2, `shared hits of c2 after the warm restart: ${JSON.stringify(c2)}`);
    console.log(`      [e2e] rbd clones: c2 ${c2.sharedHits} shared hits of ${c2.sharedReads} after the warm restart`);
  });
});
