/**
 * A real QEMU guest on a Ceph RBD image (rbd: backing, librbd in the daemon) through the shared
 * cache, on a single-node cluster started by the test: the guest makes an ext4 file system,
 * writes files and runs fio with crc32c verification on a raw region; the files are on the
 * image (exported by the rbd tool, read with debugfs); after a SIGTERM restart of the daemon
 * (warm cache) a second guest reads the files and re-verifies the fio region, mostly from the
 * cache.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CephCluster } from '../support/ceph-cluster';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, seqText, sha256, type FioVerifyJob } from './vm/output';
import { tmpDir } from '../support/tmp';

const MiB = 1 << 20;
const IMAGE_BYTES = 256 * MiB;
const CACHE_BLOCK = 4096;

describe('RBD backing store behind the cache in a real-QEMU guest @e2e', function () {
  this.timeout(400_000);
  let dir: string;
  let ceph: CephCluster | undefined;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  before(async () => {
    dir = tmpDir('e2e-rbd');
    ceph = await CephCluster.start();
    await ceph.createImage('disk', IMAGE_BYTES);
  });

  after(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    await ceph?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ext4 files and fio-verified blocks on an RBD image survive a warm daemon restart', async () => {
    const c = ceph as CephCluster;
    const socketPath = path.join(dir, 'vhost.sock');
    const control = path.join(dir, 'control.sock');
    const backing = `rbd:${c.pool}/disk:conf=${c.conf}`;
    daemon = await VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', backing, '--cache', path.join(dir, 'cache.bin'), '--cache-size', '96M',
        '--backing-timeout', '60', '--control', control, '--log-level', 'info',
      ],
    });
    const fio: FioVerifyJob = { label: 'fio', device: '/dev/vda', offset: 160 * MiB, size: 32 * MiB };
    const write = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 300_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "size $(cat /sys/block/vda/size)"
mkfs.ext4 -q -F /dev/vda 128M
mount -t ext4 /dev/vda /mnt
mkdir /mnt/data
dd if=/dev/urandom of=/mnt/data/random.bin bs=1M count=16 2>/dev/null
seq 1 100000 > /mnt/data/seq.txt
sync
cd /mnt/data && echo "sums $(sha256sum random.bin seq.txt | cut -d' ' -f1 | tr '\\n' ' ')" && cd /
umount /mnt
set +e
${fioVerifyScript(fio)}
`,
    });
    report('rbd ext4 + fio write boot', write);
    assert.equal(write.exitCode, 0, write.output);
    assert.equal(one(write.output, 'size'), String(IMAGE_BYTES / 512), 'the guest sees the RBD image size');
    checkFioVerify(write.output, fio);
    const [randomSum, seqSum] = one(write.output, 'sums').split(' ');
    assert.match(randomSum ?? '', /^[0-9a-f]{64}$/);
    assert.equal(seqSum, sha256(seqText(100_000)));
    const first = await daemon.stats();
    assert.equal(first.volumes[0]?.requests.ioErrors, 0);
    assert.ok((first.cache?.blocks ?? 0) >= (16 * MiB) / CACHE_BLOCK, JSON.stringify(first.cache));

    assert.equal(await daemon.stop('SIGTERM'), 0, 'SIGTERM: clean exit');
    assert.equal(daemon.logsWith('cache saved for a warm restart').length, 1);

    // Write-through: the file is on the RBD image itself.
    const exported = path.join(dir, 'disk.raw');
    await c.rbd('export', `${c.pool}/disk`, exported);
    const dumped = path.join(dir, 'random.dump');
    execFileSync('debugfs', ['-R', `dump /data/random.bin ${dumped}`, exported], { stdio: 'ignore' });
    assert.equal(sha256(fs.readFileSync(dumped)), randomSum, 'random.bin on the RBD image');
    fs.rmSync(exported);

    await daemon.restart();
    assert.equal(daemon.logsWith('cache loaded warm').length, 1, 'same image identity: the cache is warm');
    const recheck: FioVerifyJob = { ...fio, label: 'fio-recheck', verifyOnly: true };
    const read = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 300_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mount -t ext4 /dev/vda /mnt
cd /mnt/data && echo "sums $(sha256sum random.bin seq.txt | cut -d' ' -f1 | tr '\\n' ' ')" && cd /
umount /mnt
set +e
${fioVerifyScript(recheck)}
`,
    });
    report('rbd ext4 + fio read boot', read);
    assert.equal(read.exitCode, 0, read.output);
    assert.equal(one(read.output, 'sums'), `${randomSum} ${seqSum}`);
    checkFioVerify(read.output, recheck);
    const second = await daemon.stats();
    assert.ok(second.cache);
    assert.ok(second.cache.readHits >= (16 * MiB) / CACHE_BLOCK, `hits after the warm restart: ${JSON.stringify(second.cache)}`);
    assert.equal(second.volumes[0]?.requests.ioErrors, 0);
    console.log(`      [e2e] rbd warm restart: ${second.cache.readHits} hits of ${second.cache.reads} cache reads`);
  });
});
