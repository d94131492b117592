/**
 * A deliberately misbehaving NBD server for the client's fault tests. It negotiates fixed
 * newstyle (NBD_OPT_GO, optionally structured replies) for an export of `size` bytes whose
 * content is the stamp of generation `gen`, then answers READ/FLUSH according to the behaviour
 * chosen for the connection (by connection number; the last one repeats). Structured replies are
 * negotiated for the behaviours that need them ('oversized-chunk', 'trickle-structured').
 */
import * as net from 'node:net';
import * as P from '../../src/backing/nbd/protocol';
import { stamped } from './nbd-servers';

export type Behaviour =
  | 'good'
  | 'unknown-handle' // replies with a handle never sent
  | 'bad-magic' // replies with a wrong magic
  | 'short-data' // sends the reply header and half of the data, then closes
  | 'oversized-chunk' // structured: an OFFSET_DATA chunk longer than the request
  // Correct replies written TRICKLE_PIECE bytes at a time (one write per event loop turn), so
  // headers, chunk offsets and payloads are cut across the client's reads:
  | 'trickle-simple' // simple replies
  | 'trickle-structured'; // structured: each READ answered by two OFFSET_DATA chunks

const TRICKLE_PIECE = 7;

export class FakeNbdServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  connections = 0;

  constructor(
    readonly path: string,
    private readonly behaviours: Behaviour[],
    private readonly size = 1024 * 1024,
    private readonly gen = 5,
  ) {
    this.server = net.createServer((s) => this.serve(s));
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, () => resolve()));
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private serve(sock: net.Socket): void {
    const behaviour = this.behaviours[Math.min(this.connections, this.behaviours.length - 1)];
    this.connections++;
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

    // Trickled output, in order across replies.
    const pieces: Buffer[] = [];
    let trickling = false;
    const step = (): void => {
      const b = pieces.shift();
      if (!b || sock.destroyed) {
        trickling = false;
        return;
      }
      sock.write(b);
      setImmediate(step);
    };
    const send = (b: Buffer): void => {
      if (behaviour !== 'trickle-simple' && behaviour !== 'trickle-structured') {
        sock.write(b);
        return;
      }
      for (let i = 0; i < b.length; i += TRICKLE_PIECE) pieces.push(b.subarray(i, i + TRICKLE_PIECE));
      if (!trickling) {
        trickling = true;
        setImmediate(step);
      }
    };

    const optReply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): void => {
      const h = Buffer.alloc(20);
      h.writeUInt32BE(P.OPTION_REPLY_MAGIC[0], 0);
      h.writeUInt32BE(P.OPTION_REPLY_MAGIC[1], 4);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(type >>> 0, 12);
      h.writeUInt32BE(data.length, 16);
      sock.write(Buffer.concat([h, data]));
    };

    const reply = (handle: Buffer, cmd: number, offset: number, length: number): void => {
      const simple = (magic: number, h: Buffer): Buffer => {
        const r = Buffer.alloc(16);
        r.writeUInt32BE(magic, 0);
        h.copy(r, 8);
        return r;
      };
      const unknown = Buffer.from([0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
      const data = cmd === P.NBD_CMD_READ ? stamped(offset, length, this.gen) : Buffer.alloc(0);
      switch (behaviour) {
        case 'unknown-handle':
          sock.write(Buffer.concat([simple(P.SIMPLE_REPLY_MAGIC, unknown), data]));
          return;
        case 'bad-magic':
          sock.write(Buffer.concat([simple(0x12345678, handle), data]));
          return;
        case 'short-data':
          sock.end(Buffer.concat([simple(P.SIMPLE_REPLY_MAGIC, handle), data.subarray(0, data.length >> 1)]));
          return;
        default:
          break;
      }
      if (!structured || cmd !== P.NBD_CMD_READ) {
        send(Buffer.concat([simple(P.SIMPLE_REPLY_MAGIC, handle), data]));
        return;
      }
      const chunk = (at: number, len: number, done: boolean, claimed = 8 + len): Buffer => {
        const h = Buffer.alloc(20 + 8);
        h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
        h.writeUInt16BE(done ? P.NBD_REPLY_FLAG_DONE : 0, 4);
        h.writeUInt16BE(P.NBD_REPLY_TYPE_OFFSET_DATA, 6);
        handle.copy(h, 8);
        h.writeUInt32BE(claimed, 16);
        P.writeU64(h, offset + at, 20);
        return Buffer.concat([h, data.subarray(at, at + len)]);
      };
      if (behaviour === 'oversized-chunk') {
        send(chunk(0, length, true, 0x7fff0000));
      } else if (behaviour === 'trickle-structured' && length >= 2) {
        // The second half first: chunks may come in any order.
        const half = length >> 1;
        send(Buffer.concat([chunk(half, length - half, false), chunk(0, half, true)]));
      } else {
        send(chunk(0, length, true));
      }
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
            structured = behaviour === 'oversized-chunk' || behaviour === 'trickle-structured';
            optReply(option, structured ? P.NBD_REP_ACK : P.NBD_REP_ERR_UNSUP);
          } else if (option === P.NBD_OPT_GO) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
            P.writeU64(info, this.size, 2);
            info.writeUInt16BE(P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH, 10);
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
          buf = buf.subarray(need);
          if (type === P.NBD_CMD_DISC) {
            sock.end();
            return;
          }
          reply(handle, type, offset, length);
        }
      }
    });
  }
}
