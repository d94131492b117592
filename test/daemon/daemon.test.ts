/**
 * The whole daemon in-process (two volumes, one shared cache, control socket) driven by our
 * own front end: self-verifying data, a malformed front end on one volume while the other
 * keeps serving, a failing network backing store, reconnects and a warm restart.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { controlJson, controlRequest } from '../../src/control/client';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/frontend/ring-driver';
import { VhostError } from '../../src/native/errors';
import { silentLogger } from '../../src/util/logger';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN } from '../../src/virtio-blk/spec';
import { tmpDir } from '../support/tmp';
import { waitFor } from '../support/wait';
import { BLOCK, checkBlocks, range, stamp, writeBlocks } from './helpers';


describe('daemon (in-process, our front end)', function () {
  this.timeout(60_000);
  let dir: string;
  let config: DaemonConfig;
  let daemon: Daemon | undefined;
  const open: VhostUserFrontend[] = [];

  async function connect(vol: 'a' | 'b'): Promise<VhostUserFrontend> {
    const fe = await VhostUserFrontend.open(path.join(dir, `${vol}.sock`), { queues: 2, queueSize: 128, memorySize: 16 << 20 });
    open.push(fe);
    return fe;
  }

  beforeEach(() => {
    dir = tmpDir('daemon');
    config = validateConfig({
      cache: { path: path.join(dir, 'cache.img'), size: '8M' },
      control: path.join(dir, 'control.sock'),
      volumes: ['a', 'b'].map((n) => ({
        name: n,
        socketPath: path.join(dir, `${n}.sock`),
        backing: path.join(dir, `${n}.img`),
        size: '16M',
        numQueues: 2,
      })),
    });
  });

  afterEach(async () => {
    for (const fe of open.splice(0)) fe.close();
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps two volumes apart and serves both at once', async () => {
    daemon = await Daemon.start(config, silentLogger);
    const [a, b] = [await connect('a'), await connect('b')];
    await Promise.all([writeBlocks(a, 'a', range(64), 1), writeBlocks(b, 'b', range(64), 1)]);
    await Promise.all([checkBlocks(a, 'a', range(64), 1), checkBlocks(b, 'b', range(64), 1)]);
    const stats = daemon.stats();
    assert.deepEqual(stats.volumes.map((v) => [v.name, v.connected, v.requests.writes]), [['a', true, 64], ['b', true, 64]]);
    assert.ok((stats.cache?.volumes.a?.readHits ?? 0) > 0 && (stats.cache?.volumes.b?.readHits ?? 0) > 0, 'both volumes hit the shared cache');
    const metrics = (await controlRequest(config.control as string, 'GET', '/metrics')).body;
    assert.match(metrics, /vbc_write_requests_total\{volume="a"\} 64/);
    assert.match(metrics, /vbc_write_requests_total\{volume="b"\} 64/);
    assert.match(metrics, /vbc_cache_read_hits_total\{volume="a"\} [1-9]/);
    assert.match(metrics, /vbc_cache_blocks\{volume="b"\} [1-9]/);
    // No eviction yet: the policy's decay period is still its initial 1.
    assert.match(metrics, /^vbc_cache_decay_period 1$/m);
    // Nor a block evicted after reuse: admission still takes every read miss.
    assert.match(metrics, /^vbc_cache_admit_share 1$/m);
    assert.match(metrics, /^vbc_cache_first_touches_refused_total\{volume="a"\} 0$/m);
    assert.match(metrics, /^vbc_cache_refused_ghost_hits_total\{volume="b"\} 0$/m);
    assert.match(metrics, /^vbc_cache_kills_marked_total 0$/m);
    // Writes over cached blocks mark their segment instead of waiting for its header rewrite.
    await writeBlocks(a, 'a', range(8), 2);
    await checkBlocks(a, 'a', range(8), 2);
    const after = (await controlRequest(config.control as string, 'GET', '/metrics')).body;
    assert.match(after, /^vbc_cache_kills_marked_total [1-9]\d*$/m);
    assert.match(after, /^vbc_cache_marked_segments \d+$/m);
  });

  it('drops only the volume whose front end misbehaves and serves its next connection', async () => {
    daemon = await Daemon.start(config, silentLogger);
    const b = await connect('b');
    await writeBlocks(b, 'b', range(32), 1);
    const bad = [
      // a descriptor loop
      (fe: VhostUserFrontend, hdr: number) =>
        fe.ring(0).submitRaw({
          descs: [
            { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 },
            { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 0 },
          ],
        }),
      // a data buffer outside guest memory
      (fe: VhostUserFrontend, hdr: number) =>
        fe.ring(0).submitRaw({ descs: [{ addr: hdr, len: 16 }, { addr: 2 ** 40, len: 4096, write: true }, { addr: hdr + 16, len: 1, write: true }] }),
      // garbage instead of a vhost-user header
      (fe: VhostUserFrontend) => {
        fe.rawBytes(Buffer.from('this is not a vhost-user message'));
        return fe.whenDisconnected();
      },
    ];
    for (const attack of bad) {
      const a = await connect('a');
      const hdr = a.memory.alloc(64, 64);
      a.memory.view.setUint32(hdr.addr, VIRTIO_BLK_T_IN, true);
      const during = checkBlocks(b, 'b', range(32), 1);
      await Promise.allSettled([attack(a, hdr.addr)]);
      await a.whenDisconnected();
      await during;
      const again = await connect('a');
      await writeBlocks(again, 'a', [5], 2);
      await checkBlocks(again, 'a', [5], 2);
      again.close();
    }
    await checkBlocks(b, 'b', range(32), 1);
    assert.equal(daemon.getVolume('b')?.connected, true);
  });

  it('survives front end reconnects and restarts warm with the same data', async () => {
    daemon = await Daemon.start(config, silentLogger);
    let a = await connect('a');
    await writeBlocks(a, 'a', range(128), 1);
    await writeBlocks(a, 'a', range(16, 8), 2);
    a.close();
    a = await connect('a');
    const want = (blk: number): number => (blk >= 8 && blk < 24 ? 2 : 1);
    for (const blk of range(128)) await checkBlocks(a, 'a', [blk], want(blk));
    a.close();
    await daemon.shutdown();
    daemon = await Daemon.start(config, silentLogger);
    assert.equal(daemon.cache?.warm, true, 'the cache loaded warm');
    a = await connect('a');
    for (const blk of range(128)) await checkBlocks(a, 'a', [blk], want(blk));
    const c = daemon.stats().cache?.volumes.a;
    assert.ok(c !== undefined && c.readHits >= 100, `warm hits: ${JSON.stringify(c)}`);
  });

  it('adds and removes volumes at runtime; refuses to remove a connected one unless forced', async () => {
    daemon = await Daemon.start(config, silentLogger);
    const ctl = config.control as string;
    const c = { name: 'c', socketPath: path.join(dir, 'c.sock'), backing: path.join(dir, 'c.img'), size: '4M' };
    await controlJson(ctl, 'POST', '/volumes', c);
    await assert.rejects(controlJson(ctl, 'POST', '/volumes', c), (e: VhostError) => e.code === 'EEXIST');
    await assert.rejects(controlJson(ctl, 'POST', '/volumes', { ...c, name: 'd', logicalBlockSize: 7 }), (e: VhostError) => /logicalBlockSize/.test(e.message));
    const fe = await VhostUserFrontend.open(c.socketPath, { queues: 1, memorySize: 8 << 20 });
    open.push(fe);
    assert.equal((await fe.ring(0).write(0, stamp('c', 0, 1))).status, VIRTIO_BLK_S_OK);
    const refused = await controlRequest(ctl, 'DELETE', '/volumes/c');
    assert.equal(refused.status, 409);
    assert.equal((await controlRequest(ctl, 'DELETE', '/volumes/c?force=1')).status, 200);
    await fe.whenDisconnected();
    assert.deepEqual(daemon.volumeNames(), ['a', 'b']);
    assert.equal(fs.existsSync(c.socketPath), false, 'socket removed');
  });

  it('refuses a second daemon on the same cache device', async () => {
    daemon = await Daemon.start(config, silentLogger);
    const other = { ...config, control: undefined, volumes: config.volumes.map((v) => ({ ...v, socketPath: `${v.socketPath}2` })) } as DaemonConfig;
    await assert.rejects(Daemon.start(other, silentLogger), (e: VhostError) => e.code === 'EBUSY');
  });
});

describe('daemon with a failing network backing store @host', function () {
  this.timeout(60_000);
  let dir: string;
  let nbdkit: ChildProcess | undefined;
  let daemon: Daemon | undefined;
  let fe: VhostUserFrontend | undefined;

  after(async () => {
    fe?.close();
    if (daemon !== undefined) await daemon.shutdown();
    nbdkit?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers IOERR for the failed reads only and keeps serving', async () => {
    dir = tmpDir('daemon-nbd');
    const sock = path.join(dir, 'nbd.sock');
    const trigger = path.join(dir, 'fail');
    // error filter: reads fail with EIO while the trigger file exists.
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, '--filter=error', 'memory', '16M', 'error-pread=EIO', `error-pread-file=${trigger}`, 'error-pread-rate=100%'], {
      stdio: 'ignore',
    });
    await waitFor(() => fs.existsSync(sock), 'the nbdkit socket');
    const config = validateConfig({
      volumes: [{ name: 'n', socketPath: path.join(dir, 'n.sock'), backing: `nbd+unix:///?socket=${sock}` }],
    });
    daemon = await Daemon.start(config, silentLogger);
    fe = await VhostUserFrontend.open(path.join(dir, 'n.sock'), { queues: 1, memorySize: 8 << 20 });
    const q = fe.ring(0);
    assert.equal((await q.write(0, stamp('n', 0, 1))).status, VIRTIO_BLK_S_OK);
    fs.writeFileSync(trigger, '');
    assert.equal((await q.read(0, BLOCK)).status, VIRTIO_BLK_S_IOERR);
    assert.equal((await q.write(8, stamp('n', 1, 1))).status, VIRTIO_BLK_S_OK, 'writes still work');
    fs.rmSync(trigger);
    const r = await q.read(0, BLOCK);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(r.data as Uint8Array).equals(stamp('n', 0, 1)));
    assert.equal(daemon.stats().volumes[0]?.requests.ioErrors, 1);
  });
});
