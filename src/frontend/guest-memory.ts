/**
 * The front end's guest RAM: one memfd-backed region (native GuestRam) presented to the back end
 * as a single memory region with guest physical address 0 and a fixed, fake front-end user
 * address (`userBase`, default 0x7f0000000000). Guest physical address == byte offset.
 *
 * `bytes` covers the first min(size, 2 GiB) (one ArrayBuffer cannot cover more); a first-fit
 * allocator hands out buffers (rings, indirect tables, request headers, data) from that part.
 * window() reaches any other range (e.g. data above 4 GiB of a sparse 1 TiB RAM). All numbers
 * are byte offsets < 2^53.
 */
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { NativeGuestRam } from '../native/types';

const DEFAULT_USER_ADDR_BASE = 0x7f00_0000_0000n;

/** A buffer in guest RAM: `addr` is its guest physical address, `bytes` a view of it. */
export interface GuestBuffer {
  readonly addr: number;
  readonly len: number;
  readonly bytes: Uint8Array;
}

interface Extent {
  start: number;
  end: number;
}

export class GuestMemory {
  readonly size: number;
  readonly userBase: bigint;
  /** Views over the first min(size, 2 GiB) bytes (index = byte offset >> log2(element size)). */
  readonly bytes: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly view: DataView;
  private readonly ram: NativeGuestRam;
  /** Free extents, sorted by start, never adjacent. */
  private free: Extent[];
  /** Live allocations: start -> length (including alignment padding at the end). */
  private readonly used = new Map<number, number>();

  /** `size`: a positive multiple of 4096. `populate` pre-faults the pages. */
  constructor(size: number, options: { userBase?: bigint; populate?: boolean } = {}) {
    this.ram = new native.GuestRam(size, options.populate ?? false);
    this.size = size;
    this.userBase = options.userBase ?? DEFAULT_USER_ADDR_BASE;
    const ab = this.ram.buffer;
    this.bytes = new Uint8Array(ab);
    this.u16 = new Uint16Array(ab);
    this.u32 = new Uint32Array(ab);
    this.view = new DataView(ab);
    this.free = [{ start: 0, end: ab.byteLength }];
  }

  /** The memfd to pass to the back end (-1 after close()). */
  get fd(): number {
    return this.ram.fd;
  }

  /** A view of [addr, addr + len) anywhere in the RAM (addr page aligned, len <= 2 GiB). */
  window(addr: number, len: number): Uint8Array {
    return new Uint8Array(this.ram.window(addr, len));
  }

  /** Front-end user address of a guest physical address (for SET_VRING_ADDR). */
  userAddr(addr: number): bigint {
    return this.userBase + BigInt(addr);
  }

  /** Bytes not allocated. */
  get freeBytes(): number {
    return this.free.reduce((n, e) => n + (e.end - e.start), 0);
  }

  /**
   * Allocates `len` bytes (rounded up to `align`, a power of two) aligned to `align`.
   * Throws VhostError ENOMEM when no free extent fits.
   */
  alloc(len: number, align = 64): GuestBuffer {
    if (!(len > 0) || !Number.isInteger(len) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new VhostError(`bad guest allocation: ${len} bytes, alignment ${align}`, 'EINVAL');
    }
    const need = (len + align - 1) & ~(align - 1);
    for (let i = 0; i < this.free.length; i++) {
      const e = this.free[i];
      const start = (e.start + align - 1) & ~(align - 1);
      if (start + need > e.end) continue;
      const pieces: Extent[] = [];
      if (start > e.start) pieces.push({ start: e.start, end: start });
      if (start + need < e.end) pieces.push({ start: start + need, end: e.end });
      this.free.splice(i, 1, ...pieces);
      this.used.set(start, need);
      return { addr: start, len, bytes: this.bytes.subarray(start, start + len) };
    }
    throw new VhostError(`guest RAM exhausted (${len} bytes wanted, ${this.freeBytes} free)`, 'ENOMEM');
  }

  /** Returns a buffer from alloc() (once). */
  release(buf: GuestBuffer): void {
    const need = this.used.get(buf.addr);
    if (need === undefined) throw new VhostError(`guest buffer at ${buf.addr} is not allocated`, 'EINVAL');
    this.used.delete(buf.addr);
    const ext: Extent = { start: buf.addr, end: buf.addr + need };
    let i = 0;
    while (i < this.free.length && this.free[i].start < ext.start) i++;
    const prev = i > 0 ? this.free[i - 1] : undefined;
    const next = i < this.free.length ? this.free[i] : undefined;
    if (prev !== undefined && prev.end === ext.start) {
      prev.end = ext.end;
      if (next !== undefined && next.start === prev.end) {
        prev.end = next.end;
        this.free.splice(i, 1);
      }
    } else if (next !== undefined && next.start === ext.end) {
      next.start = ext.start;
    } else {
      this.free.splice(i, 0, ext);
    }
  }

  /** Closes the memfd; the mapping (and every view) stays valid while referenced. */
  close(): void {
    this.ram.close();
  }
}
