/**
 * The RBD backing string: rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]
 *   POOL, IMAGE, SNAP   names as the rbd tool writes them (no namespaces)
 *   conf=PATH           the cluster's ceph.conf (default: librados' search, $CEPH_CONF,
 *                       /etc/ceph/ceph.conf); its keyring setting names the key
 *   id=USER             the client name without "client." (default admin)
 * A ':' inside a value is written '\:' (as in QEMU's rbd: syntax). Malformed strings throw
 * VhostError EINVAL naming the offending part.
 */
import { VhostError } from '../../native/errors';

export interface RbdSpec {
  pool: string;
  image: string;
  snap?: string;
  conf?: string;
  id?: string;
}

const PREFIX = 'rbd:';
const NAME_RE = /^[^/@\s\0]+$/;

export function isRbdSpec(backing: string): boolean {
  return backing.startsWith(PREFIX);
}

function bad(spec: string, what: string): VhostError {
  return new VhostError(`invalid RBD backing '${spec}': ${what} (expected rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER])`, 'EINVAL');
}

/** Splits at ':' not preceded by '\', unescaping '\:' and '\\'. */
function splitEscaped(text: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '\\' && i + 1 < text.length && (text[i + 1] === ':' || text[i + 1] === '\\')) {
      cur += text[++i];
    } else if (ch === ':') {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts;
}

export function parseRbdSpec(spec: string): RbdSpec {
  if (!isRbdSpec(spec)) throw bad(spec, `it must start with '${PREFIX}'`);
  const [target, ...options] = splitEscaped(spec.slice(PREFIX.length));
  const slash = target.indexOf('/');
  if (slash < 0) throw bad(spec, 'the pool is missing');
  const pool = target.slice(0, slash);
  let image = target.slice(slash + 1);
  let snap: string | undefined;
  const at = image.indexOf('@');
  if (at >= 0) {
    snap = image.slice(at + 1);
    image = image.slice(0, at);
    if (!NAME_RE.test(snap)) throw bad(spec, `snapshot name '${snap}' is empty or has '/', '@', spaces or NUL`);
  }
  if (!NAME_RE.test(pool)) throw bad(spec, `pool name '${pool}' is empty or has '/', '@', spaces or NUL`);
  if (image.includes('/')) throw bad(spec, 'RBD namespaces (POOL/NAMESPACE/IMAGE) are not supported');
  if (!NAME_RE.test(image)) throw bad(spec, `image name '${image}' is empty or has '@', spaces or NUL`);
  const out: RbdSpec = { pool, image, ...(snap !== undefined ? { snap } : {}) };
  for (const opt of options) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    if (key !== 'conf' && key !== 'id') throw bad(spec, `unknown option '${key}' (options: conf, id)`);
    if (value === '' || value.includes('\0')) throw bad(spec, `option '${key}' needs a value`);
    if (out[key] !== undefined) throw bad(spec, `option '${key}' is given twice`);
    out[key] = value;
  }
  return out;
}

/** The canonical text form (escaping ':'), e.g. for logs. */
export function formatRbdSpec(s: RbdSpec): string {
  const esc = (v: string): string => v.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
  let text = `${PREFIX}${s.pool}/${s.image}`;
  if (s.snap !== undefined) text += `@${s.snap}`;
  if (s.conf !== undefined) text += `:conf=${esc(s.conf)}`;
  if (s.id !== undefined) text += `:id=${esc(s.id)}`;
  return text;
}
