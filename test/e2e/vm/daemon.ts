/**
 * Our daemon (bin/vhost-blk-cache serve) as a child process for the e2e tests: start it, wait
 * for its 'ready to accept connections' log line, keep its pino log lines (parsed JSON) for
 * assertions, stop it with a signal (SIGTERM: drain, save the cache, exit 0), start it again
 * with the same arguments, and talk to its control socket (HTTP over a unix socket).
 */
import * as path from 'node:path';
import { controlRequest, type ControlReply } from '../../../src/control/client';
import type { DaemonStats } from '../../../src/control/daemon-api';
import { VhostError } from '../../../src/native/errors';
import { BackendProcess, type ExitStatus } from './child';
import { repoRoot } from './guest';

/** One pino log line: level (number), time, msg and the line's own fields. */
export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export interface DaemonOptions {
  /** Arguments after `serve`, e.g. ['--socket-path', S, '--backing', F] or ['--config', FILE]. */
  args: string[];
  /** Control socket given in `args` (or the config file), for stats()/request(). */
  control?: string;
  /** Time to wait for 'ready to accept connections'. Default 30 s. */
  readyTimeoutMs?: number;
}

export const READY_MSG = 'ready to accept connections';

export class VbcDaemon {
  private child: BackendProcess | undefined;
  /** Log lines of every run, one array per start (runs[runs.length - 1] is the current one). */
  readonly runs: LogLine[][] = [];
  /** stderr lines that are not JSON (e.g. the CLI's fatal error message). */
  readonly otherStderr: string[] = [];

  private constructor(private readonly opts: DaemonOptions) {}

  /** Starts the daemon and resolves once it logged that it accepts connections. */
  static async start(opts: DaemonOptions): Promise<VbcDaemon> {
    const d = new VbcDaemon(opts);
    await d.launch();
    return d;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitStatus === undefined;
  }

  /** Log lines of the current (or last) run. */
  get logs(): LogLine[] {
    return this.runs[this.runs.length - 1] ?? [];
  }

  /** Waits until the current run logged a line with this message; returns the first. */
  async waitForLog(msg: string, timeoutMs: number): Promise<LogLine> {
    const child = this.child;
    if (child === undefined) throw new VhostError('vhost-blk-cache was not started', 'ESRCH');
    await child.waitUntil(() => this.logsWith(msg).length > 0, timeoutMs, `log '${msg}'`);
    return this.logsWith(msg)[0] as LogLine;
  }

  /** Log lines of the current run with this message. */
  logsWith(msg: string): LogLine[] {
    return this.logs.filter((l) => l.msg === msg);
  }

  private async launch(): Promise<void> {
    if (this.running) throw new VhostError('vhost-blk-cache already running', 'EBUSY');
    const lines: LogLine[] = [];
    this.runs.push(lines);
    let partial = '';
    this.child = new BackendProcess({
      name: 'vhost-blk-cache',
      command: process.execPath,
      // A test run killed abruptly (mocha --exit, a timeout) leaves no daemon behind.
      args: [path.join(repoRoot(), 'bin', 'vhost-blk-cache'), 'serve', '--exit-with-parent', ...this.opts.args],
      onStderr: (chunk) => {
        const parts = (partial + chunk).split('\n');
        partial = parts.pop() ?? '';
        for (const text of parts) {
          if (text.length === 0) continue;
          try {
            lines.push(JSON.parse(text) as LogLine);
          } catch {
            this.otherStderr.push(text);
          }
        }
      },
    });
    await this.child.waitUntil(
      () => lines.some((l) => l.msg === READY_MSG),
      this.opts.readyTimeoutMs ?? 30_000,
      `'${READY_MSG}'`,
    );
  }

  /**
   * Sends `signal` and waits for the exit; returns the exit code (null when the signal killed
   * it). SIGTERM and SIGINT shut down cleanly, SIGKILL simulates a crash.
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const child = this.child;
    if (child === undefined) throw new VhostError('vhost-blk-cache was not started', 'ESRCH');
    const status: ExitStatus = await child.stop(signal);
    return status.code;
  }

  /** Starts the daemon again with the same arguments (after stop()). */
  async restart(): Promise<void> {
    await this.launch();
  }

  /** One HTTP request to the control socket. */
  request(method: string, urlPath: string, body?: unknown): Promise<ControlReply> {
    const socketPath = this.opts.control;
    if (socketPath === undefined) return Promise.reject(new VhostError('daemon started without a control socket', 'EINVAL'));
    return controlRequest(socketPath, method, urlPath, body);
  }

  /** GET /stats, parsed; fails unless the answer is 200. */
  async stats(): Promise<DaemonStats> {
    const res = await this.request('GET', '/stats');
    if (res.status !== 200) throw new VhostError(`GET /stats answered ${res.status}: ${res.body}`, 'EIO');
    return JSON.parse(res.body) as DaemonStats;
  }

  /** GET /metrics (Prometheus text); fails unless the answer is 200. */
  async metrics(): Promise<string> {
    const res = await this.request('GET', '/metrics');
    if (res.status !== 200) throw new VhostError(`GET /metrics answered ${res.status}: ${res.body}`, 'EIO');
    return res.body;
  }
}
