/**
 * The daemon under fuzzing (src/frontend/fuzzer.ts): `vhost-blk-cache serve` as a child process
 * with a shared cache and two exports, `fz` (attacked) and `ok` (the bystander), plus the probe
 * the fuzzer runs after each iteration: the process is alive and `ok` answers a write and a read
 * of self-verifying data within 3 s each.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VhostUserFrontend } from '../frontend/vhost-user-frontend';
import { VhostError } from '../native/errors';
import { startVbc, type VbcTarget } from './targets';
import { VIRTIO_BLK_S_OK } from '../virtio-blk/spec';

export interface FuzzTarget {
  target: VbcTarget;
  /** Socket of the attacked export. */
  socketPath: string;
  probe(): Promise<void>;
  stop(): Promise<void>;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new VhostError(`${what}: no answer within ${ms} ms`, 'ETIMEDOUT')), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function startFuzzTarget(logLevel = 'error'): Promise<FuzzTarget> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-fuzz-'));
  const vol = (name: string) => ({ name, socketPath: path.join(dir, `${name}.sock`), backing: path.join(dir, `${name}.img`), size: 16 << 20, numQueues: 2 });
  const target = await startVbc({
    volumes: [vol('fz'), vol('ok')],
    cache: { path: path.join(dir, 'cache.img'), size: 8 << 20 },
    logLevel,
    configPath: path.join(dir, 'config.json'),
  });
  let bystander: VhostUserFrontend | undefined;
  let gen = 0;
  return {
    target,
    socketPath: path.join(dir, 'fz.sock'),
    async probe() {
      if (!target.running) throw new VhostError(`the daemon exited: ${target.output().slice(-2000)}`, 'ECHILD');
      bystander ??= await VhostUserFrontend.open(path.join(dir, 'ok.sock'), { memorySize: 1 << 20, queueSize: 16, replyTimeoutMs: 3000 });
      const g = ++gen;
      const block = Buffer.alloc(4096, `ok:${g % 256}:${g}:`);
      const sector = (g % 256) * 8;
      const w = await withTimeout(bystander.ring(0).write(sector, block), 3000, 'bystander write');
      assert.equal(w.status, VIRTIO_BLK_S_OK, 'bystander write status');
      const r = await withTimeout(bystander.ring(0).read(sector, 4096), 3000, 'bystander read');
      assert.equal(r.status, VIRTIO_BLK_S_OK, 'bystander read status');
      assert.ok(Buffer.from(r.data as Uint8Array).equals(block), 'the bystander export returns what was written');
    },
    async stop() {
      bystander?.close();
      await target.stop('SIGTERM', 5000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
