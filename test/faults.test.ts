// Faults and odd input: a full filesystem, failing storage, a crash after an
// acknowledged fsync, odd but legal requests, symlinks, a hostile pidfile.
import test, { type ExecutionContext } from 'ava';
import { existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  assertBytes,
  exported,
  exportImage,
  fio,
  FSOP,
  fsop,
  makeImage,
  makeMountpoint,
  MiB,
  mountOn,
  pattern,
  PYTHON,
  readFile,
  readVia,
  run,
  startChild,
  startCli,
  stopExport,
  tmpDir,
  waitUntil,
  writeVia,
  eachTransport,
} from './helpers/index.js';
import { ackedBlocks, lostBlocks } from './helpers/durability.js';

/** A directory on a tmpfs of `size`, unmounted in teardown. */
async function smallFilesystem(t: ExecutionContext, size: string): Promise<{ dir: string; fs: string }> {
  const dir = tmpDir(t);
  const fs = join(dir, 'fs');
  await run(['mkdir', fs]);
  t.is((await run(['mount', '-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', fs])).code, 0);
  t.teardown(() => run(['umount', '-l', fs]));
  return { dir, fs };
}

eachTransport(test, 'a full filesystem: writes get ENOSPC, the export serves on, earlier data intact', async (t, ioUring) => {
  const { dir, fs } = await smallFilesystem(t, '2M');
  const image = makeImage(fs, 'disk.img', 64 * MiB);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  const first = pattern(MiB, 1);
  t.deepEqual(await writeVia(mnt, 0, first, { how: 'direct' }), { ok: MiB });
  const filling = await writeVia(mnt, 8 * MiB, pattern(4 * MiB, 2), { how: 'direct' });
  t.true(filling.errno === 'ENOSPC' || filling.ok < 4 * MiB, `a write that fills the disk is short: ${JSON.stringify(filling)}`);
  t.is((await writeVia(mnt, 16 * MiB, pattern(MiB, 2), { how: 'direct' })).errno, 'ENOSPC');
  assertBytes(t, await readVia(mnt, 0, MiB), first, 'data written before is intact');
  t.deepEqual(await writeVia(mnt, 4096, pattern(4096, 3), { how: 'direct' }), { ok: 4096 }, 'allocated blocks still take writes');
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.true(exp.lines.find((l) => l.event === 'stopped')!.errors >= 1);
});

eachTransport(test, 'failing storage: EIO for the request, the export lives, logged once and counted', async (t, ioUring) => {
  const env = { FUSE_EXPORT_TEST_EIO_RANGE: `${MiB}:${2 * MiB}` };
  const { exp, mnt } = await exported(t, { ioUring, writable: true, size: 4 * MiB, env });
  for (let i = 0; i < 5; i++) {
    t.is((await fsop('read', [mnt, MiB + i * 4096, 4096, 'rdirect'])).errno, 'EIO');
  }
  t.is((await writeVia(mnt, MiB, pattern(4096, 1), { how: 'direct' })).errno, 'EIO');
  assertBytes(t, await readVia(mnt, 0, 4096), Buffer.alloc(4096), 'outside the failing range all is well');
  const logged = exp.lines.filter((l) => l.event === 'image-error');
  t.is(logged.length, 1, 'one line for the first EIO, not one per request');
  t.regex(logged[0].message, /Input\/output error/);
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.is(exp.lines.find((l) => l.event === 'stopped')!.errors, 6);
});

eachTransport(test, 'a kernel short of memory (io_uring_enter ENOMEM) is waited out: every request served, no halt', async (t, ioUring) => {
  const env = { FUSE_EXPORT_TEST_ENTER_ENOMEM: '200' };
  const { exp, mnt } = await exported(t, { ioUring, writable: true, size: 4 * MiB, env });
  const data = pattern(2 * MiB, 7);
  t.deepEqual(await writeVia(mnt, MiB, data, { how: 'direct' }), { ok: data.length });
  assertBytes(t, await readVia(mnt, MiB, data.length, { how: 'rdirect' }), data);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  t.deepEqual(exp.lines.filter((l) => l.event === 'halted'), [], 'the export did not halt');
});

for (const cache of ['direct', 'writeback'] as const) {
  eachTransport(test, `kill -9 right after acknowledged fsyncs (cache ${cache}): every acked block is in the image`, async (t, ioUring) => {
    const block = 4096;
    const count = 2048;
    const { mnt, image, exp } = await exported(t, { ioUring, cache, size: block * count, writable: true });
    const writer = startChild(t, [PYTHON, FSOP, 'acked_writes', mnt, block, count]);
    await writer.waitFor(/"acked": 50\b/, 30_000);
    exp.signal('SIGKILL');
    await exp.wait();
    await writer.wait();
    t.true(ackedBlocks(writer.output()).length > 50);
    t.deepEqual(lostBlocks(image, writer.output(), block, count), [], 'no acknowledged write is lost');
    // A crash mid-write leaves an image that reads end to end.
    const check = await run(['dd', `if=${image}`, 'of=/dev/null', 'bs=1M'], { timeout: 30_000 });
    t.is(check.code, 0, check.stderr);
  });
}

