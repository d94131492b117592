/**
 * BackingStore over an NBD export (nbd:// or nbd+unix:// URI), pure TypeScript over node:net.
 *
 * Requests: each store call becomes one operation made of NBD commands. READ/WRITE are split at
 * the server's maximum payload (NBD_INFO_BLOCK_SIZE, at most 32 MiB); offsets and lengths must
 * be multiples of the server's minimum block size (EINVAL otherwise), except discard, which is
 * shrunk to its aligned interior. Data moves between the socket and the caller's buffers
 * without copies where the socket allows it (see client.ts).
 *
 * Connections: one by default; `connections: n` opens n when the server sets
 * NBD_FLAG_CAN_MULTI_CONN. Commands go to the usable connection with the fewest in flight, except
 * that a command joins the connection already holding commands of the current JS turn while
 * that one has at most TURN_SLACK more in flight than the least busy: a turn's commands then
 * leave in one socket write, and their replies tend to come back in one read.
 *
 * Faults: a lost connection (socket error, server restart, protocol violation by the server)
 * hands its unanswered commands back to the queue and reconnects with exponential backoff
 * (reconnectMinMs .. reconnectMaxMs); queued commands are resent in submission order once a
 * connection is back. Every operation is bounded by backingTimeoutMs from its submission:
 * past it, the operation rejects with ETIMEDOUT, and a connection still holding one of its
 * commands is dropped (the server is hung, and the caller's buffers must be released). An NBD
 * error reply fails only its operation, with the NBD error's code (EIO, ENOSPC, EPERM ...).
 * If the export's size differs after a reconnect, the store is fenced: every pending and
 * future request fails with EIO.
 *
 * Durability: when the export has a write cache (NBD_FLAG_SEND_FLUSH) and a connection is lost
 * while writes that completed since the last successful flush may still sit in the server's
 * cache, the next flush logs a warning that a server crash may have lost them, and succeeds:
 * a clean server restart flushes its cache, and failing the flush would make every guest file
 * system abort its journal on any server restart (QEMU's NBD client behaves the same way).
 *
 * Watchers (a cache, see watch()) hear at once when the store is fenced and when a connection
 * is lost while such unflushed writes exist (a cache then drops what it holds of them).
 */
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostError } from '../../native/errors';
import { silentLogger, type Logger } from '../../util/logger';
import { IdleWaiters } from '../../util/idle-waiters';
import { iovLength, sliceIov } from '../../util/iov';
import { type BackingEvents, type BackingStore, makeIdentity } from '../backing-store';
import { NbdConnection, type ConnectionHandler, type ExportInfo, type NbdCommand } from './client';
import * as P from './protocol';
import { describeNbdAddress, parseNbdUri, type NbdAddress } from './uri';

export interface NbdStoreOptions {
  /** Connections to open when the server allows several (NBD_FLAG_CAN_MULTI_CONN). Default 1. */
  connections?: number;
  /** Bound on every request, including time spent waiting for a reconnect. Default 60 000. */
  backingTimeoutMs?: number;
  /** Bound on one connect + handshake attempt. Default 10 000. */
  connectTimeoutMs?: number;
  /** Reconnect backoff: first delay and cap (doubling in between). Default 50 and 2000. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Negotiate NBD_OPT_STRUCTURED_REPLY (sparse reads, per-request read errors). Default true. */
  structuredReplies?: boolean;
  logger?: Logger;
}

interface Op {
  cmds: Cmd[];
  /** Commands not finished yet. */
  left: number;
  error: VhostError | null;
  settled: boolean;
  /** performance.now() past which the operation times out. */
  deadline: number;
  /** Links in the store's list of live operations (submission order = deadline order). */
  prev: Op | null;
  next: Op | null;
  resolve: () => void;
  reject: (e: VhostError) => void;
}

