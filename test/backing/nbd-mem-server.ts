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
import type * as net from 'node:net';
import * as P from '../../src/backing/nbd/protocol';
import { NbdTestServer, type NbdTestCommand, type NbdTestSession, simpleReply } from './nbd-test-server';

const SECTOR = 512;
const EIO = 5;
const EINVAL = 22;

export class MemNbdServer extends NbdTestServer {
  readonly durable: Buffer;
  /** Sector number -> its unflushed content. */
  private volatile = new Map<number, Buffer>();
  private held: { offset: number; data: Buffer }[] = [];
  holdWrites = false;
  failFlush = false;
  size: number;

  constructor(path: string, size: number) {
    super(path);
    this.size = size;
    this.durable = Buffer.alloc(size);
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

  protected exportSize(): number {
    return this.size;
  }

  protected session(sock: net.Socket): NbdTestSession {
    const reply = (handle: Buffer, error: number, data?: Buffer): void => {
      if (!sock.destroyed) sock.write(simpleReply(handle, error, data));
    };
    return {
      flags: P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES,
      structured: false,
      command: ({ type, handle, offset, length, payload }: NbdTestCommand) => {
        switch (type) {
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
            reply(handle, EINVAL);
        }
      },
    };
  }
}
