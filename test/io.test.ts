// READ, WRITE, FSYNC/FLUSH, mmap and the unimplemented requests, with
// exact bytes and errno, through the mounted file.
import test from 'ava';
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import {
  assertBytes,
  assertUnmounted,
  check,
  eachTransport,
  errorText,
  exported,
  exportImage,
  fileStat,
  fio,
  fsop,
  fsopOk,
  KiB,
  killGroup,
  loopDevice,
  makeImage,
  makeMountpoint,
  MiB,
  mountOn,
  pattern,
  qemuIo,
  readFile,
  readVia,
  run,
  runCli,
  sleep,
  startChild,
  stopExport,
  tmpDir,
  writeVia,
} from './helpers/index.js';

eachTransport(test, 'READ returns the image bytes, short at EOF and empty past it', async (t, ioUring) => {
  const size = MiB + 100; // not a multiple of any block size
  const data = pattern(size, 7);
  const { mnt } = await exported(t, { ioUring, size, extents: [[0, data]] });

  assertBytes(t, await readVia(mnt, 0, 64 * KiB), data.subarray(0, 64 * KiB), 'first 64 KiB');
  assertBytes(t, await readVia(mnt, 12345, 7000), data.subarray(12345, 12345 + 7000), 'unaligned read');
  const tail = await readVia(mnt, size - 100, 4096);
  t.is(tail.length, 100, 'a read across EOF is short');
  assertBytes(t, tail, data.subarray(size - 100));
  t.is((await readVia(mnt, size, 4096)).length, 0, 'a read at EOF returns 0 bytes');
  t.is((await readVia(mnt, size + 8192, 4096)).length, 0, 'a read past EOF returns 0 bytes');
  const direct = Buffer.from(await fsopOk('read', [mnt, 512 * KiB, 256 * KiB, 'rdirect']), 'hex');
  assertBytes(t, direct, data.subarray(512 * KiB, 768 * KiB), 'O_DIRECT read');
  const whole = await run(['sha256sum', mnt], { timeout: 20_000 });
  const expected = (await run(['sha256sum', '-'], { input: data })).stdout.split(' ')[0];
  t.is(whole.stdout.split(' ')[0], expected, 'a sequential read of the whole file matches the image');
});

eachTransport(test, 'a read-only export is mode 0400, mounted ro, and refuses writes (EROFS/EACCES)', async (t, ioUring) => {
  const data = pattern(MiB, 3);
  const { mnt, image, exp } = await exported(t, { ioUring, size: MiB, extents: [[0, data]] });
  t.false(exp.ready.writable);

  const st = await fsopOk('stat', [mnt]);
  t.is(st.mode, 0o100400, 'S_IFREG | 0400');
  t.true(mountOn(mnt)!.mountOptions.includes('ro'), 'mounted read-only');
  for (const how of ['rw', 'w']) {
    const answer = await writeVia(mnt, 0, Buffer.from('x'), { how });
    t.true(['EROFS', 'EACCES'].includes(answer.errno ?? ''), `open(${how}) + write: ${JSON.stringify(answer)}`);
  }
  const q = await qemuIo(mnt, ['write -P 0xab 0 4k']);
  t.false(q.ok, 'qemu-io cannot write');
  assertBytes(t, readFile(image, 0, MiB), data, 'the image is unchanged');
  assertBytes(t, await readVia(mnt, 0, 4096), data.subarray(0, 4096), 'reads still work');
});

