// CI's slice of the soak: fio randrw with crc32c verify, 4 jobs, 30 s on
// each transport (`npm run soak` runs 10 minutes each).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { TRANSPORTS, transportFor } from './helpers/index.js';

test('a short soak verifies every byte on both transports', (t) => {
  const run = spawnSync('node', ['scripts/soak.mjs', '--duration', '30', '--image-size-mb', '256'], {
    encoding: 'utf8',
    timeout: 240_000,
  });
  t.log(run.stdout.trim());
  t.is(run.status, 0, run.stderr);
  t.regex(run.stdout, new RegExp(`^soak: ${TRANSPORTS.length} passed, 0 failed$`, 'm'), 'every transport the kernel has ran and passed');
  for (const ioUring of TRANSPORTS) {
    // Over the ring, the requests came through it; over /dev/fuse, none did.
    const ring = ioUring === 'on' ? '[1-9]\\d*' : '0';
    const served = new RegExp(`^${transportFor(ioUring)}: 30s, [1-9]\\d* requests served \\(${ring} over the ring\\)`, 'm');
    t.regex(run.stdout, served, `${transportFor(ioUring)} served the soak`);
  }
});
