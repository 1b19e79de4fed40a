// CI's slice of the soak: fio randrw with crc32c verify, 4 jobs, 30 s on
// each transport (`npm run soak` runs 10 minutes each).
import test from 'ava';
import { spawnSync } from 'node:child_process';

test('a short soak verifies every byte on both transports', (t) => {
  const run = spawnSync('node', ['scripts/soak.mjs', '--duration', '30', '--image-size-mb', '256'], {
    encoding: 'utf8',
    timeout: 240_000,
  });
  t.log(run.stdout.trim());
  t.is(run.status, 0, run.stderr);
  t.regex(run.stdout, /soak: [12] passed, 0 failed/);
  t.regex(run.stdout, /legacy: 30s, [1-9]\d* requests served/);
});
