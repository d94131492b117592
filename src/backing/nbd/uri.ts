/**
 * NBD URIs in the libnbd form:
 *   nbd://HOST[:PORT][/EXPORT]            TCP; PORT defaults to 10809, EXPORT to '' (default export)
 *   nbd+unix:///[EXPORT]?socket=PATH      Unix domain socket
 * HOST may be a name, an IPv4 address or a bracketed IPv6 address ([::1]). The export name is
 * the path without its first '/', percent-decoded. TLS (nbds, nbds+unix) and vsock are not
 * supported by this client. Malformed URIs throw VhostError with code 'EINVAL' and a message
 * naming the offending part.
 */
import { VhostError } from '../../native/errors';

export const NBD_DEFAULT_PORT = 10809;
/** The protocol's limit for strings such as export names (bytes of UTF-8). */
export const NBD_MAX_STRING = 4096;

export type NbdAddress =
  | { transport: 'tcp'; host: string; port: number; exportName: string }
  | { transport: 'unix'; socketPath: string; exportName: string };

function bad(uri: string, what: string): VhostError {
  return new VhostError(`invalid NBD URI '${uri}': ${what}`, 'EINVAL');
}

function decode(uri: string, part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw bad(uri, `${what} has a malformed percent-escape`);
  }
}

const URI_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/;

export function parseNbdUri(uri: string): NbdAddress {
  const m = URI_RE.exec(uri);
  if (!m) {
    throw bad(uri, 'expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH');
  }
  const scheme = m[1].toLowerCase();
  const authority = m[2];
  const path = m[3];
  const query = m[4];

  if (scheme === 'nbds' || scheme === 'nbds+unix') {
    throw bad(uri, `scheme '${scheme}' needs TLS, which this client does not implement`);
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') {
    throw bad(uri, `unsupported scheme '${scheme}' (supported: nbd, nbd+unix)`);
  }
  if (authority.includes('@')) throw bad(uri, 'user names are not supported');

  let exportName = '';
  if (path !== '' && path !== '/') {
    exportName = decode(uri, path.slice(1), 'the export name');
  }
  if (Buffer.byteLength(exportName) > NBD_MAX_STRING) {
    throw bad(uri, `the export name is longer than ${NBD_MAX_STRING} bytes`);
  }
  if (exportName.includes('\0')) throw bad(uri, 'the export name contains a NUL character');

  const params = new Map<string, string>();
  if (query !== undefined && query !== '') {
    for (const kv of query.split('&')) {
      if (kv === '') continue;
      const eq = kv.indexOf('=');
      const key = decode(uri, eq < 0 ? kv : kv.slice(0, eq), 'a query parameter name');
      const value = decode(uri, eq < 0 ? '' : kv.slice(eq + 1), `query parameter '${key}'`);
      if (params.has(key)) throw bad(uri, `query parameter '${key}' is given twice`);
      params.set(key, value);
    }
  }

  if (scheme === 'nbd+unix') {
    if (authority !== '') {
      throw bad(uri, `nbd+unix takes no host (found '${authority}'); write nbd+unix:///EXPORT?socket=PATH`);
    }
    const socketPath = params.get('socket');
    if (socketPath === undefined || socketPath === '') {
      throw bad(uri, 'nbd+unix needs the socket path as ?socket=PATH');
    }
    for (const key of params.keys()) {
      if (key !== 'socket') throw bad(uri, `unsupported query parameter '${key}'`);
    }
    return { transport: 'unix', socketPath, exportName };
  }

  for (const key of params.keys()) {
    if (key === 'socket') throw bad(uri, "'socket' is only valid with nbd+unix://");
    throw bad(uri, `unsupported query parameter '${key}'`);
  }
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0) throw bad(uri, "unterminated '[' in an IPv6 host");
    host = authority.slice(1, close);
    const rest = authority.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) throw bad(uri, `unexpected '${rest}' after the IPv6 host`);
      portText = rest.slice(1);
    }
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon >= 0) {
      host = authority.slice(0, colon);
      portText = authority.slice(colon + 1);
    } else {
      host = authority;
    }
    host = decode(uri, host, 'the host');
  }
  if (host === '') throw bad(uri, 'the host is missing (nbd://HOST[:PORT]/EXPORT)');
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText)) throw bad(uri, `port '${portText}' is not a number`);
    port = Number(portText);
    if (port < 1 || port > 65535) throw bad(uri, `port ${port} is out of range 1..65535`);
  }
  return { transport: 'tcp', host, port, exportName };
}

/** A short human form of an address, for logs and error messages. */
export function describeNbdAddress(a: NbdAddress): string {
  const name = a.exportName === '' ? '(default export)' : `'${a.exportName}'`;
  if (a.transport === 'unix') return `unix:${a.socketPath} ${name}`;
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `${host}:${a.port} ${name}`;
}
