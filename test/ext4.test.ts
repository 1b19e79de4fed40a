// The "done when" scenario: a filesystem made, loop-mounted and filled
// through the export is clean and intact in the image afterwards.
import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, eachTransport, exported, loopMount, loopsOf, MiB, pattern, run, stopExport, waitUntil } from './helpers/index.js';

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

eachTransport(test, 'mkfs.ext4 + loop mount + files through the export: e2fsck -fn clean, files intact', async (t, ioUring) => {
  const { dir, mnt, image, exp } = await exported(t, { ioUring, size: 64 * MiB, writable: true });
  const mkfs = await run(['mkfs.ext4', '-q', '-F', mnt], { timeout: 60_000 });
  t.is(mkfs.code, 0, mkfs.stderr);

  const fs = join(dir, 'fs');
  await loopMount(t, mnt, fs);
  const files = new Map();
  const sizes = [1, 511, 4096, 65_537, 300_000, MiB, 3 * MiB + 123];
  const src = join(dir, 'src');
  mkdirSync(src);
  for (const [index, size] of sizes.entries()) {
    const name = `${index % 2 ? 'sub/' : ''}file-${index}.bin`;
    const data = pattern(size, 100 + index);
    files.set(name, sha256(data));
    writeFileSync(join(src, `file-${index}.bin`), data);
  }
  await check(['mkdir', '-p', join(fs, 'sub')]);
  for (const [index] of sizes.entries()) {
    const name = `${index % 2 ? 'sub/' : ''}file-${index}.bin`;
    await check(['cp', join(src, `file-${index}.bin`), join(fs, name)], { timeout: 60_000 });
  }
  await check(['sync', '-f', fs], { timeout: 60_000 });
  const listed = await check(['sha256sum', ...[...files.keys()].map((n) => join(fs, n))], { timeout: 60_000 });
  for (const [name, sum] of files) t.true(listed.stdout.includes(`${sum}  ${join(fs, name)}`), `${name} reads back`);

  await check(['umount', fs], { timeout: 60_000 });
  await waitUntil(async () => (await loopsOf(mnt)).length === 0, { what: 'the loop device to let go' });
  await stopExport(t, exp);

  const fsck = await run(['e2fsck', '-fn', image], { timeout: 120_000 });
  t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);

  // The image on its own (no export) holds the same files.
  const direct = join(dir, 'direct');
  await loopMount(t, image, direct, 'loop,ro');
  for (const [name, sum] of files) t.is(sha256(readFileSync(join(direct, name))), sum, `${name} in the image`);
  await check(['umount', direct]);
});
