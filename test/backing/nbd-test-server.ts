/**
 * What the in-process NBD servers of the tests share (nbd-mem-server.ts, nbd-fake-server.ts): a
 * unix socket server that counts and tracks its connections, and one session per connection
 * that negotiates fixed newstyle (NBD_OPT_GO; NBD_OPT_STRUCTURED_REPLY only where the server
 * says so) and hands every transmission command to the server. How commands are answered is
 * each server's own business.
 */
import * as net from 'node:net';
import * as P from '../../src/backing/nbd/protocol';

/** One transmission-phase request. */
export interface NbdTestCommand {
  type: number;
  /** The 8-byte cookie to echo in the reply. */
  handle: Buffer;
  offset: number;
  length: number;
  /** WRITE data (a copy); empty for the other commands. */
  payload: Buffer;
}

/** How a server runs one connection. */
export interface NbdTestSession {
  /** Transmission flags announced with NBD_INFO_EXPORT (NBD_FLAG_HAS_FLAGS is added). */
  flags: number;
  /** Accept NBD_OPT_STRUCTURED_REPLY (otherwise it is answered ERR_UNSUP). */
  structured: boolean;
  /** Every command but DISC (which ends the connection); `structured` once negotiated. */
  command(c: NbdTestCommand, structured: boolean): void;
}

/** A simple reply to `handle`: magic, error, cookie, then `data`. */
export function simpleReply(handle: Buffer, error: number, data: Buffer = Buffer.alloc(0), magic: number = P.SIMPLE_REPLY_MAGIC): Buffer {
  const r = Buffer.alloc(16);
  r.writeUInt32BE(magic, 0);
  r.writeUInt32BE(error, 4);
  handle.copy(r, 8);
  return Buffer.concat([r, data]);
}

export abstract class NbdTestServer {
  private readonly server: net.Server;
  protected readonly sockets = new Set<net.Socket>();
  /** Connections accepted so far. */
  connections = 0;

  constructor(readonly path: string) {
    this.server = net.createServer((s) => this.serve(s));
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, () => resolve()));
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** The export size announced to a connection (read when it sends NBD_OPT_GO). */
  protected abstract exportSize(): number;

  /** The session of connection number `n` (0-based). */
  protected abstract session(sock: net.Socket, n: number): NbdTestSession;

  private serve(sock: net.Socket): void {
    const session = this.session(sock, this.connections++);
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    let structured = false;
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
          if (option === P.NBD_OPT_STRUCTURED_REPLY) {
            structured = session.structured;
            optReply(option, structured ? P.NBD_REP_ACK : P.NBD_REP_ERR_UNSUP);
          } else if (option === P.NBD_OPT_GO) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
            P.writeU64(info, this.exportSize(), 2);
            info.writeUInt16BE(P.NBD_FLAG_HAS_FLAGS | session.flags, 10);
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
          if (type === P.NBD_CMD_DISC) {
            sock.end();
            return;
          }
          session.command({ type, handle, offset, length, payload }, structured);
        }
      }
    });
  }
}
