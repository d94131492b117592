/**
 * Real-QEMU guest harness for end-to-end tests.
 *
 * Boots the Debian kernel and initramfs built by prepare-guest.sh under QEMU (TCG) with one
 * vhost-user-blk-pci device per disk (the guest sees /dev/vda, /dev/vdb, ... in order), runs a
 * shell script in the guest and returns its output and exit status. QEMU has no serial property
 * for vhost-user-blk: the disk's serial (/sys/block/vdX/serial) is whatever the back end answers
 * to VIRTIO_BLK_T_GET_ID.
 *
 * Guest/host protocol, all on the serial console (ttyS0 <-> QEMU stdio):
 *   guest -> host  "@@VBC-BEGIN <token>@@"            /init is about to run /test.sh
 *                  "@@VBC-PAUSE <token> <name>@@"     vbc_pause <name>: the script waits
 *                  "@@VBC-END <token> rc=<n>@@"       /test.sh exited with status n
 *   host -> guest  "vbc-continue <name>\n"            releases vbc_pause <name>
 * <token> is random per boot and passed on the kernel command line (vbc.token=), so script
 * output cannot forge a marker by accident. The script is appended to the cached base
 * initramfs as a second newc cpio archive holding /test.sh.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { VhostError } from '../../../src/native/errors';
import { tmpDir } from '../../support/tmp';

export interface GuestDisk {
  /** Unix socket of the vhost-user-blk back end (QEMU connects as client). */
  socketPath: string;
  /** num-queues of the vhost-user-blk-pci device (default: what the back end offers). */
  numQueues?: number;
  /** queue-size (descriptors per virtqueue) of the device (QEMU default 128). */
  queueSize?: number;
}

export interface GuestOptions {
  disks: GuestDisk[];
  /** Body of /test.sh, run by busybox sh; may `. /lib/vbc.sh` for vbc_wait_dev / vbc_pause. */
  script: string;
  /** Guest RAM in MiB (memfd-backed, shared with the back end; sparse: costs only what the
   * guest touches). Default 512. */
  memMiB?: number;
  /** QEMU machine type (-M). Default: QEMU's default (pc). */
  machine?: 'pc' | 'q35';
  /** Kills QEMU and rejects when the guest has not powered off by then (from spawn). */
  timeoutMs: number;
  /** Guest vCPUs. Default 1. */
  cpus?: number;
  /**
   * Reconnect the vhost-user chardevs when the back end goes away: true = every second, a
   * number = every that many seconds. Default: no reconnect (QEMU fails when the back end dies).
   */
  reconnect?: boolean | number;
  /**
   * Called with every console chunk (\r removed), e.g. to stream it to a log. Default: write to
   * stderr when the environment variable VBC_GUEST_CONSOLE is set (debugging aid).
   */
  onConsole?: (text: string) => void;
}

export interface GuestResult {
  /** Exit status of /test.sh. */
  exitCode: number;
  /** What /test.sh (and concurrent kernel messages) printed between BEGIN and END. */
  output: string;
  /** The full serial console log. */
  console: string;
  /** Spawn of QEMU to the BEGIN marker (kernel boot, initramfs, module loading). */
  bootMs: number;
  /** Spawn of QEMU to QEMU exit. */
  totalMs: number;
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initramfs: string;
}

/** Repository root: the nearest ancestor of this file holding package.json. */
export function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new VhostError('package.json not found above ' + __dirname, 'ENOENT');
    dir = parent;
  }
  return dir;
}

function guestImageDir(): string {
  return process.env.VBC_VM_DIR ?? path.join(repoRoot(), '.vm');
}

let imageReady: Promise<GuestImage> | undefined;

/**
 * Runs prepare-guest.sh once per process (it is idempotent and returns at once when the image
 * is current; a first build downloads the kernel package and takes ~15 s).
 */
export function ensureGuestImage(): Promise<GuestImage> {
  imageReady ??= (async () => {
    const script = path.join(repoRoot(), 'test', 'e2e', 'vm', 'prepare-guest.sh');
    const dir = guestImageDir();
    try {
      await promisify(execFile)('bash', [script], {
        env: { ...process.env, VBC_VM_DIR: dir },
        maxBuffer: 16 << 20,
      });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new VhostError(`prepare-guest.sh failed: ${e.stderr ?? e.message}`, 'EGUESTIMAGE');
    }
    return {
      dir,
      kernel: path.join(dir, 'vmlinuz'),
      initramfs: path.join(dir, 'initramfs.cpio.gz'),
    };
  })();
  imageReady.catch(() => {
    imageReady = undefined;
  });
  return imageReady;
}

