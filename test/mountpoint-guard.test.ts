// The mount lands on the file that was checked, never on what a path
// swapped in the meantime points to: when root exports into a folder that
// others can write, a mountpoint replaced by a symlink (to /etc/shadow, say)
// between the checks and the mount must not redirect the mount.
import test from 'ava';
import { existsSync, readFileSync, renameSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertBytes, isMounted, makeImage, makeMountpoint, MiB, pattern, readFile, startCli, tmpDir, waitUntil } from './helpers/index.js';

test.serial('a mountpoint swapped for a symlink after the checks: the mount lands on the checked file, not the target', async (t) => {
  const dir = tmpDir(t);
  const data = pattern(MiB, 5);
  const image = makeImage(dir, 'disk.img', MiB, [[0, data]]);
  const mnt = makeMountpoint(dir);
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'not to be mounted over');
  const checked = join(dir, 'checked');
  const marker = join(dir, 'paused-before-mount');
  // The test build waits, after opening and checking the mountpoint, until the marker is gone.
  const exp = startCli(t, ['--shutdown-timeout', '2', image, mnt], { env: { FUSE_EXPORT_TEST_MOUNT_PAUSE: marker } });
  await waitUntil(() => existsSync(marker), { what: 'the exporter to pause before mounting' });
  renameSync(mnt, checked);
  symlinkSync(victim, mnt);
  unlinkSync(marker);
  await exp.event('ready');

  t.false(isMounted(victim), 'the symlink target was not mounted over');
  t.is(readFileSync(victim, 'utf8'), 'not to be mounted over');
  t.true(isMounted(checked), 'the mount sits on the file that was checked');
  assertBytes(t, readFile(checked, 0, MiB), data, 'and that file is the image');
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0, exp.stderr());
});