eachTransport(test, 'qemu-io pattern writes and reads; the image holds the same bytes', async (t, ioUring) => {
  const { mnt, image, exp } = await exported(t, { ioUring, size: 4 * MiB, writable: true });
  t.true(exp.ready.writable);
  t.is((await fsopOk('stat', [mnt])).mode, 0o100600, 'S_IFREG | 0600 when writable');

  let q = await qemuIo(mnt, ['write -P 0xab 0 1M', 'read -P 0xab 0 1M']);
  t.true(q.ok, q.out);
  q = await qemuIo(mnt, ['write -P 0x5c 1536k 512k', 'read -P 0x5c 1536k 512k'], { cache: 'none' });
  t.true(q.ok, `O_DIRECT: ${q.out}`);
  q = await qemuIo(mnt, ['write -P 0x17 4097 3000', 'read -P 0x17 4097 3000']);
  t.true(q.ok, `unaligned: ${q.out}`);
  q = await qemuIo(mnt, ['read -P 0xcd 0 1M']);
  t.false(q.ok, 'a wrong pattern is detected (the check can fail)');

  const expected = Buffer.alloc(4 * MiB);
  expected.fill(0xab, 0, MiB);
  expected.fill(0x17, 4097, 4097 + 3000);
  expected.fill(0x5c, 1536 * KiB, 2 * MiB);
  assertBytes(t, readFile(image, 0, 4 * MiB), expected, 'image bytes while serving');
  await stopExport(t, exp);
  assertBytes(t, readFile(image, 0, 4 * MiB), expected, 'image bytes after stop');
  t.is(fileStat(image).size, 4 * MiB, 'size unchanged');
});

eachTransport(test, 'WRITE straddling EOF is short and dd past EOF fails with ENOSPC on a fixed-size export', async (t, ioUring) => {
  const size = MiB;
  const { mnt, image } = await exported(t, { ioUring, size, writable: true });

  const answer = await writeVia(mnt, size - 4096, Buffer.alloc(8192, 0x42));
  t.deepEqual(answer, { ok: 4096 }, 'only the part inside the image is written');
  assertBytes(t, readFile(image, size - 4096, 8192), Buffer.alloc(4096, 0x42));

  const dd = await run(['dd', 'if=/dev/zero', `of=${mnt}`, 'bs=64k', `seek=${size / (64 * KiB)}`, 'count=1', 'conv=notrunc'], {
    timeout: 20_000,
  });
  t.not(dd.code, 0, 'dd fails');
  t.regex(dd.stderr, /No space left on device/);
  const beyond = await writeVia(mnt, size + 4096, Buffer.from('past'));
  t.true(beyond.errno === 'ENOSPC' || beyond.ok === 0, `pwrite past EOF writes nothing: ${JSON.stringify(beyond)}`);
  t.is(fileStat(image).size, size, 'the image did not grow');
  t.is((await fsopOk('stat', [mnt])).size, size, 'nor did the exported file');
});

eachTransport(test, 'a growable export grows on writes past EOF and the bytes read back', async (t, ioUring) => {
  const size = MiB;
  const { dir, mnt, image, exp } = await exported(t, { ioUring, size, writable: true, growable: true });
  t.true(exp.ready.growable);
  const data = pattern(64 * KiB, 11);
  const source = join(dir, 'data.bin');
  writeFileSync(source, data);

  const dd = await run(['dd', `if=${source}`, `of=${mnt}`, 'bs=64k', `seek=${(2 * MiB) / (64 * KiB)}`, 'count=1', 'conv=notrunc'], {
    timeout: 20_000,
  });
  t.is(dd.code, 0, dd.stderr);
  const grown = 2 * MiB + 64 * KiB;
  t.is(fileStat(image).size, grown, 'the image grew');
  t.is((await fsopOk('stat', [mnt])).size, grown, 'the exported file grew');
  assertBytes(t, await readVia(mnt, 2 * MiB, 64 * KiB), data, 'bytes read back through the mount');
  assertBytes(t, readFile(image, 2 * MiB, 64 * KiB), data, 'bytes in the image');
  assertBytes(t, await readVia(mnt, MiB, 4096), Buffer.alloc(4096), 'the gap reads as zeroes');

  t.deepEqual(await writeVia(mnt, grown, Buffer.from('appended')), { ok: 8 }, 'a write at EOF appends');
  t.is(fileStat(image).size, grown + 8);
  assertBytes(t, await readVia(mnt, grown, 100), Buffer.from('appended'));
});

eachTransport(test, 'reads are not cached: bytes written to the image behind the export are seen', async (t, ioUring) => {
  const { mnt, image } = await exported(t, { ioUring, size: MiB, extents: [[0, Buffer.alloc(MiB, 0x11)]] });
  assertBytes(t, await readVia(mnt, 0, 8192), Buffer.alloc(8192, 0x11));
  const fd = openSync(image, 'r+');
  writeSync(fd, Buffer.alloc(8192, 0x22), 0, 8192, 0);
  closeSync(fd);
  assertBytes(t, await readVia(mnt, 0, 8192), Buffer.alloc(8192, 0x22), 'FOPEN_DIRECT_IO: no stale page cache');
});

