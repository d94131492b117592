/**
 * The durable volume table (volume-table.ts) on a simulated device (mem-device.ts, held-io.ts):
 * a save resolves only once a snapshot taken after it was asked for is durable (a floor raised
 * while an earlier save is writing is not reported saved by that save), and a failed save
 * leaves the last durable copy alone (the next save writes the failed copy again), so a save
 * torn by a crash never leaves an older state than the last one reported durable.
 */
import { strict as assert } from 'node:assert';
import { VOLUME_TABLE_AREA, VolumeTable, type VolumeTableSnapshot } from '../../src/cache/volume-table';
import { HeldIo, settle } from '../support/held-io';
import { MemDevice } from '../support/mem-device';

const OFFSET = 4096;
const UUID = new Uint8Array(16).fill(9);

describe('cache volume table', () => {
  let state: VolumeTableSnapshot;
  const table = (dev: MemDevice) => new VolumeTable(dev, -1, OFFSET, UUID, () => ({ ...state, volumes: [...state.volumes] }));
  /** The floor a start after a power cut now would read (only fdatasynced bytes, or `image`). */
  const floorAfterCrash = async (dev: MemDevice, image = dev.crashImage(() => 0)): Promise<number | null> =>
    (await table(new MemDevice(image.byteLength, image)).load())?.floor ?? null;

  /** The state of the next save: `floor`, every record changed too (so are the copy's last sectors). */
  const raise = (floor: number): void => {
    state.floor = floor;
    for (const v of state.volumes) v.epoch = floor;
  };

  beforeEach(() => {
    state = { floor: 1, volumes: [], sequence: 0 };
  });

  it('a save asked for while another is writing waits for a write of the state after the ask', async () => {
    const dev = new MemDevice(OFFSET + VOLUME_TABLE_AREA);
    dev.io = new HeldIo();
    const t = table(dev);
    const a = t.save();
    await settle();
    assert.equal(dev.io.pending.length, 1, 'save a is writing');
    // b is asked for while a writes: it is the next save, started once a is done.
    const b = t.save();
    dev.io.pending[0].complete();
    await a;
    await settle();
    assert.equal(dev.io.pending.length, 1, 'save b is writing');
    // The floor is raised while b writes (b's snapshot predates it): c must not ride on b.
    state.floor = 2;
    let cDone = false;
    const c = t.save().then(() => (cDone = true));
    dev.io.pending[0].complete();
    await b;
    await settle();
    if (cDone) assert.equal(await floorAfterCrash(dev), 2, 'c resolved: its floor is durable');
    assert.equal(cDone, false, 'c waits for a save of its own');
    assert.equal(dev.io.pending.length, 1, 'save c is writing');
    dev.io.pending[0].complete();
    await c;
    assert.equal(await floorAfterCrash(dev), 2);
  });

  it('a failed save does not advance the copy: a later save torn by a crash leaves the last durable state', async () => {
    const dev = new MemDevice(OFFSET + VOLUME_TABLE_AREA);
    const t = table(dev);
    // Records enough for a copy of several sectors (a torn write leaves a partial JSON).
    for (let id = 0; id < 40; id++) state.volumes.push({ id, name: `volume-${id}`, identity: `identity-${id}-0123456789`, sizeBytes: 1 << 30, maxBytes: 0, epoch: 1 });
    for (const floor of [1, 2, 3]) {
      raise(floor);
      await t.save();
    }
    // Floor 3 is durable in one copy, floor 2 in the other. Save 4 fails.
    let fail = true;
    dev.writeError = () => fail;
    raise(4);
    await assert.rejects(t.save(), { code: 'EIO' });
    fail = false;
    assert.equal(await floorAfterCrash(dev), 3);
    // Save 5 is cut by a power cut in its write, which lands torn (its first half of sectors).
    dev.freezeAtWrite = dev.writes + 1;
    raise(5);
    void t.save();
    await dev.frozenSignal;
    let draw = 0;
    const image = dev.crashImage(() => [0.5, 0.5][draw++] ?? 0);
    assert.equal(draw, 2, 'the frozen write was torn');
    assert.equal(await floorAfterCrash(dev, image), 3, 'the copy of floor 3 survives the torn save');
  });
});
