/**
 * One daemon (--config: two volumes, one shared cache, a control socket) serving two QEMU
 * guests at the same time. Both guests write the same layout (a marker in sector 0, ext4
 * files, fio regions at the same offsets) with different content; each then checks its own
 * data after both have written, so data crossing between the volumes (on the backing files
 * or in the shared cache) fails a checksum or a crc32c verification. While the guests run,
 * the control socket reports both volumes, a third volume is added and removed at runtime,
 * and removing a connected volume is refused. Finally the daemon restarts warm with both
 * volumes' blocks.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, startGuest, type Guest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, tagged, type FioVerifyJob } from './vm/output';
import { tmpDir } from '../support/tmp';

const MiB = 1 << 20;
const NAMES = ['alpha', 'beta'] as const;

/** The guest script for volume `name`: write, wait for the host, check. */
function script(name: string, write: FioVerifyJob, recheck: FioVerifyJob): string {
  return `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "serial $(cat /sys/block/vda/serial)"
# ext4 (4 KiB blocks) in the first 64 MiB leaves bytes 0..1023 alone: the marker lives there.
mkfs.ext4 -q -F -b 4096 /dev/vda 64M
echo "VBC-MARKER-${name}" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
mount -t ext4 /dev/vda /mnt
seq 1 30000 | sed 's/^/${name} /' > /mnt/lines.txt
dd if=/dev/urandom of=/mnt/random.bin bs=64k count=64 2>/dev/null
sync
cd /mnt && sha256sum lines.txt random.bin > /tmp/files.sum && cd /
echo "sums $(cut -d' ' -f1 /tmp/files.sum | tr '\\n' ' ')"
umount /mnt
set +e
${fioVerifyScript(write)}
vbc_pause written
# Both guests have written everything: read our own data back (not from the page cache).
echo 3 > /proc/sys/vm/drop_caches
echo "marker $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1)"
mount -t ext4 -o ro /dev/vda /mnt || exit 11
cd /mnt && sha256sum -c -s /tmp/files.sum && echo "files-ok"; cd /
echo "line $(sed -n 12345p /mnt/lines.txt)"
umount /mnt
${fioVerifyScript(recheck)}
`;
}

