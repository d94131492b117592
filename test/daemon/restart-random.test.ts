/**
 * Randomized restart test (issue 10): several runs of the in-process daemon over one file
 * volume with a warm cache, random offline changes of the file between runs (dd over blocks
 * with and without `touch -r` restoring the mtime, cp of an older backup, rm + re-create,
 * truncate + extend, no change). Data is stamped (volume, block, generation); every block is
 * read at the start of each run and random reads follow random writes, each compared with the
 * file's expected content. Seeded; a failure names the one-line reproduction.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { silentLogger } from '../../src/util/logger';
import { rng } from '../cache/helpers';
import { BLOCK, range, readBlocks, stamp, writeBlocks } from './helpers';
import { tmpDir } from '../support/tmp';

const BLOCKS = 256;
const SIZE = BLOCKS * BLOCK;
const RUNS = 8;

type Change = 'dd' | 'dd + touch -r' | 'cp backup' | 'rm + re-create' | 'truncate + extend' | 'none';
const CHANGES: Change[] = ['dd', 'dd + touch -r', 'cp backup', 'rm + re-create', 'truncate + extend', 'none'];

async function runSeed(seed: number): Promise<void> {
  const r = rng(seed);
  const dir = tmpDir('restart');
  const img = path.join(dir, 'a.img');
  const backup = path.join(dir, 'backup.img');
  const config = validateConfig({
    cache: { path: path.join(dir, 'cache.img'), size: '4M' },
    volumes: [{ name: 'a', socketPath: path.join(dir, 'a.sock'), backing: img, size: SIZE, numQueues: 1 }],
  });
  fs.writeFileSync(img, Buffer.alloc(SIZE));
  /** What the file holds: the reference every read is compared with. */
  let model = Buffer.alloc(SIZE);
  fs.writeFileSync(backup, model);
  let gen = 1;
  const history: string[] = [];
  const where = (): string => `seed ${seed}, after ${history.join(' | ')} (reproduce: VBC_RESTART_SEED=${seed} npx mocha --no-config dist/test/daemon/restart-random.test.js)`;

  const stampRun = (first: number, n: number): Buffer => Buffer.concat(range(n, first).map((b) => stamp('a', b, gen)));

  const offline = (change: Change): void => {
    const first = Math.floor(r() * (BLOCKS - 8));
    const n = 1 + Math.floor(r() * 8);
    switch (change) {
      case 'dd':
      case 'dd + touch -r': {
        const ref = `${img}.ref`;
        if (change === 'dd + touch -r') execFileSync('touch', ['-r', img, ref]);
        const src = path.join(dir, 'dd.src');
        const data = stampRun(first, n);
        gen++;
        fs.writeFileSync(src, data);
        execFileSync('dd', [`if=${src}`, `of=${img}`, `bs=${BLOCK}`, `seek=${first}`, 'conv=notrunc', 'status=none']);
        if (change === 'dd + touch -r') execFileSync('touch', ['-r', ref, img]);
        data.copy(model, first * BLOCK);
        break;
      }
      case 'cp backup':
        execFileSync('cp', [backup, img]);
        model = fs.readFileSync(backup);
        break;
      case 'rm + re-create': {
        fs.rmSync(img);
        const fresh = Buffer.alloc(SIZE);
        stampRun(first, n).copy(fresh, first * BLOCK);
        gen++;
        fs.writeFileSync(img, fresh);
        model = fresh;
        break;
      }
      case 'truncate + extend':
        fs.truncateSync(img, first * BLOCK);
        fs.truncateSync(img, SIZE);
        model.fill(0, first * BLOCK);
        break;
      case 'none':
        break;
    }
    // The test's own bookkeeping is right: the file holds the model.
    assert.ok(fs.readFileSync(img).equals(model), `model of the file after ${change}`);
  };

  const check = async (fe: VhostUserFrontend, blocks: number[], what: string): Promise<void> => {
    const got = await readBlocks(fe, blocks);
    got.forEach((b, i) => {
      const blk = blocks[i] as number;
      const want = model.subarray(blk * BLOCK, (blk + 1) * BLOCK);
      assert.ok(b.equals(want), `${what}: block ${blk} read ${JSON.stringify(b.subarray(0, 10).toString('latin1'))}, the file holds ${JSON.stringify(want.subarray(0, 10).toString('latin1'))}; ${where()}`);
    });
  };

  let daemon: Daemon | undefined;
  let fe: VhostUserFrontend | undefined;
  try {
    for (let run = 0; run < RUNS; run++) {
      daemon = await Daemon.start(config, silentLogger);
      fe = await VhostUserFrontend.open(path.join(dir, 'a.sock'), { queues: 1, queueSize: 128, memorySize: 16 << 20 });
      await check(fe, range(BLOCKS), `run ${run} start`);
      for (let op = 0; op < 30; op++) {
        const first = Math.floor(r() * (BLOCKS - 4));
        const blocks = range(1 + Math.floor(r() * 4), first);
        if (r() < 0.4) {
          await writeBlocks(fe, 'a', blocks, gen);
          for (const b of blocks) stamp('a', b, gen).copy(model, b * BLOCK);
          gen++;
        } else {
          await check(fe, blocks, `run ${run} op ${op}`);
        }
      }
      // Sometimes the backup is refreshed from the current content (the next cp restores it).
      if (r() < 0.3) {
        fe.close();
        fe = undefined;
        await daemon.shutdown();
        daemon = undefined;
        fs.copyFileSync(img, backup);
      }
      fe?.close();
      fe = undefined;
      await daemon?.shutdown();
      daemon = undefined;
      const change = CHANGES[Math.floor(r() * CHANGES.length)] as Change;
      history.push(`run ${run}, ${change}`);
      offline(change);
    }
  } finally {
    fe?.close();
    await daemon?.shutdown();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('randomized restarts with offline changes of a file volume (seeded)', function () {
  this.timeout(120_000);
  const seeds = process.env.VBC_RESTART_SEED !== undefined ? [Number(process.env.VBC_RESTART_SEED)] : [1, 2, 3];
  for (const seed of seeds) it(`seed ${seed}: ${RUNS} runs`, () => runSeed(seed));
});
