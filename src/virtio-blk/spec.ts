/**
 * virtio-blk spec numbers (virtio 1.2, 5.2), defined once for the device side (dispatch, config
 * space), the driver side (src/frontend) and the tests and benches. Only numbers fixed by the
 * spec live here; the limits we choose to announce are in ./config. The native addon keeps its
 * own copy of the few it needs in native/blk/blk_request.h.
 */

/** Request header types (5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status byte values (5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Device feature bits (5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;
export const VIRTIO_BLK_F_LIFETIME = 15;
export const VIRTIO_BLK_F_SECURE_ERASE = 16;
/** Every device feature bit above (a test front end offers them all). */
export const VIRTIO_BLK_F_ALL: readonly number[] = [
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_F_LIFETIME,
  VIRTIO_BLK_F_SECURE_ERASE,
];

/** The unit of `sector` in request headers and of `capacity` in the config space. */
export const SECTOR_SIZE = 512;
/** Request header {type u32, reserved u32, sector u64}. */
export const BLK_HEADER_SIZE = 16;
/** GET_ID answer: a NUL-padded string of this many bytes. */
export const BLK_ID_BYTES = 20;
/** One DISCARD / WRITE_ZEROES segment {sector u64, num_sectors u32, flags u32}. */
export const BLK_RANGE_SIZE = 16;
/** WRITE_ZEROES segment flag: the device may unmap. */
export const BLK_RANGE_F_UNMAP = 0x1;

/** struct virtio_blk_config up to write_zeroes_may_unmap + padding (what we serve). */
export const BLK_CONFIG_SIZE = 60;
/** struct virtio_blk_config with the secure-erase fields. */
export const BLK_CONFIG_SIZE_FULL = 72;
/** Offset of the `writeback` byte in the config space (CONFIG_WCE). */
export const BLK_CONFIG_OFFSET_WRITEBACK = 32;