describe('two guests on one daemon with a shared cache @e2e', function () {
  this.timeout(300_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;
  const guests: Guest[] = [];

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-multi');
  });

  afterEach(async () => {
    await Promise.all(guests.splice(0).map((g) => g.kill()));
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps each guest on its own data, manages volumes at runtime and restarts warm', async () => {
    const started = Date.now();
    const control = path.join(dir, 'control.sock');
    const sock = (name: string): string => path.join(dir, `${name}.sock`);
    const img = (name: string): string => path.join(dir, `${name}.img`);
    const configFile = path.join(dir, 'config.json');
    fs.writeFileSync(
      configFile,
      JSON.stringify({
        cache: { path: path.join(dir, 'cache.img'), size: '64M', blockSize: 4096, segmentSize: '512K' },
        volumes: NAMES.map((name) => ({
          name,
          socketPath: sock(name),
          backing: img(name),
          size: '128M',
          serial: `${name}-disk`,
          numQueues: 2,
        })),
        control,
      }),
    );
    daemon = await VbcDaemon.start({ control, args: ['--config', configFile] });
    assert.equal(daemon.logsWith('cache started cold').length, 1);

    const jobs = NAMES.map((name) => {
      // The same offsets in both guests, each block holding its writer's name and offset.
      const write: FioVerifyJob = { label: 'fio-write', device: '/dev/vda', offset: 80 * MiB, size: 24 * MiB, pattern: `"${name}"%o` };
      return { name, write, recheck: { ...write, label: 'fio-recheck', verifyOnly: true } };
    });
    for (const j of jobs) {
      guests.push(
        await startGuest({
          disks: [{ socketPath: sock(j.name), numQueues: 2 }],
          timeoutMs: 280_000,
          script: script(j.name, j.write, j.recheck),
        }),
      );
    }
    await Promise.all(guests.map((g) => g.waitForPause('written', 240_000)));

    // Both guests are connected and paused: statistics, metrics, volume management.
    const stats = await daemon.stats();
    assert.deepEqual(stats.volumes.map((v) => v.name), [...NAMES]);
    for (const v of stats.volumes) {
      assert.equal(v.connected, true, `${v.name} connected`);
      assert.ok(v.requests.writes > 0 && v.requests.reads > 0 && v.requests.bytesWritten >= 24 * MiB, `${v.name}: ${JSON.stringify(v.requests)}`);
      assert.equal(v.requests.ioErrors, 0);
      const c = stats.cache?.volumes[v.name];
      assert.ok(c && c.blocks > 0 && c.insertions > 0, `${v.name} has cache blocks: ${JSON.stringify(stats.cache?.volumes)}`);
    }
    const metrics = await daemon.metrics();
    for (const name of NAMES) {
      for (const counter of ['vbc_write_requests_total', 'vbc_read_requests_total', 'vbc_written_bytes_total']) {
        const m = new RegExp(`^${counter}\\{volume="${name}"\\} (\\d+)$`, 'm').exec(metrics);
        assert.ok(m && Number(m[1]) > 0, `${counter} for ${name} in:\n${metrics}`);
      }
      assert.match(metrics, new RegExp(`^vbc_volume_connected\\{volume="${name}"\\} 1$`, 'm'));
    }

    const gamma = { name: 'gamma', socketPath: sock('gamma'), backing: img('gamma'), size: '16M' };
    const added = await daemon.request('POST', '/volumes', gamma);
    assert.equal(added.status, 201, added.body);
    assert.equal((JSON.parse(added.body) as { name: string }).name, 'gamma');
    assert.ok(fs.existsSync(sock('gamma')), 'the new volume listens on its socket');
    assert.equal(fs.statSync(img('gamma')).size, 16 * MiB, 'size created the backing file');
    const again = await daemon.request('POST', '/volumes', gamma);
    assert.equal(again.status, 409, `adding a volume twice: ${again.body}`);
    const listed = await daemon.request('GET', '/volumes');
    assert.equal(listed.status, 200);
    assert.deepEqual((JSON.parse(listed.body) as Array<{ name: string }>).map((v) => v.name), [...NAMES, 'gamma']);
    const busy = await daemon.request('DELETE', '/volumes/alpha');
    assert.equal(busy.status, 409, `removing a connected volume without force: ${busy.body}`);
    assert.equal((JSON.parse(busy.body) as { code: string }).code, 'EBUSY');
    const removed = await daemon.request('DELETE', '/volumes/gamma');
    assert.equal(removed.status, 200, removed.body);
    assert.deepEqual(JSON.parse(removed.body), { removed: 'gamma' });
    assert.equal(fs.existsSync(sock('gamma')), false, 'removing the volume removes its socket');
    const missing = await daemon.request('DELETE', '/volumes/gamma');
    assert.equal(missing.status, 404, missing.body);
    assert.deepEqual((await daemon.stats()).volumes.map((v) => v.name), [...NAMES]);

    for (const g of guests) g.resume('written');
    const results = await Promise.all(guests.map((g) => g.result()));
    results.forEach((r, i) => {
      const { name, write, recheck } = jobs[i] as (typeof jobs)[number];
      report(`${name} boot`, r);
      assert.equal(r.exitCode, 0, `${name}:\n${r.output}`);
      assert.equal(one(r.output, 'serial'), `${name}-disk`);
      assert.equal(one(r.output, 'marker'), `VBC-MARKER-${name}`, `${name} reads its own sector 0`);
      assert.match(r.output, /^files-ok$/m, `${name} files read back intact`);
      assert.equal(one(r.output, 'line'), `${name} 12345`);
      checkFioVerify(r.output, write);
      checkFioVerify(r.output, recheck);
    });
    const [alphaSums, betaSums] = results.map((r) => tagged(r.output, 'sums')[0]);
    assert.notEqual(alphaSums, betaSums, 'the guests wrote different files');
    for (const name of NAMES) {
      const head = Buffer.alloc(32);
      const fd = fs.openSync(img(name), 'r');
      fs.readSync(fd, head, 0, head.length, 0);
      fs.closeSync(fd);
      assert.equal(head.toString('latin1').split('\n')[0], `VBC-MARKER-${name}`, `${name}.img sector 0`);
    }

    // Warm restart with both volumes.
    const before = await daemon.stats();
    assert.equal(await daemon.stop('SIGTERM'), 0, 'SIGTERM: clean exit');
    assert.equal(daemon.logsWith('cache saved for a warm restart').length, 1);
    await daemon.restart();
    assert.equal(daemon.logsWith('cache loaded warm').length, 1, 'the restarted daemon loads the cache warm');
    const after = await daemon.stats();
    assert.deepEqual(after.volumes.map((v) => v.name), [...NAMES]);
    for (const name of NAMES) {
      const blocks = after.cache?.volumes[name]?.blocks ?? 0;
      assert.ok(blocks > 0, `${name} keeps its cache blocks across the restart`);
      assert.equal(blocks, before.cache?.volumes[name]?.blocks, `${name}: same cached blocks as before the restart`);
    }
    assert.equal(await daemon.stop('SIGTERM'), 0);
    console.log(`      [e2e] multi-VM test total ${Date.now() - started} ms`);
  });
});
