/** The rbd: backing string: what it accepts, what it rejects and why, and the config check. */
import * as assert from 'node:assert/strict';
import { formatRbdSpec, isRbdSpec, parseRbdSpec } from '../../src/backing/rbd/spec';
import { validateConfig } from '../../src/config/config';
import { VhostError } from '../../src/native/errors';

function rejects(spec: string, why: RegExp): void {
  assert.throws(() => parseRbdSpec(spec), (e: VhostError) => e.code === 'EINVAL' && why.test(e.message));
}

describe('RBD backing spec', () => {
  it('parses pool, image, snapshot, conf and id', () => {
    assert.deepEqual(parseRbdSpec('rbd:pool/img'), { pool: 'pool', image: 'img' });
    assert.deepEqual(parseRbdSpec('rbd:p/i@s1:conf=/etc/c.conf:id=vbc'), { pool: 'p', image: 'i', snap: 's1', conf: '/etc/c.conf', id: 'vbc' });
    assert.deepEqual(parseRbdSpec('rbd:p/i:id=u:conf=/a\\:b/c'), { pool: 'p', image: 'i', id: 'u', conf: '/a:b/c' });
  });

  it('round-trips through its canonical form', () => {
    for (const s of ['rbd:p/i', 'rbd:p/i@snap', 'rbd:p/i@s:conf=/x\\:y:id=z']) assert.equal(formatRbdSpec(parseRbdSpec(s)), s);
  });

  it('rejects malformed strings naming the part', () => {
    rejects('rbd:img', /pool is missing/);
    rejects('rbd:/img', /pool name '' is empty/);
    rejects('rbd:p/', /image name '' is empty/);
    rejects('rbd:p/ns/img', /namespaces/);
    rejects('rbd:p/i@', /snapshot name '' is empty/);
    rejects('rbd:p/i:user=x', /unknown option 'user'/);
    rejects('rbd:p/i:conf=', /option 'conf' needs a value/);
    rejects('rbd:p/i:id=a:id=b', /given twice/);
    rejects('nbd://x', /must start with 'rbd:'/);
    assert.equal(isRbdSpec('rbd:p/i'), true);
    assert.equal(isRbdSpec('/var/lib/rbd:p'), false);
  });

  it('is checked when the configuration is loaded', () => {
    assert.throws(
      () => validateConfig({ volumes: [{ name: 'v', socketPath: '/tmp/v.sock', backing: 'rbd:nopool' }] }),
      (e: VhostError) => e.code === 'ECONFIG' && /volumes\[0\]\.backing: .*pool is missing/.test(e.message),
    );
    const cfg = validateConfig({ volumes: [{ name: 'v', socketPath: '/tmp/v.sock', backing: 'rbd:p/i@s:id=u' }] });
    assert.equal(cfg.volumes[0]?.backing, 'rbd:p/i@s:id=u');
  });
});
