/**
 * A deliberately misbehaving NBD server for the client's fault tests. It negotiates fixed
 * newstyle (NBD_OPT_GO, optionally structured replies) for an export of `size` bytes whose
 * content is the stamp of generation `gen`, then answers READ/FLUSH according to the behaviour
 * chosen for the connection (by connection number; the last one repeats). Structured replies are
 * negotiated for the behaviours that need them ('oversized-chunk', 'trickle-structured').
 */
import type * as net from 'node:net';
import * as P from '../../src/backing/nbd/protocol';
import { stamped } from '../support/stamps';
import { NbdTestServer, type NbdTestSession, simpleReply } from './nbd-test-server';

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

export class FakeNbdServer extends NbdTestServer {
  constructor(
    path: string,
    private readonly behaviours: Behaviour[],
    private readonly size = 1024 * 1024,
    private readonly gen = 5,
  ) {
    super(path);
  }

  protected exportSize(): number {
    return this.size;
  }

  protected session(sock: net.Socket, n: number): NbdTestSession {
    const behaviour = this.behaviours[Math.min(n, this.behaviours.length - 1)];

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

    const reply = (handle: Buffer, cmd: number, offset: number, length: number, structured: boolean): void => {
      const unknown = Buffer.from([0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
      const data = cmd === P.NBD_CMD_READ ? stamped(offset, length, this.gen) : Buffer.alloc(0);
      switch (behaviour) {
        case 'unknown-handle':
          sock.write(simpleReply(unknown, 0, data));
          return;
        case 'bad-magic':
          sock.write(simpleReply(handle, 0, data, 0x12345678));
          return;
        case 'short-data':
          sock.end(simpleReply(handle, 0, data.subarray(0, data.length >> 1)));
          return;
        default:
          break;
      }
      if (!structured || cmd !== P.NBD_CMD_READ) {
        send(simpleReply(handle, 0, data));
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

    return {
      flags: P.NBD_FLAG_SEND_FLUSH,
      structured: behaviour === 'oversized-chunk' || behaviour === 'trickle-structured',
      command: (c, structured) => reply(c.handle, c.type, c.offset, c.length, structured),
    };
  }
}
