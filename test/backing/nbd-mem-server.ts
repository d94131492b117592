/**
 * An in-memory NBD server with a volatile write cache, for the cache's NBD edge tests. It
 * negotiates fixed newstyle (NBD_OPT_GO, simple replies only) and serves READ, WRITE, FLUSH,
 * TRIM and WRITE_ZEROES (flags SEND_FLUSH, SEND_TRIM, SEND_WRITE_ZEROES).
 *
 * `durable` is what survives a crash; acknowledged writes go to `volatile` first (an overlay of
 * whole 512-byte sectors) and reach `durable` at a FLUSH. Test controls:
 *   holdWrites   writes are received but neither applied nor answered until releaseHeld(),
 *                which applies them (a request the client gave up on, applied late);
 *   failFlush    FLUSH answers EIO and commits nothing;
 *   crash()      drops every connection and forgets the unflushed writes;
 *   size         the size announced to new connections.
 */
import * as net from 'node:net';
import * as P from '../../src/backing/nbd/protocol';

const SECTOR = 512;
const EIO = 5;

export class MemNbdServer {
  readonly durable: Buffer;
  /** Sector number -> its unflushed content. */
  private volatile = new Map<number, Buffer>();
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private held: { offset: number; data: Buffer }[] = [];
  holdWrites = false;
  failFlush = false;
  size: number;
  connections = 0;

  constructor(
    readonly path: string,
    size: number,
  ) {
    this.size = size;
    this.durable = Buffer.alloc(size);
    this.server = net.createServer((s) => this.serve(s));
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, () => resolve()));
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** What a read returns now: the unflushed writes over the durable content. */
  content(offset: number, length: number): Buffer {
    const out = Buffer.from(this.durable.subarray(offset, offset + length));
    for (let s = Math.floor(offset / SECTOR); s * SECTOR < offset + length; s++) {
      const v = this.volatile.get(s);
      if (v) v.copy(out, s * SECTOR - offset);
    }
    return out;
  }

  /** Writes received and held (holdWrites), neither applied nor answered yet. */
  get heldWrites(): number {
    return this.held.length;
  }

  /** Applies the held writes (the server got to them after the client gave up). */
  releaseHeld(): void {
    this.holdWrites = false;
    for (const h of this.held.splice(0)) this.apply(h.offset, h.data);
  }

  crash(): void {
    this.volatile.clear();
    for (const s of this.sockets) s.destroy();
  }

  private apply(offset: number, data: Buffer): void {
    for (let at = 0; at < data.length; at += SECTOR) {
      const s = (offset + at) / SECTOR;
      this.volatile.set(s, Buffer.from(data.subarray(at, at + SECTOR)));
    }
  }

  private serve(sock: net.Socket): void {
    this.connections++;
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const hello = Buffer.alloc(18);
    hello.writeUInt32BE(P.NBDMAGIC[0], 0);
    hello.writeUInt32BE(P.NBDMAGIC[1], 4);
    hello.writeUInt32BE(P.IHAVEOPT[0], 8);
    hello.writeUInt32BE(P.IHAVEOPT[1], 12);
    hello.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
    sock.write(hello);

    const optReply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): void => {
      const h = Buffer.alloc(20);
      h.writeUInt32BE(P.OPTION_REPLY_MAGIC[0], 0);
      h.writeUInt32BE(P.OPTION_REPLY_MAGIC[1], 4);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(type >>> 0, 12);
      h.writeUInt32BE(data.length, 16);
      sock.write(Buffer.concat([h, data]));
    };
    const reply = (handle: Buffer, error: number, data: Buffer = Buffer.alloc(0)): void => {
      const r = Buffer.alloc(16);
      r.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
      r.writeUInt32BE(error, 4);
      handle.copy(r, 8);
      if (!sock.destroyed) sock.write(Buffer.concat([r, data]));
    };

    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const option = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          buf = buf.subarray(16 + len);
          if (option === P.NBD_OPT_GO) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
            P.writeU64(info, this.size, 2);
            const flags = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES;
            info.writeUInt16BE(flags, 10);
            optReply(option, P.NBD_REP_INFO, info);
            optReply(option, P.NBD_REP_ACK);
            phase = 'transmission';
          } else {
            optReply(option, P.NBD_REP_ERR_UNSUP);
          }
        } else {
          if (buf.length < 28) return;
          const type = buf.readUInt16BE(6);
          const handle = Buffer.from(buf.subarray(8, 16));
          const offset = Number(buf.readBigUInt64BE(16));
          const length = buf.readUInt32BE(24);
          const need = 28 + (type === P.NBD_CMD_WRITE ? length : 0);
          if (buf.length < need) return;
          const payload = Buffer.from(buf.subarray(28, need));
          buf = buf.subarray(need);
          switch (type) {
            case P.NBD_CMD_DISC:
              sock.end();
              return;
            case P.NBD_CMD_READ:
              reply(handle, 0, this.content(offset, length));
              break;
            case P.NBD_CMD_WRITE:
              if (this.holdWrites) {
                this.held.push({ offset, data: payload });
              } else {
                this.apply(offset, payload);
                reply(handle, 0);
              }
              break;
            case P.NBD_CMD_TRIM:
            case P.NBD_CMD_WRITE_ZEROES:
              this.apply(offset, Buffer.alloc(length));
              reply(handle, 0);
              break;
            case P.NBD_CMD_FLUSH:
              if (this.failFlush) {
                reply(handle, EIO);
                break;
              }
              for (const [s, v] of this.volatile) v.copy(this.durable, s * SECTOR);
              this.volatile.clear();
              reply(handle, 0);
              break;
            default:
              reply(handle, 22);
          }
        }
      }
    });
  }
}