eachTransport(test, 'mmap MAP_SHARED writes reach the image after msync and close', async (t, ioUring) => {
  const data = pattern(MiB, 5);
  const { mnt, image } = await exported(t, { ioUring, size: MiB, writable: true, extents: [[0, data]] });
  const patch = Buffer.from('written through a shared mapping');
  const before = await fsop('mmapwrite', [mnt, 8192 + 3, patch.toString('hex')]);
  t.truthy(before.ok, `mmap write: ${JSON.stringify(before)}`);
  t.is(before.ok, data.subarray(8195, 8195 + patch.length).toString('hex'), 'the mapping read the image bytes');
  const expected = Buffer.from(data);
  patch.copy(expected, 8195);
  assertBytes(t, readFile(image, 0, MiB), expected, 'the image has the mapped write and nothing else changed');
  assertBytes(t, await readVia(mnt, 8195, patch.length), patch, 'and it reads back through the mount');
});

eachTransport(test, 'FSYNC, FDATASYNC and FLUSH succeed and the data is in the image', async (t, ioUring) => {
  const { mnt, image, exp } = await exported(t, { ioUring, size: MiB, writable: true });
  const data = pattern(4096, 9);
  t.deepEqual(await fsop('fsync', [mnt, data.toString('hex')]), { ok: true });
  assertBytes(t, readFile(image, 0, 4096), data);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
});

eachTransport(test, 'fio: 2 jobs x iodepth 16, direct 4k random writes, crc32c verify', async (t, ioUring) => {
  const perJob = 16 * MiB;
  const { mnt, image, exp } = await exported(t, { ioUring, size: 2 * perJob, writable: true });
  const job = (filename: string, engine: string, extra: string[] = []) => [
    '--name=verify',
    `--filename=${filename}`,
    `--ioengine=${engine}`,
    '--direct=1',
    '--bs=4k',
    '--rw=randwrite',
    '--verify=crc32c',
    '--verify_fatal=1',
    `--size=${perJob}`,
    `--offset_increment=${perJob}`,
    '--numjobs=2',
    '--iodepth=16',
    '--randrepeat=1',
    '--group_reporting',
    ...extra,
  ];
  const result = await fio(job(mnt, 'io_uring'), { timeout: 120_000 });
  t.is(result.code, 0, `${result.stdout}${result.stderr}`);
  t.regex(result.stdout, /err= 0/);
  t.notRegex(result.stdout + result.stderr, /verify: bad|crc32c: verify failed/);
  const stopped = await stopExport(t, exp);
  t.true(stopped.bytesWritten >= 2 * perJob, `bytesWritten ${stopped.bytesWritten}`);
  t.is(stopped.errors, 0);
  // The same blocks, checked again on the image itself after the export is gone.
  const again = await fio(job(image, 'psync', ['--verify_only', '--iodepth=1']), { timeout: 120_000 });
  t.is(again.code, 0, `verify on the image: ${again.stdout}${again.stderr}`);
  t.notRegex(again.stdout + again.stderr, /verify: bad|verify failed/);
});

eachTransport(test, 'requests the export does not implement (xattrs) fail with EOPNOTSUPP', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, size: MiB, writable: true });
  t.is((await fsop('getxattr', [mnt, 'user.test'])).errno, 'EOPNOTSUPP');
  t.is((await fsop('setxattr', [mnt, 'user.test', 'v'])).errno, 'EOPNOTSUPP');
  t.is((await fsop('listxattr', [mnt])).errno, 'EOPNOTSUPP');
  assertBytes(t, await readVia(mnt, 0, 16), Buffer.alloc(16), 'the export still serves');
});

