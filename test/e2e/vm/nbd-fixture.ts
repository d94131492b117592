/**
 * What the e2e suites that run our daemon over nbdkit under a QEMU guest share (inflight,
 * writeback): a fresh folder per test; a sparse image served by nbdkit's file plugin behind the
 * delay filter, restarted whenever it exits (RestartingNbdkit); and a tear-down that prints how
 * each nbdkit ended when the test failed, SIGKILLs a daemon still running, stops the server and
 * removes the folder. The constructor registers the hooks in the enclosing describe().
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RestartingNbdkit, unixUri } from '../../backing/nbd-servers';
import { tmpDir } from '../../support/tmp';
import type { VbcDaemon } from './daemon';

export class NbdkitFixture {
  dir = '';
  daemon: VbcDaemon | undefined;
  server: RestartingNbdkit | undefined;

  constructor(tag: string) {
    beforeEach(() => {
      this.dir = tmpDir(tag);
    });
    const tearDown = (failed: boolean): Promise<void> => this.tearDown(failed);
    afterEach(async function () {
      await tearDown(this.currentTest?.state === 'failed');
    });
  }

  private async tearDown(failed: boolean): Promise<void> {
    const server = this.server;
    if (failed && server !== undefined) {
      console.log(`      nbdkit exits: ${server.exits.join('; ') || '(none)'}; stderr: ${server.stderr.trim() || '(none)'}`);
    }
    if (this.daemon?.running) await this.daemon.stop('SIGKILL');
    this.daemon = undefined;
    await server?.stop();
    this.server = undefined;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** A sparse image of `bytes` in the folder, served with the delay filter's `delay` (e.g. 'wdelay=20ms'). */
  async serve(bytes: number, delay: string): Promise<{ image: string; uri: string; server: RestartingNbdkit }> {
    const image = path.join(this.dir, 'disk.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, bytes);
    const socket = path.join(this.dir, 'nbd.sock');
    const server = await RestartingNbdkit.start({ socket, plugin: 'file', args: [`file=${image}`, delay], filters: ['delay'] });
    this.server = server;
    return { image, uri: unixUri(socket), server };
  }
}
