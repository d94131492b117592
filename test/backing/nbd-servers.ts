/**
 * Real NBD servers for the NBD client tests (nbdkit, qemu-nbd) and what those tests share
 * (block size, server processes, URIs). Self-verifying data: test/support/stamps.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpDir } from '../support/tmp';

export const BLOCK = 4096;

/** Resolves after `ms` (the poll interval of waitFor below, e2e pacing). */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(what: string, ok: () => boolean, proc: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!ok()) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`${what} exited early (${proc.exitCode ?? proc.signalCode})`);
    }
    if (Date.now() > until) throw new Error(`${what} did not start`);
    await sleep(20);
  }
}

/** A running server process; stop() kills it (SIGKILL by default) and waits for the exit. */
export class ServerProcess {
  stderr = '';
  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    private readonly pidFile: string,
  ) {
    proc.once('exit', () => fs.rmSync(path.dirname(pidFile), { recursive: true, force: true }));
    proc.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
  }

  async ready(): Promise<void> {
    try {
      await waitFor(this.name, () => fs.existsSync(this.pidFile) && fs.statSync(this.pidFile).size > 0, this.proc);
    } catch (e) {
      throw new Error(`${(e as Error).message}: ${this.stderr.trim()}`);
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.kill(signal);
    await exited;
  }
}

export interface NbdkitSpec {
  /** Unix socket path, or a TCP port on 127.0.0.1. */
  socket?: string;
  port?: number;
  readOnly?: boolean;
  filters?: string[];
  plugin: string;
  args?: string[];
  exportName?: string;
}

/** Starts nbdkit in the foreground (dies with the test process) and waits until it listens. */
export async function startNbdkit(spec: NbdkitSpec): Promise<ServerProcess> {
  const dir = tmpDir('nbdkit');
  const pidFile = path.join(dir, 'pid');
  const args = ['--foreground', '--exit-with-parent', '-P', pidFile];
  if (spec.socket) {
    fs.rmSync(spec.socket, { force: true });
    args.push('-U', spec.socket);
  } else {
    args.push('-i', '127.0.0.1', '-p', String(spec.port));
  }
  if (spec.readOnly) args.push('-r');
  if (spec.exportName !== undefined) args.push('-e', spec.exportName);
  for (const f of spec.filters ?? []) args.push(`--filter=${f}`);
  args.push(spec.plugin, ...(spec.args ?? []));
  const proc = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const s = new ServerProcess('nbdkit', proc, pidFile);
  await s.ready();
  return s;
}

/**
 * nbdkit on a Unix socket, started again whenever it exits, for tests that SIGKILL its client
 * with requests in flight: nbdkit 1.32 then sometimes aborts (connections.c raw_send_socket:
 * assertion `sock >= 0`, a worker thread replying on a connection its reader thread has just
 * closed). The file plugin keeps no state of its own, so the new server serves the same data.
 * Each new server listens on a fresh path renamed over the socket once it is ready, so a client
 * connecting meanwhile finds the dead server's socket (ECONNREFUSED, which our NBD client
 * retries) and never a missing one. `exits` says how each server ended.
 */
export class RestartingNbdkit {
  readonly exits: string[] = [];
  private server: ServerProcess | undefined;
  private restarting: Promise<void> = Promise.resolve();
  private stopped = false;

  private constructor(private readonly spec: NbdkitSpec & { socket: string }) {}

  static async start(spec: NbdkitSpec & { socket: string }): Promise<RestartingNbdkit> {
    const r = new RestartingNbdkit(spec);
    await r.launch();
    return r;
  }

  /** The current server's stderr. */
  get stderr(): string {
    return this.server?.stderr ?? '';
  }

  private async launch(): Promise<void> {
    const fresh = `${this.spec.socket}.${this.exits.length}`;
    const s = await startNbdkit({ ...this.spec, socket: fresh });
    fs.renameSync(fresh, this.spec.socket);
    this.server = s;
    s.proc.once('exit', (code, signal) => {
      if (this.stopped) return;
      const last = s.stderr.trim().split('\n').pop() ?? '';
      this.exits.push(`exit ${code} signal ${signal}: ${last}`);
      this.restarting = this.launch();
    });
  }

  /** Sends `signal` to the current server (SIGSTOP/SIGCONT: an outage; SIGKILL: a restart follows). */
  signal(signal: NodeJS.Signals): void {
    this.server?.proc.kill(signal);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.server?.proc.kill('SIGCONT');
    await this.restarting;
    await this.server?.stop('SIGKILL');
  }
}

/** Starts qemu-nbd on a raw file, persistent, over a Unix socket. */
export async function startQemuNbd(file: string, socket: string, exportName: string, extra: string[] = []): Promise<ServerProcess> {
  const dir = tmpDir('qemu-nbd');
  const pidFile = path.join(dir, 'pid');
  fs.rmSync(socket, { force: true });
  const proc = spawn(
    'qemu-nbd',
    ['-f', 'raw', '--persistent', '--shared=8', `--socket=${socket}`, '-x', exportName, `--pid-file=${pidFile}`, ...extra, file],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const s = new ServerProcess('qemu-nbd', proc, pidFile);
  await s.ready();
  return s;
}

export function unixUri(socket: string, exportName = ''): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`;
}
