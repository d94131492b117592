/**
 * Self-verifying test data shared by the suites that drive a daemon or a device through a front
 * end: a block stamped with its volume, address and generation, so a read that returns another
 * block, another volume's block or an older write is told apart from the expected one.
 * (test/cache and test/backing keep their own binary stamps for now.)
 */

/** Bytes of one stamped block. */
export const STAMP_BLOCK = 4096;

/** A block filled with the text `${vol}:${block}:${gen}:` repeated (latin1). */
export function stamp(vol: string, block: number, gen: number): Buffer {
  const b = Buffer.alloc(STAMP_BLOCK);
  const tag = `${vol}:${block}:${gen}:`;
  for (let off = 0; off < STAMP_BLOCK; off += tag.length) b.write(tag, off, 'latin1');
  return b;
}

/** `blocks` consecutive stamped blocks from block `first`. */
export function stamps(vol: string, first: number, blocks: number, gen: number): Buffer {
  return Buffer.concat(Array.from({ length: blocks }, (_x, i) => stamp(vol, first + i, gen)));
}
