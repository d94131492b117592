/**
 * One NBD connection: socket, fixed newstyle handshake (NBD_OPT_GO with NBD_INFO_BLOCK_SIZE,
 * optional NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXPORT_NAME fallback), then the transmission
 * phase with any number of requests in flight (handle -> pending table).
 *
 * Receive path: the socket reads through `onread` into buffers we choose. Headers and small
 * payloads go through a 256 KiB scratch buffer, so one read() usually brings several replies,
 * all parsed in that callback (headers in place when whole, no per-reply allocation); once a
 * READ payload of at least DIRECT_MIN bytes is due, the socket reads straight into the
 * caller's buffer (no copy).
 *
 * Send path: every command sent in one JS turn goes out in one socket write, flushed from a
 * nextTick. Request headers are encoded back to back into a header arena (a Buffer carved
 * sequentially, never rewritten, so a write still queued in libuv keeps its bytes); a turn of
 * READs is one contiguous slice, written with one write(). WRITE payloads (the caller's views,
 * not copied) sit between header slices, and the turn's list goes out between
 * cork()/uncork(), which Node turns into one writev.
 *
 * Failure model: anything the server sends that breaks the protocol (wrong magic, unknown
 * handle, impossible lengths, chunks outside the request) destroys the socket; the owner learns
 * about it through ConnectionHandler.closed() together with every command that got no final
 * reply, and decides whether to resend them. No exception leaves a socket callback. An
 * ESHUTDOWN error reply makes the connection soft-disconnect (NBD_CMD_DISC) and hands that
 * command back as unfinished instead of failing it.
 */
import * as net from 'node:net';
import { VhostError } from '../../native/errors';
import type { Logger } from '../../util/logger';
import { zeroIov } from '../../util/iov';
import * as P from './protocol';
import { describeNbdAddress, type NbdAddress } from './uri';

/** What the handshake learnt about the export. */
export interface ExportInfo {
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** Block size constraints; maxPayload is the largest READ/WRITE we send (<= 32 MiB). */
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
  /** Whether structured replies were negotiated. */
  structured: boolean;
}

/** One request as sent on the wire. */
export interface NbdCommand {
  readonly type: number;
  readonly flags: number;
  readonly offset: number;
  readonly length: number;
  /** READ: where the data lands; WRITE: the payload (total = length); otherwise empty. */
  readonly bufs: readonly Uint8Array[];
}

export interface ConnectionHandler {
  /** The final reply of `cmd` arrived: err is null on success, else the NBD error. */
  complete(cmd: NbdCommand, err: VhostError | null): void;
  /** The connection is gone (called once); `unfinished` got no final reply. */
  closed(conn: NbdConnection, reason: VhostError, unfinished: NbdCommand[]): void;
}

export interface ConnectOptions {
  address: NbdAddress;
  structuredReplies: boolean;
  /** Bound on TCP/Unix connect plus handshake. */
  connectTimeoutMs: number;
  logger: Logger;
}

interface Pending {
  cmd: NbdCommand;
  handle: number;
  /** Structured replies: content bytes covered so far, first error chunk. */
  received: number;
  error: VhostError | null;
}

const SCRATCH_SIZE = 256 * 1024;
/** Header arena size: room for 585 request headers before a new arena is allocated. */
const ARENA_SIZE = 16 * 1024;
/** READ payload runs at least this large are read straight into the caller's buffer. */
const DIRECT_MIN = 16 * 1024;
/** Largest option reply or error chunk we accept (protocol strings are <= 4096 bytes). */
const MAX_OPTION_REPLY = 64 * 1024;
const MAX_ERROR_CHUNK = 6 + 4096 + 8;

function protocolError(what: string): VhostError {
  return new VhostError(`NBD protocol error: ${what}`, 'EPROTO');
}

type Phase = 'handshake' | 'transmission' | 'closed';

/**
 * Receive states. HEADER: a reply header (4 bytes of magic, then 16 or 20 bytes in all); EXTRA:
 * the fixed part of a structured chunk's payload (OFFSET_DATA's offset, OFFSET_HOLE's offset +
 * size, an error chunk); DATA: READ payload bytes for the current command's buffers.
 */
