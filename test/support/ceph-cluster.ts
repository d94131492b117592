/**
 * A single-node Ceph cluster for tests, started from nothing in a temporary folder: one monitor
 * and one OSD on the memstore, no mgr, auth none, pools of size 1. Each cluster has its own
 * fsid, monitor port and folder, so suites can run side by side; stop() kills both daemons and
 * removes the folder (an exit hook kills them too if a test run dies first).
 *
 * Settings that make it fast and small on a loaded 2-core machine: paxos_propose_interval 0.05
 * (the 1 s default makes bring-up several seconds), memstore with 4 KiB pages and short PG logs
 * (its defaults eat GiBs of RAM), osd_fast_shutdown false. Without a mgr, status commands that
 * need one hang: start() returns once the OSD's log says it is up and active in the map.
 * A memstore OSD loses its data when killed: outages are simulated with stopOsd()/resumeOsd()
 * (SIGSTOP/SIGCONT).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './net';
import { tmpDir } from './tmp';

const run = promisify(execFile);

const live = new Set<CephCluster>();
process.on('exit', () => {
  for (const c of live) c.killNow();
});

export class CephCluster {
  readonly pool = 'rbd';
  private mon: ChildProcess | null = null;
  private osd: ChildProcess | null = null;

  private constructor(
    readonly dir: string,
    readonly fsid: string,
    readonly monPort: number,
  ) {}

  /** ceph.conf of this cluster (for :conf=PATH and the CLI tools). */
  get conf(): string {
    return path.join(this.dir, 'ceph.conf');
  }

  /** The process id of the OSD (for tests that stop it). */
  get osdPid(): number {
    if (!this.osd?.pid) throw new Error('OSD not running');
    return this.osd.pid;
  }

  static async start(): Promise<CephCluster> {
    const dir = tmpDir('ceph');
    const c = new CephCluster(dir, randomUUID(), await freePort());
    live.add(c);
    try {
      await c.bringUp();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  private async bringUp(): Promise<void> {
    const d = this.dir;
    for (const sub of ['mon', 'osd', 'run', 'log']) fs.mkdirSync(path.join(d, sub));
    const mon = `v2:127.0.0.1:${this.monPort}`;
    fs.writeFileSync(
      this.conf,
      [
        '[global]',
        `fsid = ${this.fsid}`,
        `mon_host = ${mon}`,
        'public_addr = 127.0.0.1',
        'ms_bind_msgr1 = false',
        'auth_cluster_required = none',
        'auth_service_required = none',
        'auth_client_required = none',
        `run_dir = ${d}/run`,
        `admin_socket = ${d}/run/$name.asok`,
        `log_file = ${d}/log/$name.log`,
        `mon_data = ${d}/mon`,
        `osd_data = ${d}/osd`,
        'osd_objectstore = memstore',
        'memstore_device_bytes = 2147483648',
        'memstore_page_size = 4096',
        'osd_min_pg_log_entries = 10',
        'osd_max_pg_log_entries = 10',
        'osd_pg_log_dups_tracked = 10',
        'osd_pg_log_trim_min = 10',
        'osd_fast_shutdown = false',
        'osd_pool_default_size = 1',
        'osd_pool_default_min_size = 1',
        'osd_pool_default_pg_num = 8',
        'osd_pool_default_pgp_num = 8',
        'osd_crush_chooseleaf_type = 0',
        'mon_allow_pool_size_one = true',
        'mon_warn_on_pool_no_redundancy = false',
        'mon_allow_pool_delete = true',
        'paxos_propose_interval = 0.05',
        '',
      ].join('\n'),
    );
    const monmap = path.join(d, 'monmap');
    await run('monmaptool', ['--create', '--add', 'a', mon, '--fsid', this.fsid, monmap]);
    await run('ceph-mon', ['-c', this.conf, '-i', 'a', '--mkfs', '--monmap', monmap]);
    this.mon = this.daemon('ceph-mon', ['-c', this.conf, '-i', 'a', '-f']);
    const osdUuid = randomUUID();
    // The OSD's id, its store and the pool are independent once the monitor answers.
    await Promise.all([
      this.ceph('osd', 'new', osdUuid, '0'),
      this.ceph('osd', 'pool', 'create', this.pool, '8'),
      run('ceph-osd', ['-c', this.conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]),
    ]);
    this.osd = this.daemon('ceph-osd', ['-c', this.conf, '-i', '0', '-f']);
    // A client that connects before the monitors marked the OSD up waits for its next objecter
    // tick (5 s) to learn that it is: return once the OSD saw itself up in the map.
    await this.waitForLog(path.join(d, 'log', 'osd.0.log'), 'state: booting -> active', this.osd);
  }

  private async waitForLog(file: string, needle: string, proc: ChildProcess, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes(needle)) return;
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${file}: the daemon exited before '${needle}'`);
      if (Date.now() > end) throw new Error(`${file}: no '${needle}' within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private daemon(cmd: string, args: string[]): ChildProcess {
    const out = fs.openSync(path.join(this.dir, 'log', `${cmd}.out`), 'a');
    const p = spawn(cmd, args, { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    p.on('error', () => undefined);
    return p;
  }

  /** Runs the ceph CLI against this cluster; resolves with its stdout. */
  async ceph(...args: string[]): Promise<string> {
    return (await run('ceph', ['-c', this.conf, ...args], { timeout: 60_000 })).stdout;
  }

  /** Runs the rbd CLI against this cluster; resolves with its stdout. */
  async rbd(...args: string[]): Promise<string> {
    return (await run('rbd', ['-c', this.conf, ...args], { timeout: 60_000, maxBuffer: 64 << 20 })).stdout;
  }

  /** Creates pool/name with `bytes` (waits for the pool's PGs the first time). */
  async createImage(name: string, bytes: number, pool = this.pool): Promise<void> {
    await this.rbd('create', '--size', `${Math.ceil(bytes / 1024)}K`, `${pool}/${name}`);
  }

  /** Simulated outage: the OSD stops answering (SIGSTOP) but keeps its memstore data. */
  stopOsd(): void {
    process.kill(this.osdPid, 'SIGSTOP');
  }

  resumeOsd(): void {
    process.kill(this.osdPid, 'SIGCONT');
  }

  /** Kills both daemons (SIGKILL: the data is thrown away) and removes the folder. */
  async stop(): Promise<void> {
    const procs = [this.osd, this.mon].filter((p): p is ChildProcess => p !== null);
    this.killNow();
    await Promise.all(
      procs.map((p) => (p.exitCode !== null || p.signalCode !== null ? undefined : new Promise((r) => p.once('exit', r)))),
    );
    this.osd = null;
    this.mon = null;
    live.delete(this);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** SIGKILL to both daemons, synchronously (also from the exit hook). */
  killNow(): void {
    for (const p of [this.osd, this.mon]) {
      if (p?.pid !== undefined && p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }
}
