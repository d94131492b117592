/**
 * Test helper: runs qemu-storage-daemon with a vhost-user-blk export of a fresh sparse image in
 * a temp directory, waits until its socket accepts connections, and kills it on stop(). The
 * command line is the benchmarks' (qsdArgv in src/bench/targets); the e2e harness's
 * StorageDaemon (test/e2e/vm/qsd.ts) uses it too.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { canConnect, qsdArgv } from '../../src/bench/targets';
import { tmpDir } from './tmp';

export interface QsdOptions {
  /** Image size in bytes (default 64 MiB). */
  size?: number;
  numQueues?: number;
  /** Blockdev discard=unmap (default true). */
  discard?: boolean;
  writable?: boolean;
}

export interface Qsd {
  readonly socketPath: string;
  readonly imagePath: string;
  readonly size: number;
  /** stderr/stdout of the daemon so far. */
  output(): string;
  stop(): Promise<void>;
}

export async function startQsd(opts: QsdOptions = {}): Promise<Qsd> {
  const size = opts.size ?? 64 << 20;
  const dir = tmpDir('qsd');
  const imagePath = path.join(dir, 'disk.img');
  const socketPath = path.join(dir, 'vhost.sock');
  fs.writeFileSync(imagePath, '');
  fs.truncateSync(imagePath, size);
  const [cmd, ...args] = qsdArgv({ socketPath, image: imagePath, numQueues: opts.numQueues, discard: opts.discard, writable: opts.writable });
  const proc: ChildProcess = spawn(cmd as string, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let dead = false;
  void exited.then(() => (dead = true));
  const deadline = Date.now() + 10000;
  while (!(fs.existsSync(socketPath) && (await canConnect(socketPath)))) {
    if (dead || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`qemu-storage-daemon did not start: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    socketPath,
    imagePath,
    size,
    output: () => out,
    async stop() {
      if (!dead) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