/** Mocha hook for an e2e suite: builds (or checks) the guest image before its first test. */
export function prepareGuestImageBeforeAll(): void {
  before(async function () {
    this.timeout(300_000); // first run downloads the kernel package and builds the initramfs
    await ensureGuestImage();
  });
}

/** One newc cpio entry (header fields are 8 hex digits; name and data padded to 4 bytes). */
function cpioEntry(name: string, mode: number, data: Buffer, ino: number): Buffer {
  const nameBuf = Buffer.from(name + '\0');
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  const header =
    '070701' +
    [ino, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex).join('');
  const pad = (len: number): Buffer => Buffer.alloc((4 - (len % 4)) % 4);
  const head = Buffer.concat([Buffer.from(header, 'ascii'), nameBuf]);
  return Buffer.concat([head, pad(head.length), data, pad(data.length)]);
}

/** A gzip'd newc archive holding /test.sh (mode 0755) followed by the trailer. */
function scriptArchive(script: string): Buffer {
  const body = Buffer.from(script.endsWith('\n') ? script : script + '\n');
  return gzipSync(
    Buffer.concat([
      cpioEntry('test.sh', 0o100755, body, 1),
      cpioEntry('TRAILER!!!', 0, Buffer.alloc(0), 0),
    ]),
  );
}

function qemuArgs(image: GuestImage, initrd: string, token: string, opts: GuestOptions): string[] {
  const mem = opts.memMiB ?? 512;
  const args = [
    '-accel', 'tcg',
    ...(opts.machine !== undefined ? ['-M', opts.machine] : []),
    '-m', `${mem}M`,
    '-smp', String(opts.cpus ?? 1),
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-numa', 'node,memdev=mem',
    '-kernel', image.kernel,
    '-initrd', initrd,
    // Under a loaded TCG host the kernel's IO-APIC timer check fails ("IO-APIC + timer doesn't
    // work", a panic at boot), on q35 and on the default i440FX alike: skip that check.
    '-append', `console=ttyS0 quiet panic=-1 no_timer_check vbc.token=${token}`,
    '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
  ];
  const reconnect = opts.reconnect === true ? 1 : opts.reconnect === false ? 0 : (opts.reconnect ?? 0);
  opts.disks.forEach((disk, i) => {
    let chardev = `socket,id=c${i},path=${disk.socketPath}`;
    if (reconnect > 0) chardev += `,reconnect=${reconnect}`;
    let device = `vhost-user-blk-pci,chardev=c${i},id=vblk${i}`;
    if (disk.numQueues !== undefined) device += `,num-queues=${disk.numQueues}`;
    if (disk.queueSize !== undefined) device += `,queue-size=${disk.queueSize}`;
    args.push('-chardev', chardev, '-device', device);
  });
  return args;
}

function tail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}

interface Waiter {
  pattern: RegExp;
  resolve: (m: RegExpExecArray) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** A running guest. Obtain with startGuest(); always await result() or kill(). */
export class Guest {
  private readonly proc: ChildProcess;
  private readonly startedAt = Date.now();
  private consoleText = '';
  private stderrText = '';
  private bootMs = -1;
  private exited = false;
  private waiters: Waiter[] = [];
  private readonly done: Promise<GuestResult>;