interface Cmd extends NbdCommand {
  readonly op: Op;
  /** Submission order; resends keep it. */
  readonly seq: number;
  /** The connection it was sent on; null while queued. */
  conn: NbdConnection | null;
  done: boolean;
  /** FLUSH: the write clock when it was sent (it covers writes completed before). */
  flushMark: number;
}

/** One wanted connection: the live connection or the state of its reconnection. */
interface Connector {
  conn: NbdConnection | null;
  timer: NodeJS.Timeout | null;
  connecting: boolean;
  backoffMs: number;
  /** Failed attempts in the current outage (only the first is logged as a warning). */
  failures: number;
  /** Had a connection before (a new one is then a reconnect). */
  established: boolean;
}

type Part = Pick<NbdCommand, 'type' | 'flags' | 'offset' | 'length' | 'bufs'>;

const ZERO_CHUNK = 1024 * 1024;
/** See the file comment (connection choice). */
const TURN_SLACK = 4;
/** Errors of a first connect that a server starting up or overloaded gives: tried again. */
const RETRY_FIRST_CONNECT = new Set(['ECONNREFUSED', 'ECONNRESET', 'EAGAIN', 'EPIPE']);
let zeroBuffer: Uint8Array | null = null;

/** The export a URI names, whatever its spelling (socket path resolved, host in lower case). */
function nbdLocation(a: NbdAddress): string {
  const where = a.transport === 'unix' ? `unix:${path.resolve(a.socketPath)}` : `tcp:${a.host.toLowerCase()}:${a.port}`;
  return `nbd:${where}:${JSON.stringify(a.exportName)}`;
}

function isWrite(type: number): boolean {
  return type === P.NBD_CMD_WRITE || type === P.NBD_CMD_TRIM || type === P.NBD_CMD_WRITE_ZEROES;
}

export class NbdStore implements BackingStore, ConnectionHandler {
  readonly kind = 'nbd';
  /** An export's data can change behind our back: nothing in the protocol reports it. */
  readonly changesVisible = false;
  readonly uri: string;
  readonly location: string;
  readonly address: NbdAddress;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly reconnectMinMs: number;
  private readonly reconnectMaxMs: number;
  private readonly structured: boolean;
  private readonly wantConnections: number;

  private infoValue: ExportInfo | null = null;
  private minBlock = 1;
  private maxPayload = P.DEFAULT_MAX_PAYLOAD;
  /** Largest TRIM / WRITE_ZEROES length: the 32-bit length field, aligned. */
  private maxZeroLength = 0;
  private connectors: Connector[] = [];
  private waiting: Cmd[] = [];
  private seq = 0;
  private liveOps = 0;
  /**
   * Live operations, oldest first. All share timeoutMs, so the head has the earliest deadline;
   * one timer (armed while the list is not empty) fires at or after the head's deadline and
   * expires every operation past its own.
   */
  private opsHead: Op | null = null;
  private opsTail: Op | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private readonly sweepBound = (): void => this.sweep();
  private readonly idleWaiters = new IdleWaiters();
  private closing = false;
  private shutDown = false;
  private closePromise: Promise<void> | null = null;
  private fatal: VhostError | null = null;
  private lastProblem: VhostError | null = null;
  private reconnects = 0;
  // Write clock for the durability check (see the file comment).
  private clock = 0;
  private lastWriteDone = 0;
  private flushedUpTo = 0;
  private lossPending = false;
  private events: BackingEvents | null = null;

  private constructor(uri: string, options: NbdStoreOptions) {
    this.uri = uri;
    this.address = parseNbdUri(uri);
    this.location = nbdLocation(this.address);
    this.log = (options.logger ?? silentLogger).child({ nbd: describeNbdAddress(this.address) });
    this.timeoutMs = options.backingTimeoutMs ?? 60_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.reconnectMinMs = options.reconnectMinMs ?? 50;
    this.reconnectMaxMs = options.reconnectMaxMs ?? 2000;
    this.structured = options.structuredReplies ?? true;
    this.wantConnections = Math.max(1, Math.floor(options.connections ?? 1));
  }

