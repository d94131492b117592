/**
 * Life cycle of a back-end process for the e2e harness (qemu-storage-daemon, our daemon):
 * spawn with stderr captured, wait until a readiness condition holds (or fail with the
 * stderr when the process dies first), stop with a signal and report how it exited.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostError } from '../../../src/native/errors';

export interface ExitStatus {
  /** Exit code, or null when a signal ended the process. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface BackendProcessOptions {
  /** Name used in error messages (e.g. "qemu-storage-daemon"). */
  name: string;
  command: string;
  args: string[];
  /** Called with every stderr chunk (utf8), e.g. to split log lines. */
  onStderr?: (chunk: string) => void;
}

/** Poll interval of waitUntil(). */
const POLL_MS = 20;

/** One spawned process (stdin and stdout ignored, stderr captured). */
export class BackendProcess {
  readonly proc: ChildProcess;
  /** Everything the process wrote to stderr. */
  stderr = '';
  private status: ExitStatus | undefined;
  private failure: string | undefined;
  private readonly exited: Promise<ExitStatus>;

  constructor(private readonly opts: BackendProcessOptions) {
    this.proc = spawn(opts.command, opts.args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr?.setEncoding('utf8');
    this.proc.stderr?.on('data', (chunk: string) => {
      this.stderr += chunk;
      opts.onStderr?.(chunk);
    });
    this.exited = new Promise<ExitStatus>((resolve) => {
      // 'close' (not 'exit'): by then stderr has been read to its end.
      this.proc.once('close', (code, signal) => {
        this.status = { code, signal };
        resolve(this.status);
      });
      this.proc.once('error', (err) => {
        // spawn failure (e.g. ENOENT): no 'close' follows.
        this.failure = err.message;
        this.status = { code: null, signal: null };
        resolve(this.status);
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** The exit status once the process has ended, else undefined. */
  get exitStatus(): ExitStatus | undefined {
    return this.status;
  }

  private describeExit(): string {
    if (this.failure !== undefined) return this.failure;
    return `code ${this.status?.code ?? null}, signal ${this.status?.signal ?? null}`;
  }

  /**
   * Resolves once `ready()` returns true. Rejects (with the stderr) when the process exits
   * first, or kills it and rejects when `timeoutMs` passes; `what` names the condition.
   */
  async waitUntil(ready: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      if (this.status !== undefined) {
        throw new VhostError(`${this.opts.name} failed (${this.describeExit()}) before ${what}: ${this.stderr}`, 'EBACKEND');
      }
      if (Date.now() > deadline) {
        await this.stop('SIGKILL');
        throw new VhostError(`${this.opts.name}: ${what} did not happen within ${timeoutMs} ms: ${this.stderr}`, 'ETIMEDOUT');
      }
      await sleep(POLL_MS);
    }
  }

  /** Sends `signal` (SIGKILL simulates a crash) unless the process has ended; waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitStatus> {
    if (this.status === undefined) this.proc.kill(signal);
    return this.exited;
  }
}