  constructor(
    private readonly token: string,
    private readonly tmpDir: string,
    args: string[],
    opts: GuestOptions,
  ) {
    const onConsole =
      opts.onConsole ?? (process.env.VBC_GUEST_CONSOLE ? (t: string) => process.stderr.write(t) : undefined);
    this.proc = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdin?.on('error', () => undefined); // EPIPE after QEMU exit: reported via 'exit'
    this.proc.stdout?.setEncoding('utf8');
    this.proc.stderr?.setEncoding('utf8');
    this.proc.stdout?.on('data', (chunk: string) => {
      const text = chunk.replace(/\r/g, '');
      this.consoleText += text;
      if (this.bootMs < 0 && this.consoleText.includes(`@@VBC-BEGIN ${token}@@`)) {
        this.bootMs = Date.now() - this.startedAt;
      }
      onConsole?.(text);
      this.checkWaiters();
    });
    this.proc.stderr?.on('data', (chunk: string) => {
      this.stderrText += chunk;
    });
    this.done = new Promise<GuestResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.proc.kill('SIGKILL');
        reject(this.failure(`guest did not finish within ${opts.timeoutMs} ms`, 'ETIMEDOUT'));
      }, opts.timeoutMs);
      this.proc.on('error', (err) => {
        clearTimeout(timer);
        fs.rmSync(this.tmpDir, { recursive: true, force: true });
        reject(new VhostError(`cannot run qemu-system-x86_64: ${err.message}`, 'EGUESTSPAWN'));
      });
      this.proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        this.exited = true;
        fs.rmSync(this.tmpDir, { recursive: true, force: true });
        for (const w of this.waiters) {
          clearTimeout(w.timer);
          w.reject(this.failure(`QEMU exited while waiting for ${w.pattern}`, 'EGUESTEXIT'));
        }
        this.waiters = [];
        const end = new RegExp(`@@VBC-END ${token} rc=(\\d+)@@`).exec(this.consoleText);
        if (!end) {
          reject(this.failure(`QEMU exited (code ${code}, signal ${signal}) without an end marker`, 'EGUESTEXIT'));
          return;
        }
        const begin = `@@VBC-BEGIN ${token}@@\n`;
        const from = this.consoleText.indexOf(begin);
        resolve({
          exitCode: Number(end[1]),
          output: this.consoleText.slice(from < 0 ? 0 : from + begin.length, end.index),
          console: this.consoleText,
          bootMs: this.bootMs,
          totalMs: Date.now() - this.startedAt,
        });
      });
    });
    // result() may be awaited late (after waitFor* calls); keep an early rejection handled.
    this.done.catch(() => undefined);
  }

  /** Console log so far. */
  get console(): string {
    return this.consoleText;
  }

  /** Milliseconds from spawn to the BEGIN marker, or -1 before it. */
  get bootTimeMs(): number {
    return this.bootMs;
  }

  private failure(message: string, code: string): VhostError {
    return new VhostError(
      `${message}\n--- QEMU stderr ---\n${tail(this.stderrText)}\n--- console (tail) ---\n${tail(this.consoleText)}`,
      code,
    );
  }

  private checkWaiters(): void {
    this.waiters = this.waiters.filter((w) => {
      w.pattern.lastIndex = 0;
      const m = w.pattern.exec(this.consoleText);
      if (!m) return true;
      clearTimeout(w.timer);
      w.resolve(m);
      return false;
    });
  }

  /** Resolves with the first match of `pattern` in the console (already printed text counts). */
  waitForConsole(pattern: RegExp | string, timeoutMs: number): Promise<RegExpExecArray> {
    const re = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
    return new Promise<RegExpExecArray>((resolve, reject) => {
      const m = re.exec(this.consoleText);
      if (m) {
        resolve(m);
        return;
      }
      if (this.exited) {
        reject(this.failure(`QEMU exited before ${re} appeared`, 'EGUESTEXIT'));
        return;
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(this.failure(`${re} did not appear within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.waiters.push({ pattern: re, resolve, reject, timer });
    });
  }

  /** Waits until the script calls `vbc_pause <name>`. */
  async waitForPause(name: string, timeoutMs: number): Promise<void> {
    await this.waitForConsole(`@@VBC-PAUSE ${this.token} ${name}@@`, timeoutMs);
  }

  /** Releases `vbc_pause <name>` in the guest. */
  resume(name: string): void {
    if (this.exited || !this.proc.stdin) throw new VhostError('guest is not running', 'EGUESTEXIT');
    this.proc.stdin.write(`vbc-continue ${name}\n`);
  }

  /** Resolves when the guest powers off after the script; rejects on timeout or a crash. */
  result(): Promise<GuestResult> {
    return this.done;
  }

  /** Kills QEMU (if still running) and waits for it to exit. */
  async kill(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.kill('SIGKILL');
    await exited;
  }
}

/** Boots a guest running `opts.script`; the caller drives it (waitForPause/resume/result). */
export async function startGuest(opts: GuestOptions): Promise<Guest> {
  if (opts.disks.length === 0) throw new VhostError('runGuest needs at least one disk', 'EINVAL');
  for (const d of opts.disks) {
    // QEMU option syntax: a comma would split the chardev option.
    if (d.socketPath.includes(',')) throw new VhostError(`socket path has a comma: ${d.socketPath}`, 'EINVAL');
  }
  const image = await ensureGuestImage();
  const dir = tmpDir('guest');
  const initrd = path.join(dir, 'initrd.cpio.gz');
  // The kernel unpacks concatenated archives in order; /test.sh comes from the second one.
  fs.copyFileSync(image.initramfs, initrd);
  fs.appendFileSync(initrd, scriptArchive(opts.script));
  const token = randomBytes(6).toString('hex');
  return new Guest(token, dir, qemuArgs(image, initrd, token, opts), opts);
}

/** Boots a guest, runs `opts.script` to completion and returns its result. */
export async function runGuest(opts: GuestOptions): Promise<GuestResult> {
  const guest = await startGuest(opts);
  return guest.result();
}