  /**
   * Parses the URI, connects and negotiates. Rejects (EINVAL for a bad URI, the socket's errno,
   * ENOENT for an unknown export, EPROTO ...) when the first connection cannot be made.
   */
  static async open(uri: string, options: NbdStoreOptions = {}): Promise<NbdStore> {
    const store = new NbdStore(uri, options);
    await store.connectFirst();
    return store;
  }

  // ---- BackingStore -------------------------------------------------------------------

  get size(): number {
    return this.info.size;
  }

  get readOnly(): boolean {
    return (this.info.flags & P.NBD_FLAG_READ_ONLY) !== 0;
  }

  get identity(): string {
    return makeIdentity(this.location, `size=${this.info.size}`);
  }

  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }

  watch(events: BackingEvents): void {
    this.events = events;
  }

  get features(): { flush: boolean; discard: boolean; writeZeroes: boolean } {
    const f = this.info.flags;
    return {
      flush: (f & P.NBD_FLAG_SEND_FLUSH) !== 0,
      discard: !this.readOnly && (f & P.NBD_FLAG_SEND_TRIM) !== 0,
      writeZeroes: !this.readOnly && (f & P.NBD_FLAG_SEND_WRITE_ZEROES) !== 0,
    };
  }

  /** What the first handshake negotiated (transmission flags, block sizes, structured replies). */
  get info(): ExportInfo {
    if (!this.infoValue) throw new VhostError('NBD store not open', 'EBADF');
    return this.infoValue;
  }

  /** Requests must be aligned to this (the server's minimum block size). */
  get blockSize(): number {
    return this.minBlock;
  }

  get connectionCount(): number {
    return this.connectors.filter((s) => s.conn?.usable).length;
  }

  get reconnectCount(): number {
    return this.reconnects;
  }

  async read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    const len = iovLength(bufs);
    this.checkRange('read', offset, len, true);
    if (len === 0) return;
    if (len <= this.maxPayload) await this.submitOne(P.NBD_CMD_READ, 0, offset, len, bufs);
    else await this.submit(this.split(P.NBD_CMD_READ, 0, offset, len, bufs, this.maxPayload));
  }

  async write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    this.checkWritable('write');
    const len = iovLength(bufs);
    this.checkRange('write', offset, len, true);
    if (len === 0) return;
    if (len <= this.maxPayload) await this.submitOne(P.NBD_CMD_WRITE, 0, offset, len, bufs);
    else await this.submit(this.split(P.NBD_CMD_WRITE, 0, offset, len, bufs, this.maxPayload));
  }

  async flush(): Promise<void> {
    this.checkUsable();
    if ((this.info.flags & P.NBD_FLAG_SEND_FLUSH) === 0) return;
    await this.submitOne(P.NBD_CMD_FLUSH, 0, 0, 0, []);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('discard');
    this.checkRange('discard', offset, length, false);
    if ((this.info.flags & P.NBD_FLAG_SEND_TRIM) === 0) {
      throw new VhostError('NBD export does not support trim', 'EOPNOTSUPP');
    }
    // Trim is advisory: only its aligned interior is sent.
    const start = Math.ceil(offset / this.minBlock) * this.minBlock;
    const end = Math.floor((offset + length) / this.minBlock) * this.minBlock;
    if (end <= start) return;
    await this.submit(this.split(P.NBD_CMD_TRIM, 0, start, end - start, null, this.maxZeroLength));
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    this.checkWritable('write zeroes');
    this.checkRange('write zeroes', offset, length, true);
    if ((this.info.flags & P.NBD_FLAG_SEND_WRITE_ZEROES) !== 0) {
      const flags = unmap ? 0 : P.NBD_CMD_FLAG_NO_HOLE;
      await this.submit(this.split(P.NBD_CMD_WRITE_ZEROES, flags, offset, length, null, this.maxZeroLength));
      return;
    }
    // No NBD_CMD_WRITE_ZEROES: write from a shared, never-modified zero buffer.
    zeroBuffer ??= new Uint8Array(ZERO_CHUNK);
    const piece = Math.min(this.maxPayload, ZERO_CHUNK);
    const parts: Part[] = [];
    for (let pos = 0; pos < length; pos += piece) {
      const n = Math.min(piece, length - pos);
      parts.push({ type: P.NBD_CMD_WRITE, flags: 0, offset: offset + pos, length: n, bufs: [zeroBuffer.subarray(0, n)] });
    }
    await this.submit(parts);
  }

  /**
   * Lets pending requests finish (each bounded by backingTimeoutMs), then sends NBD_CMD_DISC on
   * every connection and closes them. New requests reject with ESHUTDOWN.
   */
  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  // ---- ConnectionHandler --------------------------------------------------------------

  complete(cmd: NbdCommand, err: VhostError | null): void {
    const c = cmd as Cmd;
    if (!err && isWrite(c.type)) this.lastWriteDone = ++this.clock;
    if (!err && c.type === P.NBD_CMD_FLUSH) {
      if (this.lossPending) {
        this.lossPending = false;
        this.log.warn(
          { server: describeNbdAddress(this.address) },
          'NBD flush after a lost connection: writes acknowledged before the loss and not flushed are durable only if the server flushed them when it stopped',
        );
      }
      this.flushedUpTo = Math.max(this.flushedUpTo, c.flushMark);
    }
    if (err) this.log.debug({ err: err.message, code: err.code }, 'NBD request failed');
    this.finishCmd(c, err);
    this.pump();
  }

  closed(conn: NbdConnection, reason: VhostError, unfinished: NbdCommand[]): void {
    const connector = this.connectors.find((s) => s.conn === conn);
    if (connector) connector.conn = null;
    if (!this.shutDown) {
      this.lastProblem = reason;
      this.log.warn({ err: reason.message, code: reason.code, inFlight: unfinished.length }, 'NBD connection lost');
      if (this.lastWriteDone > this.flushedUpTo && (this.info.flags & P.NBD_FLAG_SEND_FLUSH) !== 0) {
        this.lossPending = true;
        this.events?.writesMayBeLost();
      }
    }
    const back: Cmd[] = [];
    for (const u of unfinished) {
      const c = u as Cmd;
      if (c.done) continue;
      c.conn = null;
      if (this.fatal) this.finishCmd(c, this.fatal);
      else back.push(c);
    }
    if (back.length > 0) {
      this.waiting = back.concat(this.waiting).sort((a, b) => a.seq - b.seq);
    }
    if (connector && !this.shutDown && !this.fatal) this.scheduleReconnect(connector);
    this.pump();
  }

  // ---- internals ----------------------------------------------------------------------

  private connectOptions(): Parameters<typeof NbdConnection.connect>[0] {
    return {
      address: this.address,
      structuredReplies: this.structured,
      connectTimeoutMs: this.connectTimeoutMs,
      logger: this.log,
    };
  }

  /**
   * The first connection. A server that refuses it (not listening yet, its backlog full, reset
   * during the handshake) is tried again with the reconnect backoff until connectTimeoutMs has
   * passed since the first try; any other error (no such socket or host, no such export, a
   * protocol error) rejects at once.
   */
  private async connectFirst(): Promise<void> {
    const deadline = performance.now() + this.connectTimeoutMs;
    let backoffMs = this.reconnectMinMs;
    let first: NbdConnection;
    for (let attempt = 1; ; attempt++) {
      try {
        first = await NbdConnection.connect(this.connectOptions(), this);
        break;
      } catch (err) {
        const code = (err as VhostError).code;
        if (!RETRY_FIRST_CONNECT.has(code ?? '') || performance.now() + backoffMs >= deadline) throw err;
        if (attempt === 1) this.log.warn({ err: (err as Error).message, code }, 'NBD server refused the first connection; retrying');
      }
      await sleep(backoffMs); // reconnect backoff
      backoffMs = Math.min(backoffMs * 2, this.reconnectMaxMs);
    }
    const info = first.info;
    this.infoValue = info;
    this.minBlock = info.minBlock;
    this.maxPayload = info.maxPayload;
    this.maxZeroLength = Math.floor(0xffffffff / info.minBlock) * info.minBlock;
    this.connectors.push(this.newConnector(first));
    let n = this.wantConnections;
    if (n > 1 && (info.flags & P.NBD_FLAG_CAN_MULTI_CONN) === 0) {
      this.log.info({ wanted: n }, 'NBD server does not allow multiple connections; using one');
      n = 1;
    }
    const more: Promise<void>[] = [];
    for (let i = 1; i < n; i++) {
      const connector = this.newConnector(null);
      this.connectors.push(connector);
      more.push(this.reconnect(connector));
    }
    await Promise.all(more);
    this.log.info(
      {
        size: info.size,
        flags: info.flags,
        minBlock: info.minBlock,
        maxPayload: info.maxPayload,
        structured: info.structured,
        connections: this.connectionCount,
      },
      'NBD export opened',
    );
  }

  private newConnector(conn: NbdConnection | null): Connector {
    return { conn, timer: null, connecting: false, backoffMs: this.reconnectMinMs, failures: 0, established: conn !== null };
  }

  private scheduleReconnect(connector: Connector): void {
    if (connector.timer || connector.connecting || connector.conn) return;
    const delay = connector.backoffMs;
    connector.backoffMs = Math.min(connector.backoffMs * 2, this.reconnectMaxMs);
    connector.timer = setTimeout(() => {
      connector.timer = null;
      void this.reconnect(connector);
    }, delay);
  }

  /** One connection attempt for `connector`; never rejects. */
  private async reconnect(connector: Connector): Promise<void> {
    if (this.shutDown || this.fatal) return;
    connector.connecting = true;
    let conn: NbdConnection;
    try {
      conn = await NbdConnection.connect(this.connectOptions(), this);
    } catch (err) {
      connector.connecting = false;
      const e = err instanceof VhostError ? err : new VhostError(String(err), 'EIO');
      this.lastProblem = e;
      connector.failures++;
      const fields = { err: e.message, code: e.code, attempt: connector.failures };
      if (connector.failures === 1) this.log.warn(fields, 'NBD reconnect failed; retrying');
      else this.log.debug(fields, 'NBD reconnect failed; retrying');
      if (!this.shutDown && !this.fatal) this.scheduleReconnect(connector);
      return;
    }
    connector.connecting = false;
    if (this.shutDown || this.fatal) {
      void conn.disconnect();
      return;
    }
    const info = conn.info;
    const was = this.info;
    if (info.size !== was.size) {
      void conn.disconnect();
      this.fence(
        new VhostError(
          `NBD export ${describeNbdAddress(this.address)} changed size from ${was.size} to ${info.size} ` +
            'across a reconnect; refusing to use it (cached data would not match)',
          'EIO',
        ),
      );
      return;
    }
    if (info.flags !== was.flags) {
      this.log.warn({ was: was.flags, now: info.flags }, 'NBD export transmission flags changed across a reconnect');
    }
    if (info.minBlock > this.minBlock || info.maxPayload < this.maxPayload) {
      this.log.warn(
        { minBlock: info.minBlock, maxPayload: info.maxPayload },
        'NBD export block size limits tightened across a reconnect',
      );
      this.minBlock = Math.max(this.minBlock, info.minBlock);
      this.maxPayload = Math.min(this.maxPayload, info.maxPayload);
    }
    connector.conn = conn;
    connector.backoffMs = this.reconnectMinMs;
    if (connector.established) this.reconnects++;
    connector.established = true;
    connector.failures = 0;
    this.log.info({ queued: this.waiting.length }, 'NBD connection established');
    this.pump();
  }

  private fence(err: VhostError): void {
    this.fatal = err;
    this.log.error({ err: err.message }, 'NBD store fenced');
    this.events?.fenced();
    const queued = this.waiting;
    this.waiting = [];
    for (const c of queued) this.finishCmd(c, err);
    for (const s of this.connectors) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
      s.conn?.abort(err);
    }
  }

  private checkUsable(): void {
    if (this.fatal) throw this.fatal;
    if (this.closing) throw new VhostError('NBD store is closed', 'ESHUTDOWN');
  }

  private checkWritable(what: string): void {
    this.checkUsable();
    if (this.readOnly) throw new VhostError(`NBD ${what}: the export is read-only`, 'EROFS');
  }

  private checkRange(what: string, offset: number, len: number, aligned: boolean): void {
    this.checkUsable();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(len) || offset < 0 || len < 0) {
      throw new VhostError(`NBD ${what}: bad range [${offset}, +${len})`, 'EINVAL');
    }
    if (offset + len > this.size) {
      throw new VhostError(`NBD ${what}: [${offset}, +${len}) is beyond the export size ${this.size}`, 'EINVAL');
    }
    if (aligned && (offset % this.minBlock !== 0 || len % this.minBlock !== 0)) {
      throw new VhostError(
        `NBD ${what}: [${offset}, +${len}) is not aligned to the server's minimum block size ${this.minBlock}`,
        'EINVAL',
      );
    }
  }

  private split(
    type: number,
    flags: number,
    offset: number,
    len: number,
    bufs: readonly Uint8Array[] | null,
    max: number,
  ): Part[] {
    const parts: Part[] = [];
    for (let pos = 0; pos < len; pos += max) {
      const n = Math.min(max, len - pos);
      parts.push({ type, flags, offset: offset + pos, length: n, bufs: bufs ? sliceIov(bufs, pos, n) : [] });
    }
    return parts;
  }

  private submit(parts: Part[]): Promise<void> {
    if (parts.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const op = this.startOp(parts.length, resolve, reject);
      for (const p of parts) this.addCmd(op, p.type, p.flags, p.offset, p.length, p.bufs);
      this.pump();
    });
  }

  /** submit() of one command, without the intermediate Part. */
  private submitOne(type: number, flags: number, offset: number, length: number, bufs: readonly Uint8Array[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const op = this.startOp(1, resolve, reject);
      this.addCmd(op, type, flags, offset, length, bufs);
      this.pump();
    });
  }

  /** A live operation of n commands, linked at the tail of the deadline list. */
  private startOp(n: number, resolve: () => void, reject: (e: VhostError) => void): Op {
    const op: Op = {
      cmds: [],
      left: n,
      error: null,
      settled: false,
      deadline: performance.now() + this.timeoutMs,
      prev: this.opsTail,
      next: null,
      resolve,
      reject,
    };
    if (this.opsTail) this.opsTail.next = op;
    else this.opsHead = op;
    this.opsTail = op;
    this.liveOps++;
    if (!this.sweepTimer) this.sweepTimer = setTimeout(this.sweepBound, this.timeoutMs);
    return op;
  }

  private addCmd(op: Op, type: number, flags: number, offset: number, length: number, bufs: readonly Uint8Array[]): void {
    const c: Cmd = { type, flags, offset, length, bufs, op, seq: this.seq++, conn: null, done: false, flushMark: 0 };
    op.cmds.push(c);
    this.waiting.push(c);
  }

  /** The timer: expires the operations past their deadline, re-arms for the next one. */
  private sweep(): void {
    this.sweepTimer = null;
    const now = performance.now();
    while (this.opsHead && this.opsHead.deadline <= now) this.onTimeout(this.opsHead);
    if (this.opsHead && !this.sweepTimer) {
      this.sweepTimer = setTimeout(this.sweepBound, Math.max(1, Math.ceil(this.opsHead.deadline - now)));
    }
  }

  /** Sends queued commands on usable connections (fewest in flight first). */
  private pump(): void {
    const queued = this.waiting;
    if (queued.length === 0) return;
    let conns: NbdConnection[];
    if (this.connectors.length === 1) {
      const only = this.connectors[0].conn;
      if (!only?.usable) return;
      conns = [only];
    } else {
      conns = [];
      for (const s of this.connectors) if (s.conn?.usable) conns.push(s.conn);
      if (conns.length === 0) return;
    }
    for (let q = 0; q < queued.length; q++) {
      const c = queued[q];
      if (c.done) continue;
      let best = conns[0];
      let turn = best.queuedThisTurn ? best : null;
      for (let i = 1; i < conns.length; i++) {
        const k = conns[i];
        if (k.inFlight < best.inFlight) best = k;
        if (!turn && k.queuedThisTurn) turn = k;
      }
      if (turn && turn.inFlight - best.inFlight <= TURN_SLACK) best = turn;
      if (c.type === P.NBD_CMD_FLUSH) c.flushMark = this.clock;
      c.conn = best;
      best.send(c);
    }
    queued.length = 0;
  }

  private finishCmd(c: Cmd, err: VhostError | null): void {
    if (c.done) return;
    c.done = true;
    c.conn = null;
    const op = c.op;
    op.left--;
    if (err && !op.error) {
      op.error = err;
      // Commands of this operation still queued will not be sent.
      let cancelled = false;
      for (const o of op.cmds) {
        if (!o.done && o.conn === null) {
          o.done = true;
          op.left--;
          cancelled = true;
        }
      }
      if (cancelled) this.waiting = this.waiting.filter((w) => !w.done);
    }
    if (op.left === 0) this.settle(op);
  }

  private onTimeout(op: Op): void {
    if (op.settled) return;
    const why = this.lastProblem ? ` (last problem: ${this.lastProblem.message})` : '';
    const err = new VhostError(`NBD request timed out after ${this.timeoutMs} ms${why}`, 'ETIMEDOUT');
    let queued = false;
    for (const c of op.cmds) {
      if (c.done) continue;
      c.done = true;
      if (c.conn) {
        // The server holds the caller's buffers through this command: drop the connection.
        c.conn.abort(new VhostError('NBD request timed out; dropping the connection', 'ETIMEDOUT'));
      } else {
        queued = true;
      }
      c.conn = null;
    }
    if (queued) this.waiting = this.waiting.filter((w) => !w.done);
    op.left = 0;
    op.error ??= err;
    this.log.warn({ err: op.error.message }, 'NBD request timed out');
    this.settle(op);
  }

  private settle(op: Op): void {
    if (op.settled) return;
    op.settled = true;
    // Unlink from the deadline list; the timer stops with the last live operation.
    if (op.prev) op.prev.next = op.next;
    else this.opsHead = op.next;
    if (op.next) op.next.prev = op.prev;
    else this.opsTail = op.prev;
    op.prev = null;
    op.next = null;
    this.liveOps--;
    if (!this.opsHead && this.sweepTimer) {
      clearTimeout(this.sweepTimer);
      this.sweepTimer = null;
    }
    if (op.error) op.reject(op.error);
    else op.resolve();
    if (this.liveOps === 0) this.idleWaiters.wake();
  }

  private async doClose(): Promise<void> {
    this.closing = true;
    if (this.liveOps > 0) await this.idleWaiters.wait();
    this.shutDown = true;
    const closing: Promise<void>[] = [];
    for (const s of this.connectors) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
      if (s.conn) closing.push(s.conn.disconnect());
    }
    await Promise.all(closing);
    this.log.info('NBD store closed');
  }
}
