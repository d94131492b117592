/**
 * qemu-storage-daemon as a reference vhost-user-blk back end for the e2e harness: serves a raw
 * image file on a unix socket, the same protocol our daemon speaks.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostError } from '../../../src/native/errors';

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
  private proc: ChildProcess | undefined;
  private stderrText = '';

  private constructor(private readonly opts: StorageDaemonOptions) {}

  /** Starts the daemon and resolves once its socket is listening. */
  static async start(opts: StorageDaemonOptions): Promise<StorageDaemon> {
    const d = new StorageDaemon(opts);
    await d.launch();
    return d;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get running(): boolean {
    return this.proc !== undefined;
  }

  private async launch(): Promise<void> {
    if (this.proc) throw new VhostError('qemu-storage-daemon already running', 'EBUSY');
    const { image, socketPath, numQueues } = this.opts;
    // A socket left by a killed daemon would make the readiness check below pass too early.
    fs.rmSync(socketPath, { force: true });
    let exportOpt =
      `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${socketPath},writable=on`;
    if (numQueues !== undefined) exportOpt += `,num-queues=${numQueues}`;
    const proc = spawn(
      'qemu-storage-daemon',
      ['--blockdev', `driver=file,node-name=f0,filename=${image}`, '--export', exportOpt],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.proc = proc;
    this.stderrText = '';
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (c: string) => {
      this.stderrText += c;
    });
    let exitInfo: string | undefined;
    proc.once('exit', (code, signal) => {
      exitInfo = `code ${code}, signal ${signal}`;
      if (this.proc === proc) this.proc = undefined;
    });
    proc.once('error', (err) => {
      exitInfo = err.message;
      if (this.proc === proc) this.proc = undefined;
    });
    const deadline = Date.now() + (this.opts.readyTimeoutMs ?? 10_000);
    while (!fs.existsSync(socketPath)) {
      if (exitInfo !== undefined) {
        throw new VhostError(`qemu-storage-daemon failed (${exitInfo}): ${this.stderrText}`, 'EQSD');
      }
      if (Date.now() > deadline) {
        await this.stop('SIGKILL');
        throw new VhostError(`qemu-storage-daemon socket ${socketPath} did not appear`, 'ETIMEDOUT');
      }
      await sleep(20);
    }
  }

  /** Sends `signal` (SIGKILL simulates a crash) and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill(signal);
      await exited;
    }
    this.proc = undefined;
  }

  /** Starts the daemon again on the same image and socket (after stop()). */
  async restart(): Promise<void> {
    await this.launch();
  }
}