eachTransport(test, 'odd but legal requests: 1-byte, unaligned, across EOF, 1 MiB, many jobs', async (t, ioUring) => {
  const size = 8 * MiB + 1000;
  const content = pattern(size, 7);
  const { mnt, image } = await exported(t, { ioUring, writable: true, size, extents: [[0, content]] });
  assertBytes(t, await readVia(mnt, 12345, 1), content.subarray(12345, 12346), '1-byte read');
  t.deepEqual(await writeVia(mnt, 777, Buffer.from([0xee])), { ok: 1 }, '1-byte write');
  content[777] = 0xee;
  const odd = pattern(5000, 8);
  t.deepEqual(await writeVia(mnt, 4097, odd), { ok: 5000 }, 'unaligned write');
  odd.copy(content, 4097);
  assertBytes(t, await readVia(mnt, 4095, 5003), content.subarray(4095, 9098), 'unaligned read');
  assertBytes(t, await readVia(mnt, size - 500, 4096), content.subarray(size - 500), 'a read across EOF is short');
  t.deepEqual(await writeVia(mnt, size - 10, pattern(100, 9)), { ok: 10 }, 'a write across EOF is short');
  pattern(100, 9).copy(content, size - 10, 0, 10);
  const big = pattern(MiB, 10);
  t.deepEqual(await writeVia(mnt, 2 * MiB, big, { how: 'direct' }), { ok: MiB }, '1 MiB direct write');
  big.copy(content, 2 * MiB);
  assertBytes(t, await readVia(mnt, 2 * MiB, MiB, { how: 'rdirect' }), big, '1 MiB direct read');
  const jobs = await fio(
    ['--name=many', `--filename=${mnt}`, '--rw=randread', '--bs=512-64k', '--numjobs=8', '--iodepth=8',
      '--ioengine=io_uring', '--size=8M', '--runtime=2', '--time_based', '--group_reporting'],
    { timeout: 60_000 },
  );
  t.is(jobs.code, 0, jobs.stderr);
  t.regex(jobs.stdout, /err= 0/);
  assertBytes(t, readFile(image, 0, size), content, 'the image holds exactly what was written');
});

eachTransport(test, 'truncate racing with I/O: every request is answered, the size ends as set', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, writable: true, growable: true, size: 16 * MiB });
  const load = fio(
    ['--name=race', `--filename=${mnt}`, '--rw=randrw', '--bs=4k', '--numjobs=2', '--iodepth=8',
      '--ioengine=io_uring', '--size=16M', '--runtime=3', '--time_based', '--direct=1'],
    { timeout: 60_000 },
  );
  for (let i = 0; i < 20; i++) {
    t.deepEqual(await fsop('truncate', [mnt, (i % 2 ? 16 : 4) * MiB]), { ok: true });
  }
  t.false((await load).timedOut, 'no request hangs');
  t.deepEqual(await fsop('truncate', [mnt, 12 * MiB]), { ok: true });
  t.is((await fsop('stat', [mnt])).ok.size, 12 * MiB);
});

test.serial('a mountpoint given as a symlink mounts on the file it names; an image symlink is followed', async (t) => {
  const dir = tmpDir(t);
  const data = pattern(64 * 1024, 11);
  const image = makeImage(dir, 'real.img', MiB, [[0, data]]);
  const target = makeMountpoint(dir, 'real-mnt');
  symlinkSync(image, join(dir, 'image-link'));
  symlinkSync(target, join(dir, 'mnt-link'));
  const exp = await exportImage(t, { image: join(dir, 'image-link'), mountpoint: join(dir, 'mnt-link') });
  t.is(exp.ready.mountpoint, target, 'the ready line names the real mountpoint');
  t.is(mountOn(target)?.fsType, 'fuse.fuse-export');
  assertBytes(t, await readVia(target, 0, data.length), data);
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.is(mountOn(target), undefined);
});

test.serial('the pidfile cannot clobber another file through a symlink', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  const precious = join(dir, 'precious');
  writeFileSync(precious, 'keep me\n');
  const pidfile = join(dir, 'export.pid');
  symlinkSync(precious, pidfile);
  const exp = startCli(t, ['--pidfile', pidfile, image, mnt]);
  await exp.event('ready');
  await waitUntil(() => readFileSync(pidfile, 'utf8').trim() === String(exp.pid), { what: 'the pidfile' });
  t.is(readFileSync(precious, 'utf8'), 'keep me\n', 'the symlink target is untouched');
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.false(existsSync(pidfile));
  t.is(readFileSync(precious, 'utf8'), 'keep me\n');
});