const S_HEADER = 0;
const S_EXTRA = 1;
const S_DATA = 2;

export class NbdConnection {
  private readonly socket: net.Socket;
  private readonly log: Logger;
  private phase: Phase = 'handshake';
  private handler: ConnectionHandler | null = null;
  private closeReason: VhostError | null = null;
  private draining = false;
  private infoValue: ExportInfo | null = null;

  // Handshake reader: bytes received so far and the one waiter.
  private hsChunks: Buffer[] = [];
  private hsHave = 0;
  private hsWaiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null =
    null;

  // Transmission.
  private nextHandle = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly handedBack: NbdCommand[] = [];
  /** Header arena: [0, arenaMark) is handed to the socket, [arenaMark, arenaUsed) is queued. */
  private arena: Buffer = Buffer.allocUnsafe(ARENA_SIZE);
  private arenaUsed = 0;
  private arenaMark = 0;
  /** Segments of this turn before the queued headers (only when WRITE payloads are queued). */
  private readonly outbox: Uint8Array[] = [];
  private flushScheduled = false;
  private readonly flushBound = (): void => this.flushOutbox();

  // Receive state machine.
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_SIZE);
  private nextReadBuf: Uint8Array = this.scratch;
  private state = S_HEADER;
  /** Partial header or chunk-fixed-part bytes when a read ends inside one. */
  private readonly part = Buffer.allocUnsafe(MAX_ERROR_CHUNK);
  private partHave = 0;
  private hdrNeed = 4;
  private extraNeed = 0;
  /** The command the current chunk or simple reply is for. */
  private cur: Pending | null = null;
  /** Current structured chunk (cur is its command); simple replies set chunkStructured false. */
  private chunkStructured = false;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLen = 0;
  private dataLeft = 0;
  private iovIdx = 0;
  private iovOff = 0;

  private constructor(private readonly opts: ConnectOptions) {
    this.log = opts.logger;
    const a = opts.address;
    const onread: net.OnReadOpts = {
      buffer: (): Uint8Array => this.nextReadBuf,
      callback: (n: number, buf: Uint8Array): boolean => {
        this.onRead(n, buf);
        return true;
      },
    };
    this.socket =
      a.transport === 'tcp'
        ? net.connect({ host: a.host, port: a.port, onread, noDelay: true, keepAlive: true })
        : net.connect({ path: a.socketPath, onread });
  }

  /** Connects and negotiates; rejects with a VhostError (socket errno code, EPROTO, ENOENT...). */
  static async connect(opts: ConnectOptions, handler: ConnectionHandler): Promise<NbdConnection> {
    const conn = new NbdConnection(opts);
    await conn.start();
    conn.handler = handler;
    return conn;
  }

  get info(): ExportInfo {
    if (!this.infoValue) throw new VhostError('NBD connection not negotiated', 'EPROTO');
    return this.infoValue;
  }

  /** Accepts new commands: negotiated, not draining, not closed. */
  get usable(): boolean {
    return this.phase === 'transmission' && !this.draining;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Commands were sent in the current JS turn and wait for this turn's write. */
  get queuedThisTurn(): boolean {
    return this.flushScheduled;
  }

  /** Queues a command; it is written with the other commands of this tick. */
  send(cmd: NbdCommand): void {
    if (!this.usable) throw new VhostError('NBD connection is not accepting commands', 'EPIPE');
    const handle = this.nextHandle++;
    this.pending.set(handle, { cmd, handle, received: 0, error: null });
    if (this.arenaUsed + P.REQUEST_SIZE > this.arena.length) {
      this.takeHeaders();
      this.arena = Buffer.allocUnsafe(ARENA_SIZE);
      this.arenaUsed = 0;
      this.arenaMark = 0;
    }
    P.encodeRequest(this.arena, this.arenaUsed, cmd.flags, cmd.type, handle, cmd.offset, cmd.length);
    this.arenaUsed += P.REQUEST_SIZE;
    if (cmd.type === P.NBD_CMD_WRITE) {
      this.takeHeaders();
      for (const b of cmd.bufs) this.outbox.push(b);
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.flushBound);
    }
  }

  /** Soft disconnect: NBD_CMD_DISC after what is queued, then wait for the close (bounded). */
  async disconnect(timeoutMs = 2000): Promise<void> {
    if (this.phase === 'closed') return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.beginDisconnect();
    const timer = setTimeout(() => this.abort(new VhostError('NBD disconnect timed out', 'ETIMEDOUT')), timeoutMs);
    await closed;
    clearTimeout(timer);
  }

  /** Hard disconnect; the handler's closed() follows asynchronously. */
  abort(reason: VhostError): void {
    if (this.phase === 'closed') return;
    this.closeReason ??= reason;
    this.socket.destroy();
  }

  // ---- connection set-up --------------------------------------------------------------

  private start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (e: VhostError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.closeReason ??= e;
        this.socket.destroy();
        reject(e);
      };
      const timer = setTimeout(
        () =>
          fail(
            new VhostError(
              `NBD connect to ${describeNbdAddress(this.opts.address)} timed out after ${this.opts.connectTimeoutMs} ms`,
              'ETIMEDOUT',
            ),
          ),
        this.opts.connectTimeoutMs,
      );
      this.socket.on('error', (err: NodeJS.ErrnoException) => {
        const e = new VhostError(
          `NBD connection to ${describeNbdAddress(this.opts.address)}: ${err.message}`,
          err.code ?? 'EIO',
        );
        this.closeReason ??= e;
        fail(e);
      });
      this.socket.on('close', () => {
        const reason =
          this.closeReason ?? new VhostError(`NBD server ${describeNbdAddress(this.opts.address)} closed the connection`, 'ECONNRESET');
        if (this.hsWaiter) {
          const w = this.hsWaiter;
          this.hsWaiter = null;
          w.reject(reason);
        }
        fail(reason);
        this.onClosed(reason);
      });
      this.handshake().then(
        () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          resolve();
        },
        (err: unknown) => fail(err instanceof VhostError ? err : protocolError(String(err))),
      );
    });
  }

  private readExact(n: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (this.phase !== 'handshake') {
        reject(this.closeReason ?? protocolError('connection closed during handshake'));
        return;
      }
      this.hsWaiter = { n, resolve, reject };
      this.tryHandshakeWaiter();
    });
  }

  private tryHandshakeWaiter(): void {
    const w = this.hsWaiter;
    if (!w || this.hsHave < w.n) return;
    const all = this.hsChunks.length === 1 ? this.hsChunks[0] : Buffer.concat(this.hsChunks);
    const out = all.subarray(0, w.n);
    const rest = all.subarray(w.n);
    this.hsChunks = rest.length > 0 ? [rest] : [];
    this.hsHave = rest.length;
    this.hsWaiter = null;
    w.resolve(out);
  }

  private async readOptionReply(option: number): Promise<{ type: number; payload: Buffer }> {
    const h = P.decodeOptionReplyHeader(await this.readExact(P.OPTION_REPLY_HEADER_SIZE));
    if (!h) throw protocolError('bad option reply magic');
    if (h.option !== option) {
      throw protocolError(`option reply for option ${h.option}, expected ${option}`);
    }
    if (h.length > MAX_OPTION_REPLY) throw protocolError(`oversized option reply (${h.length} bytes)`);
    const payload = h.length > 0 ? await this.readExact(h.length) : Buffer.alloc(0);
    return { type: h.type, payload };
  }

  private async handshake(): Promise<void> {
    const where = describeNbdAddress(this.opts.address);
    const name = this.opts.address.exportName;
    const h = await this.readExact(18);
    if (!P.matches64(h, 0, P.NBDMAGIC)) throw protocolError(`${where} is not an NBD server (bad magic)`);
    if (P.matches64(h, 8, P.CLISERV_MAGIC)) {
      throw new VhostError(`${where} speaks oldstyle NBD negotiation, which is not supported`, 'EOPNOTSUPP');
    }
    if (!P.matches64(h, 8, P.IHAVEOPT)) throw protocolError(`${where}: bad newstyle magic`);
    const hsFlags = h.readUInt16BE(16);
    const fixed = (hsFlags & P.NBD_FLAG_FIXED_NEWSTYLE) !== 0;
    const noZeroes = (hsFlags & P.NBD_FLAG_NO_ZEROES) !== 0;
    this.socket.write(
      P.encodeClientFlags((fixed ? P.NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0)),
    );

    let structured = false;
    if (fixed && this.opts.structuredReplies) {
      this.socket.write(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
      const r = await this.readOptionReply(P.NBD_OPT_STRUCTURED_REPLY);
      if (r.type === P.NBD_REP_ACK) structured = true;
      else if ((r.type & P.NBD_REP_FLAG_ERROR) === 0) {
        throw protocolError(`unexpected reply type ${r.type} to NBD_OPT_STRUCTURED_REPLY`);
      }
    }

    let size = -1;
    let flags = 0;
    let minimum = P.DEFAULT_MIN_BLOCK;
    let preferred = P.DEFAULT_PREFERRED_BLOCK;
    let maximum = P.DEFAULT_MAX_PAYLOAD;
    let useExportName = !fixed;
    if (fixed) {
      this.socket.write(P.encodeOption(P.NBD_OPT_GO, P.encodeGoData(name, [P.NBD_INFO_BLOCK_SIZE])));
      for (;;) {
        const r = await this.readOptionReply(P.NBD_OPT_GO);
        if (r.type === P.NBD_REP_ACK) break;
        if (r.type === P.NBD_REP_INFO) {
          const info = P.decodeInfo(r.payload);
          if (!info) throw protocolError(`malformed NBD_REP_INFO (${r.payload.length} bytes)`);
          if (info.info === 'export') {
            size = info.size;
            flags = info.flags;
          } else if (info.info === 'blockSize') {
            ({ minimum, preferred, maximum } = info);
          }
          continue;
        }
        if (r.type === P.NBD_REP_ERR_UNSUP) {
          useExportName = true;
          break;
        }
        if ((r.type & P.NBD_REP_FLAG_ERROR) !== 0) {
          const msg = r.payload.length > 0 ? `: ${r.payload.toString('utf8')}` : '';
          throw new VhostError(
            `NBD server ${where} refused export: ${P.optionErrorText(r.type)}${msg}`,
            P.optionErrorCode(r.type),
          );
        }
        // Other informational replies are allowed and carry nothing we need.
      }
      if (!useExportName && size < 0) throw protocolError('NBD_OPT_GO ended without NBD_INFO_EXPORT');
    }
    if (useExportName) {
      this.socket.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from(name, 'utf8')));
      const d = await this.readExact(10 + (noZeroes ? 0 : 124));
      size = P.readU64(d, 0);
      flags = d.readUInt16BE(8);
    }
    if (size < 0) throw protocolError('export size above 2^53 bytes');
    const pow2 = (v: number): boolean => v > 0 && (v & (v - 1)) === 0;
    if (!pow2(minimum) || minimum > 65536 || !pow2(preferred) || preferred < minimum || maximum < minimum) {
      throw protocolError(`invalid block sizes min ${minimum} preferred ${preferred} max ${maximum}`);
    }
    const maxPayload = Math.floor(Math.min(maximum, P.DEFAULT_MAX_PAYLOAD) / minimum) * minimum;
    this.infoValue = { size, flags, minBlock: minimum, preferredBlock: preferred, maxPayload, structured };
    this.phase = 'transmission';
    this.log.debug({ where, size, flags, minimum, preferred, maximum, structured }, 'NBD export negotiated');
    if (this.hsHave > 0) {
      const rest = Buffer.concat(this.hsChunks);
      this.hsChunks = [];
      this.hsHave = 0;
      this.feed(rest, 0, rest.length);
    }
  }

  // ---- socket callbacks ---------------------------------------------------------------

  /** onread callback: never throws; a protocol violation destroys the connection. */
  private onRead(n: number, buf: Uint8Array): void {
    try {
      if (this.phase === 'closed') return;
      if (this.phase === 'handshake') {
        this.hsChunks.push(Buffer.from(buf.subarray(0, n)));
        this.hsHave += n;
        this.tryHandshakeWaiter();
        return;
      }
      if (buf !== this.scratch && this.state === S_DATA) {
        this.dataArrived(n);
      } else {
        const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
        this.feed(b, 0, n);
      }
      this.nextReadBuf = this.chooseReadBuffer();
    } catch (err) {
      this.nextReadBuf = this.scratch;
      this.abort(err instanceof VhostError ? err : protocolError(String(err)));
    }
  }

  private onClosed(reason: VhostError): void {
    if (this.phase === 'closed') return;
    const wasReady = this.phase === 'transmission';
    this.phase = 'closed';
    this.nextReadBuf = this.scratch;
    this.outbox.length = 0;
    this.arenaMark = this.arenaUsed;
    const unfinished = [...this.handedBack, ...[...this.pending.values()].map((p) => p.cmd)];
    this.pending.clear();
    this.handedBack.length = 0;
    if (wasReady && this.handler) this.handler.closed(this, reason, unfinished);
  }

  /** Moves the queued headers of the arena to the outbox. */
  private takeHeaders(): void {
    if (this.arenaUsed === this.arenaMark) return;
    this.outbox.push(this.arena.subarray(this.arenaMark, this.arenaUsed));
    this.arenaMark = this.arenaUsed;
  }

  /** Writes everything queued in this turn: one write() or one writev. */
  private flushOutbox(): void {
    this.flushScheduled = false;
    if (this.phase !== 'transmission') return;
    this.takeHeaders();
    const out = this.outbox;
    if (out.length === 1) {
      this.socket.write(out[0]);
    } else if (out.length > 1) {
      this.socket.cork();
      for (const b of out) this.socket.write(b);
      this.socket.uncork();
    }
    out.length = 0;
  }

  private beginDisconnect(): void {
    if (this.phase !== 'transmission') {
      this.abort(new VhostError('NBD connection closed before negotiation finished', 'ECONNABORTED'));
      return;
    }
    if (this.draining) return;
    this.draining = true;
    this.flushOutbox();
    const h = Buffer.alloc(P.REQUEST_SIZE);
    P.encodeRequest(h, 0, 0, P.NBD_CMD_DISC, 0, 0, 0);
    this.socket.end(h);
  }

  // ---- reply parsing ------------------------------------------------------------------

  private chooseReadBuffer(): Uint8Array {
    if (this.state !== S_DATA || this.dataLeft < DIRECT_MIN || !this.cur) return this.scratch;
    const b = this.cur.cmd.bufs[this.iovIdx];
    const n = Math.min(b.byteLength - this.iovOff, this.dataLeft);
    return n >= DIRECT_MIN ? b.subarray(this.iovOff, this.iovOff + n) : this.scratch;
  }

  /** n bytes were read straight into the caller's buffer at the data cursor. */
  private dataArrived(n: number): void {
    this.advanceCursor(n);
    if (this.dataLeft === 0) this.dataDone();
  }

  private advanceCursor(n: number): void {
    const bufs = this.cur!.cmd.bufs;
    this.dataLeft -= n;
    this.iovOff += n;
    while (this.iovIdx < bufs.length && this.iovOff >= bufs[this.iovIdx].byteLength && this.dataLeft > 0) {
      this.iovOff -= bufs[this.iovIdx].byteLength;
      this.iovIdx++;
    }
  }

  /** Size of the reply header that starts with `magic`, or a protocol error. */
  private headerSize(magic: number): number {
    if (magic === P.SIMPLE_REPLY_MAGIC) return P.SIMPLE_REPLY_SIZE;
    if (magic === P.STRUCTURED_REPLY_MAGIC && this.info.structured) return P.STRUCTURED_REPLY_SIZE;
    throw protocolError(`bad reply magic 0x${magic.toString(16)}`);
  }

  /**
   * Parses [pos, end) of `b`: whole headers and chunk fixed parts are decoded in place, pieces
   * cut by the end of a read are gathered in `part` first.
   */
  private feed(b: Buffer, start: number, end: number): void {
    let pos = start;
    while (pos < end && this.phase === 'transmission') {
      const avail = end - pos;
      if (this.state === S_HEADER) {
        if (this.partHave === 0 && avail >= 4) {
          const need = this.headerSize(b.readUInt32BE(pos));
          if (avail >= need) {
            pos += need;
            this.onHeader(b, pos - need, need);
            continue;
          }
        }
        const take = Math.min(this.hdrNeed - this.partHave, avail);
        b.copy(this.part, this.partHave, pos, pos + take);
        this.partHave += take;
        pos += take;
        if (this.partHave === 4 && this.hdrNeed === 4) this.hdrNeed = this.headerSize(this.part.readUInt32BE(0));
        if (this.partHave === this.hdrNeed) {
          const need = this.hdrNeed;
          this.partHave = 0;
          this.hdrNeed = 4;
          this.onHeader(this.part, 0, need);
        }
      } else if (this.state === S_EXTRA) {
        if (this.partHave === 0 && avail >= this.extraNeed) {
          pos += this.extraNeed;
          this.onExtra(b, pos - this.extraNeed);
          continue;
        }
        const take = Math.min(this.extraNeed - this.partHave, avail);
        b.copy(this.part, this.partHave, pos, pos + take);
        this.partHave += take;
        pos += take;
        if (this.partHave === this.extraNeed) {
          this.partHave = 0;
          this.onExtra(this.part, 0);
        }
      } else {
        let left = Math.min(this.dataLeft, avail);
        const bufs = this.cur!.cmd.bufs;
        while (left > 0) {
          const dst = bufs[this.iovIdx];
          const n = Math.min(left, dst.byteLength - this.iovOff);
          dst.set(b.subarray(pos, pos + n), this.iovOff);
          pos += n;
          left -= n;
          this.advanceCursor(n);
        }
        if (this.dataLeft === 0) this.dataDone();
      }
    }
  }

  private lookup(handle: number): Pending {
    const p = handle < 0 ? undefined : this.pending.get(handle);
    if (!p) throw protocolError(`reply for unknown handle ${handle}`);
    return p;
  }

  /** A whole reply header of `size` bytes at b[at]. */
  private onHeader(b: Buffer, at: number, size: number): void {
    const p = this.lookup(P.readU64(b, at + 8));
    const cmd = p.cmd;
    const isRead = cmd.type === P.NBD_CMD_READ;
    this.state = S_HEADER;
    if (size === P.SIMPLE_REPLY_SIZE) {
      if (isRead && this.info.structured) {
        throw protocolError('simple reply to READ although structured replies were negotiated');
      }
      const error = b.readUInt32BE(at + 4);
      if (error !== 0) {
        this.finish(p, this.nbdError(cmd, error, ''));
      } else if (isRead && cmd.length > 0) {
        this.chunkStructured = false;
        this.startData(p, 0, cmd.length);
      } else {
        this.finish(p, null);
      }
      return;
    }
    const flags = b.readUInt16BE(at + 4);
    const type = b.readUInt16BE(at + 6);
    const length = b.readUInt32BE(at + 16);
    this.cur = p;
    this.chunkStructured = true;
    this.chunkFlags = flags;
    this.chunkType = type;
    this.chunkLen = length;
    if (type === P.NBD_REPLY_TYPE_NONE) {
      if (length !== 0 || (flags & P.NBD_REPLY_FLAG_DONE) === 0) throw protocolError('malformed NONE chunk');
      this.endChunk();
    } else if (type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
      if (!isRead || length < 9 || length - 8 > cmd.length) {
        throw protocolError(`OFFSET_DATA chunk of ${length} bytes for a ${cmd.length}-byte request`);
      }
      this.needExtra(8);
    } else if (type === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (!isRead || length !== 12) throw protocolError(`malformed OFFSET_HOLE chunk (${length} bytes)`);
      this.needExtra(12);
    } else if ((type & P.NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
      if (length < 6 || length > MAX_ERROR_CHUNK) throw protocolError(`error chunk of ${length} bytes`);
      this.needExtra(length);
    } else {
      throw protocolError(`unexpected structured reply type ${type}`);
    }
  }

  private needExtra(n: number): void {
    this.state = S_EXTRA;
    this.extraNeed = n;
    this.partHave = 0;
  }

  /** The fixed part of the current chunk (extraNeed bytes) at b[at]. */
  private onExtra(b: Buffer, at: number): void {
    const p = this.cur!;
    const length = this.chunkLen;
    this.state = S_HEADER;
    if (this.chunkType === P.NBD_REPLY_TYPE_OFFSET_DATA) {
      const rel = this.within(p.cmd, P.readU64(b, at), length - 8);
      p.received += length - 8;
      this.startData(p, rel, length - 8);
    } else if (this.chunkType === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const size = b.readUInt32BE(at + 8);
      if (size === 0) throw protocolError('empty OFFSET_HOLE chunk');
      const rel = this.within(p.cmd, P.readU64(b, at), size);
      p.received += size;
      zeroIov(p.cmd.bufs, rel, size);
      this.endChunk();
    } else {
      const error = b.readUInt32BE(at);
      const msgLen = b.readUInt16BE(at + 4);
      if (msgLen > length - 6) throw protocolError('error chunk message longer than the chunk');
      const msg = b.toString('utf8', at + 6, at + 6 + msgLen);
      p.error ??= this.nbdError(p.cmd, error === 0 ? 5 : error, msg);
      this.endChunk();
    }
  }

  /** Position of [off, off+len) inside the request, or a protocol error. */
  private within(cmd: NbdCommand, off: number, len: number): number {
    const rel = off - cmd.offset;
    if (off < 0 || rel < 0 || len > cmd.length || rel > cmd.length - len) {
      throw protocolError(`chunk [${off}, +${len}) outside request [${cmd.offset}, +${cmd.length})`);
    }
    return rel;
  }

  /** The current structured chunk is complete; the command finishes with the DONE flag. */
  private endChunk(): void {
    const p = this.cur!;
    this.state = S_HEADER;
    this.cur = null;
    if ((this.chunkFlags & P.NBD_REPLY_FLAG_DONE) === 0) return;
    if (p.error) this.finish(p, p.error);
    else if (p.cmd.type === P.NBD_CMD_READ && p.received !== p.cmd.length) {
      throw protocolError(`READ reply covered ${p.received} of ${p.cmd.length} bytes`);
    } else this.finish(p, null);
  }

  /** All payload bytes of the current simple reply or OFFSET_DATA chunk arrived. */
  private dataDone(): void {
    if (this.chunkStructured) {
      this.endChunk();
      return;
    }
    const p = this.cur!;
    this.state = S_HEADER;
    this.cur = null;
    this.finish(p, null);
  }

  private startData(p: Pending, rel: number, len: number): void {
    this.cur = p;
    this.state = S_DATA;
    this.dataLeft = len;
    const bufs = p.cmd.bufs;
    let i = 0;
    let off = rel;
    while (i < bufs.length && off >= bufs[i].byteLength) {
      off -= bufs[i].byteLength;
      i++;
    }
    this.iovIdx = i;
    this.iovOff = off;
  }

  private nbdError(cmd: NbdCommand, value: number, msg: string): VhostError {
    const code = P.nbdErrorName(value);
    const name = P.COMMAND_NAMES.get(cmd.type) ?? String(cmd.type);
    return new VhostError(
      `NBD ${name} [${cmd.offset}, +${cmd.length}) failed on the server: ${code}${msg ? ` (${msg})` : ''}`,
      code,
    );
  }

  private finish(p: Pending, err: VhostError | null): void {
    this.pending.delete(p.handle);
    if (err && err.code === 'ESHUTDOWN') {
      // The server is going away: resend elsewhere or after reconnecting; disconnect softly.
      this.handedBack.push(p.cmd);
      this.log.info('NBD server is shutting down; disconnecting');
      this.beginDisconnect();
      return;
    }
    this.handler?.complete(p.cmd, err);
  }
}

