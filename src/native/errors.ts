/**
 * The one error class of the native layer (and of the TypeScript layers that wrap it).
 * `code` is a stable string for branching: an errno name ("EINVAL", "EIO", ...) or one of our
 * own codes (ECONFIG: a configuration field is invalid; ENACK: a vhost-user back end answered a
 * request with a non-zero ack; EGUESTIMAGE: the test guest image could not be built; EVHOST:
 * unspecified). ErrorCode lists every code the TypeScript layers throw.
 *
 * Errno names are normalized here, once, for every producer (libuv, the addon's
 * strerrorname_np, our own throws): errno 95 is EOPNOTSUPP (libuv calls it ENOTSUP) and errno
 * 11 is EAGAIN (EWOULDBLOCK is the same value).
 */
const ALIASES: Readonly<Record<string, string>> = { ENOTSUP: 'EOPNOTSUPP', EWOULDBLOCK: 'EAGAIN' };

/** Every code the TypeScript layers throw, normalized (see ALIASES): errno names, then our own. */
export type ErrorCode =
  | 'EADDRINUSE'
  | 'EAGAIN'
  | 'EBADF'
  | 'EBUSY'
  | 'ECHILD'
  | 'ECONNABORTED'
  | 'ECONNRESET'
  | 'EEXIST'
  | 'EFBIG'
  | 'EINVAL'
  | 'EIO'
  | 'EISCONN'
  | 'ENOENT'
  | 'ENOMEM'
  | 'ENOSPC'
  | 'ENOTCONN'
  | 'EOPNOTSUPP'
  | 'EPIPE'
  | 'EPROTO'
  | 'EROFS'
  | 'ESHUTDOWN'
  | 'ETIMEDOUT'
  | 'ECONFIG'
  | 'ENACK'
  | 'EGUESTIMAGE'
  | 'EVHOST';
/**
 * Any other errno name, passed through from the addon (strerrorname_np), libuv or a peer (NBD
 * error replies). Branch only on the listed ErrorCode names.
 */
export type PassedErrno = string & Record<never, never>;

export function normalizeErrorCode(code: string): string {
  return ALIASES[code] ?? code;
}

export class VhostError extends Error {
  readonly code: string;

  constructor(message: string, code: ErrorCode | PassedErrno = 'EVHOST') {
    super(message);
    this.name = 'VhostError';
    this.code = normalizeErrorCode(code);
  }
}
