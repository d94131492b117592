/**
 * Reading guest script output in e2e tests. Scripts print results as tagged lines
 * ("<tag> <value>"); fio runs are wrapped by fioVerifyScript() so that checkFioVerify() can
 * parse fio's JSON report and find verification errors around it.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import type { GuestResult } from './guest';

/** Lines of `output` starting with `prefix `, prefix removed. */
export function tagged(output: string, prefix: string): string[] {
  return output
    .split('\n')
    .filter((l) => l.startsWith(prefix + ' '))
    .map((l) => l.slice(prefix.length + 1).trim());
}

/** The one line tagged `prefix`; fails when absent or repeated. */
export function one(output: string, prefix: string): string {
  const lines = tagged(output, prefix);
  assert.equal(lines.length, 1, `expected one "${prefix}" line in:\n${output}`);
  return lines[0] as string;
}

/** Logs the boot and total time of a guest run (shown in the mocha output). */
export function report(title: string, r: GuestResult): void {
  console.log(`      [e2e] ${title}: boot ${r.bootMs} ms, guest total ${r.totalMs} ms`);
}

/** busybox `seq 1 n` output, as the guest writes it. */
export function seqText(n: number): string {
  let s = '';
  for (let i = 1; i <= n; i++) s += `${i}\n`;
  return s;
}

export const sha256 = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');

export interface FioVerifyJob {
  /**
   * Names the run's output lines: "<label>-rc", "<label>-json-begin", "<label>-stderr" (must
   * not contain "verify", which marks fio's verification errors).
   */
  label: string;
  /** Guest block device, e.g. /dev/vda. */
  device: string;
  /** Bytes of the device covered (4 KiB random writes over [offset, offset + size)). */
  size: number;
  /** Start of the region on the device. Default 0. */
  offset?: number;
  /**
   * Content of every block, in fio's verify_pattern syntax (e.g. `"alpha"%o`: the string and
   * the block's offset, repeated), verified byte for byte (fio --verify=pattern). Default:
   * random data with a crc32c header per block. A crc32c header only proves a block is intact
   * and at its offset: another fio run's block at the same offset passes too, so tests that
   * must tell two writers apart give each its own pattern.
   */
  pattern?: string;
  /**
   * true: only read the region and check it against what an earlier run with the same
   * label-independent parameters wrote (fio --verify_only regenerates the offsets from fio's
   * fixed random seed).
   */
  verifyOnly?: boolean;
}

/**
 * Guest script lines running fio: 4 KiB random writes with O_DIRECT, queue depth 16, each
 * block carrying a crc32c verification header (or `pattern`), then a read-back of the whole
 * region that checks every block (--verify_fatal stops at the first bad one).
 */
export function fioVerifyScript(job: FioVerifyJob): string {
  const { label } = job;
  const mode = job.verifyOnly === true ? '--verify_only' : '--do_verify=1';
  const verify = job.pattern === undefined ? '--verify=crc32c' : `--verify=pattern --verify_pattern='${job.pattern}'`;
  return `
fio --name=${label} --filename=${job.device} --rw=randwrite --bs=4k --offset=${job.offset ?? 0} --size=${job.size} \\
    --ioengine=libaio --iodepth=16 --direct=1 ${verify} ${mode} --verify_fatal=1 --randrepeat=1 --eta=never \\
    --output-format=json --output=/tmp/${label}.json 2>/tmp/${label}.err
echo "${label}-rc $?"
echo "${label}-json-begin"
cat /tmp/${label}.json
echo "${label}-json-end"
sed 's/^/${label}-stderr /' /tmp/${label}.err
`;
}

interface FioJobReport {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

/**
 * Asserts that the fio run `job` (see fioVerifyScript) succeeded: exit status 0, nothing on
 * stderr, no verification message anywhere outside the JSON reports, the whole region written
 * and read back verified. Returns fio's job report.
 */
export function checkFioVerify(output: string, job: FioVerifyJob): FioJobReport {
  const { label } = job;
  assert.doesNotMatch(label, /verify/i, 'label');
  assert.equal(one(output, `${label}-rc`), '0', output);
  assert.deepEqual(tagged(output, `${label}-stderr`), [], `fio ${label} wrote to stderr`);
  const begin = `${label}-json-begin\n`;
  const jsonStart = output.indexOf(begin);
  const jsonEnd = output.indexOf(`${label}-json-end`);
  assert.ok(jsonStart >= 0 && jsonEnd > jsonStart, output);
  // fio reports verification failures ("verify: bad magic header", "crc32c: verify failed")
  // outside its JSON, whose job options legitimately contain the word.
  const outsideJson = output.replace(/^(\S+)-json-begin\n[\s\S]*?^\1-json-end$/gm, '');
  const verifyLines = outsideJson.split('\n').filter((l) => /verify/i.test(l));
  assert.deepEqual(verifyLines, [], 'fio reported verification errors');
  const report = (JSON.parse(output.slice(jsonStart + begin.length, jsonEnd)) as { jobs: FioJobReport[] }).jobs[0];
  assert.ok(report, `fio ${label}: no job in the JSON report`);
  assert.equal(report.error, 0);
  // With --verify_only fio still accounts the skipped writes (it issues none).
  assert.equal(report.write.io_bytes, job.size, `fio ${label} wrote (or skipped, verifyOnly) the whole region`);
  assert.equal(report.read.io_bytes, job.size, `fio ${label} read back and verified the whole region`);
  return report;
}