eachTransport(test, 'readers interrupted mid-request (INTERRUPT, FORGET) do not disturb the export', async (t, ioUring) => {
  const data = pattern(4 * MiB, 17);
  const { mnt, exp } = await exported(t, { ioUring, size: 32 * MiB, extents: [[0, data]] });
  for (let i = 0; i < 6; i++) {
    const reader = startChild(t, ['dd', `if=${mnt}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', 'count=100000']);
    await sleep(40 + 20 * i);
    killGroup(reader.child, i % 2 ? 'SIGKILL' : 'SIGINT');
    const { code, signal } = await reader.wait(10_000);
    t.true(code !== null || signal !== null, 'the interrupted reader ended');
  }
  assertBytes(t, await readVia(mnt, 0, 4 * MiB), data, 'the export still serves the right bytes');
  const stopped = await stopExport(t, exp);
  t.is(stopped.reason, 'signal');
});

eachTransport(test, '--cache writeback serves the same bytes through the page cache', async (t, ioUring) => {
  const { mnt, image, exp } = await exported(t, { ioUring, size: 2 * MiB, writable: true, cache: 'writeback' });
  t.is(exp.ready.directIo, false, 'the image is not opened with O_DIRECT');
  const q = await qemuIo(mnt, ['write -P 0x3c 0 1M', 'read -P 0x3c 0 1M', 'write -P 0x3d 1049000 5000'], { cache: 'none' });
  t.true(q.ok, q.out);
  await stopExport(t, exp);
  const expected = Buffer.alloc(2 * MiB);
  expected.fill(0x3c, 0, MiB);
  expected.fill(0x3d, 1049000, 1049000 + 5000);
  assertBytes(t, readFile(image, 0, 2 * MiB), expected);
});

test.serial('--cache direct on a filesystem that refuses O_DIRECT (ramfs): a warning, then the page cache', async (t) => {
  const dir = tmpDir(t);
  const ram = join(dir, 'ram');
  mkdirSync(ram);
  await check(['mount', '-t', 'ramfs', 'ramfs', ram]);
  t.teardown(() => run(['umount', '-l', ram]));
  const image = makeImage(ram, 'disk.img', 2 * MiB);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, writable: true, cache: 'direct' });
  t.is(exp.ready.directIo, false);
  const q = await qemuIo(mnt, ['write -P 0x6a 0 256k', 'read -P 0x6a 0 256k'], { cache: 'none' });
  t.true(q.ok, q.out);
  await stopExport(t, exp);
  const warning = exp.lines.find((l) => l.level === 'warn' && /O_DIRECT/.test(l.message));
  t.truthy(warning, `the fallback is logged:\n${exp.stderr()}`);
  t.true(warning?.message.includes(image), 'the warning names the image');
  assertBytes(t, readFile(image, 0, 256 * KiB), Buffer.alloc(256 * KiB, 0x6a));
});

test.serial('a block device exports with its size, serves reads and writes, and cannot grow', async (t) => {
  const dir = tmpDir(t);
  const data = pattern(4 * MiB, 21);
  const backing = makeImage(dir, 'backing.img', 4 * MiB, [[0, data]]);
  const loop = await loopDevice(t, backing);
  const mnt = makeMountpoint(dir);

  const refused = await runCli(['--io-uring', 'off', '--writable', '--growable', loop, mnt]);
  t.is(refused.code, 1);
  t.regex(errorText(refused), /cannot grow/);
  assertUnmounted(t, mnt);

  const exp = await exportImage(t, { image: loop, mountpoint: mnt, writable: true });
  t.is(exp.ready.size, 4 * MiB, 'size from BLKGETSIZE64');
  t.is((await fsopOk('stat', [mnt])).size, 4 * MiB);
  assertBytes(t, await readVia(mnt, MiB, 64 * KiB), data.subarray(MiB, MiB + 64 * KiB));
  t.deepEqual(await writeVia(mnt, 8192, Buffer.alloc(4096, 0x99)), { ok: 4096 });
  t.is(await fsopOk('lseek', [mnt, 4096, 'data']), 4096, 'a block device is all data');
  t.is(await fsopOk('lseek', [mnt, 4096, 'hole']), 4 * MiB, 'its only hole is at the end');
  await stopExport(t, exp);
  await check(['blockdev', '--flushbufs', loop]);
  assertBytes(t, readFile(backing, 8192, 4096), Buffer.alloc(4096, 0x99), 'the write reached the device');
});
