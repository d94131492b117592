/**
 * qemu-storage-daemon as a reference vhost-user-blk back end for the e2e harness: serves a raw
 * image file on a unix socket, the same protocol our daemon speaks.
 */
import * as fs from 'node:fs';
import { qsdArgv } from '../../../src/bench/targets';
import { VhostError } from '../../../src/native/errors';
import { BackendProcess } from './child';

export interface StorageDaemonOptions {
  /** Raw image file served as the disk. */
  image: string;
  /** Unix socket path of the vhost-user-blk export (replaced if it exists). */
  socketPath: string;
  /** Export queue count (QSD default when omitted). */
  numQueues?: number;
  /** Time to wait for the socket to appear. Default 10 s. */
  readyTimeoutMs?: number;
}

export class StorageDaemon {
  private child: BackendProcess | undefined;

  private constructor(private readonly opts: StorageDaemonOptions) {}

  /** Starts the daemon and resolves once its socket is listening. */
  static async start(opts: StorageDaemonOptions): Promise<StorageDaemon> {
    const d = new StorageDaemon(opts);
    await d.launch();
    return d;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitStatus === undefined;
  }

  private async launch(): Promise<void> {
    if (this.running) throw new VhostError('qemu-storage-daemon already running', 'EBUSY');
    const { image, socketPath, numQueues } = this.opts;
    // A socket left by a killed daemon would make the readiness check below pass too early.
    fs.rmSync(socketPath, { force: true });
    // The benchmarks' command line (num-queues 1 is QSD's default; no discard=unmap, as before).
    const [command, ...args] = qsdArgv({ socketPath, image, numQueues, discard: false });
    this.child = new BackendProcess({ name: 'qemu-storage-daemon', command: command as string, args });
    await this.child.waitUntil(() => fs.existsSync(socketPath), this.opts.readyTimeoutMs ?? 10_000, `socket ${socketPath} appeared`);
  }

  /** Sends `signal` (SIGKILL simulates a crash) and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.child?.stop(signal);
    this.child = undefined;
  }

  /** Starts the daemon again on the same image and socket (after stop()). */
  async restart(): Promise<void> {
    await this.launch();
  }
}
