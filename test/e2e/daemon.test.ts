/**
 * Our daemon (bin/vhost-blk-cache serve, no cache) as the back end of a real QEMU guest:
 * ext4 and fio with crc32c verification on two queues, the serial the guest sees, a clean
 * SIGTERM restart while the guest keeps running (QEMU reconnects, I/O issued during the outage
 * completes afterwards, data written before the restart reads back intact), and a read-only
 * export the guest cannot write.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest, startGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, seqText, sha256, type FioVerifyJob } from './vm/output';
import { tmpDir } from '../support/tmp';

const MiB = 1 << 20;
const IMAGE_BYTES = 256 * MiB;
const SERIAL = 'vbc-e2e-0042';

describe('vhost-blk-cache daemon in a real-QEMU guest @e2e', function () {
  this.timeout(240_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-daemon');
  });

  afterEach(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ext4 + fio verify on two queues, serial, and a SIGTERM restart under a running guest', async () => {
    const started = Date.now();
    const socketPath = path.join(dir, 'vhost.sock');
    const control = path.join(dir, 'control.sock');
    const image = path.join(dir, 'disk.img');
    daemon = await VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', image, '--size', '256M', '--num-queues', '2',
        '--serial', SERIAL, '--control', control, '--log-level', 'info',
      ],
    });
    assert.equal(fs.statSync(image).size, IMAGE_BYTES, '--size created the backing file');
    // ext4 takes the first 128 MiB; the fio regions lie behind it on the raw device.
    const before: FioVerifyJob = { label: 'fio-before', device: '/dev/vda', offset: 160 * MiB, size: 32 * MiB };
    const reverify: FioVerifyJob = { ...before, label: 'fio-recheck', verifyOnly: true };
    const after: FioVerifyJob = { label: 'fio-after', device: '/dev/vda', offset: 200 * MiB, size: 32 * MiB };
    const guest = await startGuest({
      disks: [{ socketPath, numQueues: 2 }],
      cpus: 2,
      reconnect: true,
      timeoutMs: 200_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "serial $(cat /sys/block/vda/serial)"
echo "size $(cat /sys/block/vda/size)"
echo "ro $(cat /sys/block/vda/ro)"
echo "queues $(ls /sys/block/vda/mq | wc -l)"
mkfs.ext4 -q -F /dev/vda 128M
mount -t ext4 /dev/vda /mnt
seq 1 100000 > /mnt/seq.txt
mkdir /mnt/dir
dd if=/dev/urandom of=/mnt/dir/random.bin bs=64k count=64 2>/dev/null
for i in $(seq 1 50); do echo "file $i" > /mnt/dir/f$i; done
sync
cd /mnt && sha256sum seq.txt dir/random.bin > /tmp/files.sum && cd /
echo "sums $(cut -d' ' -f1 /tmp/files.sum | tr '\\n' ' ')"
umount /mnt
set +e
${fioVerifyScript(before)}
vbc_pause stopped
# The back end is down: these reads wait until QEMU has reconnected to the restarted daemon.
echo 3 > /proc/sys/vm/drop_caches
echo "outage-io-start"
mount -t ext4 -o ro /dev/vda /mnt || exit 11
cd /mnt && sha256sum -c -s /tmp/files.sum && echo "files-verified" ; cd /
echo "seq $(sha256sum /mnt/seq.txt | cut -d' ' -f1)"
echo "f42 $(cat /mnt/dir/f42)"
echo "count $(ls /mnt/dir | wc -l)"
umount /mnt || exit 12
${fioVerifyScript(reverify)}
${fioVerifyScript(after)}
`,
    });
    let stopCode: number | null;
    try {
      await guest.waitForPause('stopped', 150_000);
      const firstRun = await daemon.stats();
      const vol = firstRun.volumes[0];
      assert.ok(vol, 'one volume in /stats');
      assert.equal(vol.connected, true, 'the guest is connected before the restart');
      assert.ok(vol.requests.writes > 0 && vol.requests.reads > 0, JSON.stringify(vol.requests));
      assert.equal(vol.requests.ioErrors, 0);
      assert.equal(vol.requests.getIds, 1, 'the guest read the serial once');

      stopCode = await daemon.stop('SIGTERM');
      assert.equal(stopCode, 0, 'SIGTERM: clean exit');
      assert.equal(daemon.logsWith('stopped').length, 1, 'shutdown completed');
      assert.equal(fs.existsSync(control), false, 'the control socket is removed on exit');
      guest.resume('stopped');
      await guest.waitForConsole(/^outage-io-start$/m, 60_000);
      await sleep(3000);
      assert.doesNotMatch(guest.console, /files-verified/, 'guest I/O completed without a back end');

      await daemon.restart();
      const r = await guest.result();
      report('daemon restart boot', r);
      assert.equal(r.exitCode, 0, r.output);
      assert.equal(one(r.output, 'serial'), SERIAL);
      assert.equal(one(r.output, 'size'), String(IMAGE_BYTES / 512));
      assert.equal(one(r.output, 'ro'), '0');
      assert.equal(one(r.output, 'queues'), '2');
      const [seqSum, randomSum] = one(r.output, 'sums').split(' ');
      assert.equal(seqSum, sha256(seqText(100_000)), 'seq.txt content written by the guest');
      assert.match(randomSum ?? '', /^[0-9a-f]{64}$/);
      checkFioVerify(r.output, before);
      assert.match(r.output, /^files-verified$/m, 'files read back intact after the restart');
      assert.equal(one(r.output, 'seq'), seqSum);
      assert.equal(one(r.output, 'f42'), 'file 42');
      assert.equal(one(r.output, 'count'), '51');
      checkFioVerify(r.output, reverify);
      checkFioVerify(r.output, after);

      // The second run served the guest: QEMU reconnected and its I/O went through the new process.
      assert.equal(daemon.logsWith('front end connected').length, 1, 'QEMU reconnected once');
      const secondRun = await daemon.stats();
      const req = secondRun.volumes[0]?.requests;
      assert.ok(req, 'one volume in /stats');
      // After the restart only fio-after writes (ext4 is mounted read-only, fio-recheck only reads).
      assert.equal(req.bytesWritten, after.size, `writes after the restart: ${JSON.stringify(req)}`);
      assert.ok(req.bytesRead >= before.size + after.size, `reads after the restart: ${JSON.stringify(req)}`);
      assert.equal(req.ioErrors, 0);
      assert.equal(req.rejected, 0);
    } finally {
      await guest.kill();
    }
    assert.equal(await daemon.stop('SIGTERM'), 0);
    console.log(`      [e2e] daemon restart test total ${Date.now() - started} ms`);
  });

  it('a --read-only export is a read-only disk the guest cannot write', async () => {
    const started = Date.now();
    const socketPath = path.join(dir, 'ro.sock');
    const control = path.join(dir, 'control.sock');
    const image = path.join(dir, 'ro.img');
    const content = randomBytes(MiB);
    fs.mkdirSync(path.join(dir, 'tree'));
    fs.writeFileSync(path.join(dir, 'tree', 'data.bin'), content);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', path.join(dir, 'tree'), image, '64M']);
    const imageSum = sha256(fs.readFileSync(image));
    daemon = await VbcDaemon.start({
      control,
      args: ['--socket-path', socketPath, '--backing', image, '--read-only', '--serial', 'ro-disk', '--control', control],
    });
    const r = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 120_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
echo "ro $(cat /sys/block/vda/ro)"
echo "serial $(cat /sys/block/vda/serial)"
dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; echo "dd-rc $?"
blockdev --setrw /dev/vda
dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; echo "dd-setrw-rc $?"
mount -t ext4 -o ro /dev/vda /mnt || exit 2
echo "sum $(sha256sum /mnt/data.bin | cut -d' ' -f1)"
touch /mnt/new 2>/dev/null; echo "touch-rc $?"
umount /mnt
`,
    });
    report('read-only boot', r);
    assert.equal(r.exitCode, 0, r.output);
    assert.equal(one(r.output, 'ro'), '1', 'the guest sees VIRTIO_BLK_F_RO');
    assert.equal(one(r.output, 'serial'), 'ro-disk');
    assert.notEqual(one(r.output, 'dd-rc'), '0', 'a raw write must fail');
    assert.notEqual(one(r.output, 'dd-setrw-rc'), '0', 'a raw write must fail even after blockdev --setrw');
    assert.equal(one(r.output, 'sum'), sha256(content), 'the read-only disk serves the file');
    assert.notEqual(one(r.output, 'touch-rc'), '0', 'the file system is read-only');
    const stats = await daemon.stats();
    const vol = stats.volumes[0];
    assert.ok(vol);
    assert.equal(vol.readOnly, true);
    assert.ok(vol.requests.reads > 0, JSON.stringify(vol.requests));
    assert.equal(vol.requests.writes, 0, 'no write reached the daemon');
    assert.equal(await daemon.stop('SIGTERM'), 0);
    assert.equal(sha256(fs.readFileSync(image)), imageSum, 'the image is unchanged');
    console.log(`      [e2e] read-only test total ${Date.now() - started} ms`);
  });
});
