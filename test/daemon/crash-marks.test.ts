/**
 * The daemon process SIGKILLed in the middle of overwrites of cached blocks (write-through), at
 * least KILLS times: after each restart, every block read through the daemon equals what the
 * backing file holds. The writes over cached blocks do not wait for the header rewrites that
 * kill the old copies; they mark the segments in the superblock (src/cache/kill-marks.ts) by a
 * store into a shared mapping of its page, and the test asserts that some restart found marks
 * there: the stores reached the file and outlived the process (red when they go nowhere).
 * Whether a mark is ever the only thing that stops a stale copy here depends on a kill landing
 * between a backing write and its header rewrite, which on this machine it practically never
 * does (a recovery that ignores the marks passed 75 kills): the exact cases are
 * test/cache/log-durable.test.ts's, with a device that holds the rewrite.
 * The daemon is the real program (bin/vhost-blk-cache serve) on io_uring; blocks are stamped with
 * (block, generation). VBC_CRASH_MARKS_SEED and VBC_CRASH_MARKS_KILLS repeat it longer.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { rng } from '../cache/helpers';
import { VbcDaemon } from '../e2e/vm/daemon';
import { BLOCK, range, stamp } from './helpers';
import { tmpDir } from '../support/tmp';

const BLOCKS = 2048;
/** Overwrites kept in flight while the daemon runs to its kill. */
const DEPTH = 32;
/** Kills at least; more (up to MAX_KILLS) until a restart found kill marks on the device. */
const KILLS = Number(process.env.VBC_CRASH_MARKS_KILLS ?? 4);
const MAX_KILLS = 16;
const SEED = Number(process.env.VBC_CRASH_MARKS_SEED ?? 1);

describe('daemon process killed during overwrites of cached blocks (write-through)', function () {
  this.timeout(300_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;
  let fe: VhostUserFrontend | undefined;

  beforeEach(() => {
    dir = tmpDir('crash-marks');
  });

  afterEach(async () => {
    fe?.close();
    fe = undefined;
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Every block through the daemon against the backing file, read after it (nothing writes now). */
  async function verifyAll(f: VhostUserFrontend, img: string, where: string): Promise<void> {
    const q = f.ring(0);
    for (let from = 0; from < BLOCKS; from += 64) {
      const blocks = range(Math.min(64, BLOCKS - from), from);
      const rs = await Promise.all(blocks.map((b) => q.read(b * 8, BLOCK)));
      const file = fs.readFileSync(img);
      rs.forEach((r, i) => {
        const b = blocks[i] as number;
        assert.equal(r.status, VIRTIO_BLK_S_OK);
        const want = file.subarray(b * BLOCK, (b + 1) * BLOCK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(want), `${where}: block ${b} differs from the backing file (seed ${SEED}; reproduce: VBC_CRASH_MARKS_SEED=${SEED})`);
      });
    }
  }

  it('every block read after each restart equals the backing file; some restart found kill marks to honour', async () => {
    const r = rng(SEED);
    const img = path.join(dir, 'a.img');
    const sock = path.join(dir, 'a.sock');
    const control = path.join(dir, 'control.sock');
    fs.writeFileSync(img, Buffer.alloc(BLOCKS * BLOCK));
    const config = path.join(dir, 'config.json');
    fs.writeFileSync(
      config,
      JSON.stringify({
        cache: { path: path.join(dir, 'cache.img'), size: '16M' },
        control,
        volumes: [{ name: 'a', socketPath: sock, backing: img, size: BLOCKS * BLOCK, cacheMode: 'writethrough' }],
      }),
    );
    const connect = async (): Promise<VhostUserFrontend> => (fe = await VhostUserFrontend.open(sock, { queues: 1, queueSize: 128, memorySize: 16 << 20 }));
    daemon = await VbcDaemon.start({ args: ['--config', config], control });
    // Generation 1 everywhere, cached by the writes themselves.
    let f = await connect();
    for (let from = 0; from < BLOCKS; from += 64) {
      const rs = await Promise.all(range(Math.min(64, BLOCKS - from), from).map((b) => f.ring(0).write(b * 8, stamp('a', b, 1))));
      for (const x of rs) assert.equal(x.status, VIRTIO_BLK_S_OK);
    }
    let marksFound = 0;
    let kills = 0;
    let gen = 1;
    while (kills < KILLS || (marksFound === 0 && kills < MAX_KILLS)) {
      // Overwrites of random (cached) blocks, DEPTH in flight, until the daemon dies under them.
      let dead = false;
      const q = f.ring(0);
      const lane = async (): Promise<void> => {
        while (!dead) {
          const b = Math.floor(r() * BLOCKS);
          try {
            await q.write(b * 8, stamp('a', b, ++gen));
          } catch {
            return; // the connection went with the daemon
          }
        }
      };
      const lanes = Array.from({ length: DEPTH }, lane);
      await sleep(40 + Math.floor(r() * 160));
      dead = true;
      assert.equal(await daemon.stop('SIGKILL'), null, 'killed by SIGKILL');
      kills++;
      f.close();
      await Promise.all(lanes);
      await daemon.restart();
      const recovered = daemon.logsWith('cache recovered from the segment headers')[0];
      assert.ok(recovered !== undefined, 'the restart recovered the index from the segment headers');
      if (Number(recovered.marked) > 0) marksFound++;
      f = await connect();
      await verifyAll(f, img, `after kill ${kills}`);
    }
    assert.ok(marksFound > 0, `a restart found kill marks on the device (${kills} kills)`);
  });
});
