// FUSE passthrough: the kernel reads, writes and maps the image itself, so
// READ and WRITE never reach the export; everything else still does, and
// the contract holds. Both transports carry the requests that remain.
import test from 'ava';
import {
  assertBytes,
  eachTransport,
  errorText,
  exported,
  exportImage,
  fileStat,
  fsop,
  fsopOk,
  KiB,
  loopDevice,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  readFile,
  readVia,
  runCli,
  stopExport,
  tmpDir,
  writeVia,
} from './helpers/index.js';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

eachTransport(test, 'a read-only export: the kernel reads the image itself, no READ reaches the export', async (t, ioUring) => {
  const data = pattern(8 * MiB, 21);
  const { mnt, exp } = await exported(t, { ioUring, passthrough: 'on', size: 8 * MiB, extents: [[0, data]] });
  t.true(exp.ready.passthrough, 'the ready event says so');
  const transport = exp.lines.find((l) => l.event === 'transport')!;
  t.true(transport.passthrough);
  t.regex(String(transport.passthroughReason), /kernel reads and writes the image itself/);
  assertBytes(t, await readVia(mnt, 0, 8 * MiB), data, 'buffered reads');
  assertBytes(t, await readVia(mnt, 4096, 64 * KiB, { how: 'rdirect' }), data.subarray(4096, 4096 + 64 * KiB), 'O_DIRECT reads');
  const stopped = await stopExport(t, exp);
  t.is(stopped.bytesRead, 0, 'not a byte of it went through the export');
  t.true(stopped.passthrough, 'the stopped event says passthrough carried the data');
});

eachTransport(test, 'a growable export: writes, growth, mmap, fsync, truncate, punch hole and SEEK_DATA hold', async (t, ioUring) => {
  const data = pattern(4 * MiB, 22);
  const { mnt, image, exp } = await exported(t, {
    ioUring,
    passthrough: 'on',
    format: 'raw',
    writable: true,
    growable: true,
    size: 4 * MiB,
    extents: [[0, data]],
  });
  t.true(exp.ready.passthrough);
  const patch = pattern(64 * KiB, 23);
  t.deepEqual(await writeVia(mnt, 128 * KiB, patch), { ok: patch.length });
  assertBytes(t, readFile(image, 128 * KiB, 64 * KiB), patch, 'the write is in the image');

  const tail = pattern(8 * KiB, 24);
  t.deepEqual(await writeVia(mnt, 4 * MiB + 4 * KiB, tail), { ok: tail.length }, 'past the end');
  t.is(fileStat(image).size, 4 * MiB + 12 * KiB, 'the image grew');
  t.is((await fsopOk('stat', [mnt])).size, 4 * MiB + 12 * KiB, 'and GETATTR reports the grown size');
  assertBytes(t, await readVia(mnt, 4 * MiB, 12 * KiB), Buffer.concat([Buffer.alloc(4 * KiB), tail]));

  const mapped = Buffer.from('mapped bytes');
  t.is(await fsopOk('mmapwrite', [mnt, 8192 + 3, mapped.toString('hex')]), data.subarray(8195, 8195 + mapped.length).toString('hex'));
  assertBytes(t, readFile(image, 8195, mapped.length), mapped, 'a shared mapping writes the image');
  t.deepEqual(await fsop('fsync', [mnt, 'abcd']), { ok: true });

  t.deepEqual(await fsop('fallocate', [mnt, `0x${(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).toString(16)}`, MiB, MiB]), { ok: true });
  assertBytes(t, await readVia(mnt, MiB, MiB), Buffer.alloc(MiB), 'a punched hole reads as zeroes');
  t.is(await fsopOk('lseek', [mnt, MiB, 'data']), 2 * MiB, 'SEEK_DATA skips the hole');

  t.deepEqual(await fsop('truncate', [mnt, 3 * MiB]), { ok: true });
  t.is(fileStat(image).size, 3 * MiB);
  t.is((await fsopOk('stat', [mnt])).size, 3 * MiB);
  const stopped = await stopExport(t, exp);
  t.is(stopped.bytesWritten, 0, 'no WRITE reached the export');
});

eachTransport(test, 'a writable image probed as raw keeps the FUSE path: auto says why (the qcow2 header rule)', async (t, ioUring) => {
  const { exp } = await exported(t, { ioUring, passthrough: 'auto', writable: true, growable: true, size: MiB });
  t.false(exp.ready.passthrough);
  t.regex(String(exp.lines.find((l) => l.event === 'transport')!.passthroughReason), /probed as raw/);
  await stopExport(t, exp);
});

eachTransport(test, 'a block device keeps the FUSE path (the kernel passes through to regular files only): auto says why, on refuses', async (t, ioUring) => {
  const dir = tmpDir(t);
  const loop = await loopDevice(t, makeImage(dir, 'backing.img', MiB));
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: loop, mountpoint: mnt, ioUring, passthrough: 'auto' });
  t.false(exp.ready.passthrough);
  t.regex(String(exp.lines.find((l) => l.event === 'transport')!.passthroughReason), /regular files only/);
  t.falsy(exp.lines.find((l) => l.level === 'warn'), 'a decision, not a fallback to warn about');
  await stopExport(t, exp);

  const refused = await runCli(['--passthrough', 'on', loop, mnt]);
  t.is(refused.code, 1);
  t.regex(errorText(refused), /--passthrough on, but the kernel passes through to regular files only/);
});

eachTransport(test, 'a fixed-size writable export keeps the FUSE path: auto says why, on refuses', async (t, ioUring) => {
  const data = pattern(MiB, 25);
  const { mnt, image, exp } = await exported(t, { ioUring, passthrough: 'auto', format: 'raw', writable: true, size: MiB, extents: [[0, data]] });
  t.false(exp.ready.passthrough);
  t.regex(String(exp.lines.find((l) => l.event === 'transport')!.passthroughReason), /fixed-size writable image/);
  t.deepEqual(await writeVia(mnt, MiB - 4096, pattern(8192, 26)), { ok: 4096 }, 'a write across the end is still short');
  t.is(fileStat(image).size, MiB);
  await stopExport(t, exp);

  const dir = tmpDir(t);
  const refused = await runCli(['--writable', '--format', 'raw', '--passthrough', 'on', makeImage(dir, 'disk.img', MiB), makeMountpoint(dir)]);
  t.is(refused.code, 1);
  t.regex(errorText(refused), /--passthrough on, but a fixed-size writable image/);
});
