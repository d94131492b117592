/**
 * Proves the real-QEMU harness (test/e2e/vm) against qemu-storage-daemon, the reference
 * vhost-user-blk back end: ext4 round trip across remounts and reboots, fio with crc32c
 * verification on two queues, and a back end crash/restart while the guest is running.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { prepareGuestImageBeforeAll, runGuest, startGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, seqText, sha256, type FioVerifyJob } from './vm/output';
import { StorageDaemon } from './vm/qsd';
import { tmpDir } from '../support/tmp';

const IMAGE_BYTES = 256 << 20;

describe('qemu-storage-daemon smoke through the real-QEMU harness @e2e', function () {
  this.timeout(240_000);
  let dir: string;
  let image: string;
  let socketPath: string;
  let qsd: StorageDaemon | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(async () => {
    dir = tmpDir('e2e-qsd');
    image = path.join(dir, 'disk.img');
    socketPath = path.join(dir, 'vhost.sock');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, IMAGE_BYTES);
    qsd = await StorageDaemon.start({ image, socketPath });
  });

  afterEach(async () => {
    await qsd?.stop('SIGKILL');
    qsd = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ext4: files survive umount/remount and a reboot of the guest', async () => {
    const started = Date.now();
    const first = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "size $(cat /sys/block/vda/size)"
mkfs.ext4 -q -F /dev/vda
mount -t ext4 /dev/vda /mnt
seq 1 100000 > /mnt/seq.txt
mkdir /mnt/dir
dd if=/dev/urandom of=/mnt/dir/random.bin bs=64k count=64 2>/dev/null
i=0; while [ $i -lt 50 ]; do echo "file $i" > /mnt/dir/f$i; i=$((i + 1)); done
sync
echo "before $(sha256sum /mnt/seq.txt /mnt/dir/random.bin | cut -d' ' -f1 | tr '\\n' ' ')"
umount /mnt
mount -t ext4 /dev/vda /mnt
echo "after $(sha256sum /mnt/seq.txt /mnt/dir/random.bin | cut -d' ' -f1 | tr '\\n' ' ')"
echo "f7 $(cat /mnt/dir/f7)"
echo "count $(ls /mnt/dir | wc -l)"
umount /mnt
`,
    });
    report('ext4 write boot', first);
    assert.equal(first.exitCode, 0, first.output);
    assert.equal(one(first.output, 'size'), String(IMAGE_BYTES / 512));
    const [seqBefore, randBefore] = one(first.output, 'before').split(' ');
    assert.equal(seqBefore, sha256(seqText(100_000)), 'seq.txt content written by the guest');
    assert.match(randBefore, /^[0-9a-f]{64}$/);
    assert.equal(one(first.output, 'after'), `${seqBefore} ${randBefore}`);
    assert.equal(one(first.output, 'f7'), 'file 7');
    assert.equal(one(first.output, 'count'), '51');

    // A second boot reads everything back through the back end (no guest page cache).
    const second = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mount -t ext4 /dev/vda /mnt
echo "reboot $(sha256sum /mnt/seq.txt /mnt/dir/random.bin | cut -d' ' -f1 | tr '\\n' ' ')"
echo "f42 $(cat /mnt/dir/f42)"
umount /mnt
`,
    });
    report('ext4 read boot', second);
    assert.equal(second.exitCode, 0, second.output);
    assert.equal(one(second.output, 'reboot'), `${seqBefore} ${randBefore}`);
    assert.equal(one(second.output, 'f42'), 'file 42');
    console.log(`      [e2e] ext4 test total ${Date.now() - started} ms`);
  });

  it('fio randwrite with crc32c verification on two queues', async () => {
    const started = Date.now();
    await qsd?.stop();
    qsd = await StorageDaemon.start({ image, socketPath, numQueues: 2 });
    const fio: FioVerifyJob = { label: 'fio', device: '/dev/vda', size: 32 << 20 };
    const r = await runGuest({
      disks: [{ socketPath, numQueues: 2 }],
      cpus: 2,
      timeoutMs: 200_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
echo "queues $(ls /sys/block/vda/mq | wc -l)"
${fioVerifyScript(fio)}`,
    });
    report('fio boot', r);
    assert.equal(r.exitCode, 0, r.output);
    assert.equal(one(r.output, 'queues'), '2');
    checkFioVerify(r.output, fio);
    console.log(`      [e2e] fio test total ${Date.now() - started} ms`);
  });

  it('guest keeps its disk across back end crash and restart (reconnect=1)', async () => {
    const started = Date.now();
    const guest = await startGuest({
      disks: [{ socketPath }],
      reconnect: true,
      timeoutMs: 200_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mkfs.ext4 -q -F /dev/vda
mount -t ext4 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/data.bin bs=64k count=128 2>/dev/null
sync
sha256sum /mnt/data.bin > /tmp/data.sum
echo "sum $(cut -d' ' -f1 /tmp/data.sum)"
umount /mnt
vbc_pause restarted
# The back end was killed and restarted while no I/O was in flight.
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 /dev/vda /mnt
sha256sum -c -s /tmp/data.sum
echo "verified-after-restart"
seq 1 50000 > /mnt/seq.txt
sync
umount /mnt
vbc_pause down
# The back end is dead now: these reads block until QEMU has reconnected to the new one.
echo 3 > /proc/sys/vm/drop_caches
echo "outage-io-start"
mount -t ext4 /dev/vda /mnt
sha256sum -c -s /tmp/data.sum
echo "seq $(sha256sum /mnt/seq.txt | cut -d' ' -f1)"
echo "verified-across-outage"
umount /mnt
`,
    });
    try {
      await guest.waitForPause('restarted', 150_000);
      assert.ok(qsd);
      await qsd.stop('SIGKILL');
      await qsd.restart();
      guest.resume('restarted');

      await guest.waitForPause('down', 120_000);
      await qsd.stop('SIGKILL');
      guest.resume('down');
      await guest.waitForConsole(/^outage-io-start$/m, 60_000);
      await new Promise((resolve) => setTimeout(resolve, 3000));
      assert.doesNotMatch(guest.console, /verified-across-outage/, 'I/O completed without a back end');
      await qsd.restart();

      const r = await guest.result();
      report('restart', r);
      assert.equal(r.exitCode, 0, r.output);
      const sum = one(r.output, 'sum');
      assert.match(sum, /^[0-9a-f]{64}$/);
      assert.match(r.output, /^verified-after-restart$/m);
      assert.match(r.output, /^verified-across-outage$/m);
      assert.equal(one(r.output, 'seq'), sha256(seqText(50_000)));
    } finally {
      await guest.kill();
    }
    console.log(`      [e2e] restart test total ${Date.now() - started} ms`);
  });
});
