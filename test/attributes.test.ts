// GETATTR, SETATTR (size, mode, ownership, times), OPEN with O_TRUNC, and
// what allow-other means for other users.
import test from 'ava';
import {
  assertBytes,
  eachTransport,
  exported,
  fileStat,
  fsop,
  fsopOk,
  MiB,
  mountOn,
  NOBODY,
  pattern,
  readFile,
  readVia,
  run,
  writeVia,
} from './helpers/index.js';

eachTransport(test, 'GETATTR: ino 1, S_IFREG|0600, nlink 1, our uid/gid, image size, allocated blocks', async (t, ioUring) => {
  const size = 8 * MiB + 512;
  const { mnt, image } = await exported(t, { ioUring, size, writable: true, extents: [[MiB, pattern(MiB)]] });
  const st = await fsopOk('stat', [mnt]);
  t.is(st.ino, 1);
  t.is(st.mode, 0o100600);
  t.is(st.nlink, 1);
  t.is(st.uid, process.getuid!(), 'uid of the exporting process');
  t.is(st.gid, process.getgid!(), 'gid of the exporting process');
  t.is(st.size, size);
  t.is(st.blocks, fileStat(image).blocks, 'blocks = allocated bytes / 512 of the sparse image');
  t.true(st.blocks >= 2048 && st.blocks < size / 512, `a sparse image: ${st.blocks} blocks`);
});

eachTransport(test, 'SETATTR size: truncate grows and shrinks the image', async (t, ioUring) => {
  const data = pattern(4 * MiB, 2);
  const { mnt, image } = await exported(t, { ioUring, size: 4 * MiB, writable: true, extents: [[0, data]] });

  let tr = await run(['truncate', '-s', String(6 * MiB), mnt]);
  t.is(tr.code, 0, tr.stderr);
  t.is(fileStat(image).size, 6 * MiB, 'the image grew');
  t.is((await fsopOk('stat', [mnt])).size, 6 * MiB);
  assertBytes(t, await readVia(mnt, 4 * MiB, 8192), Buffer.alloc(8192), 'the new part reads as zeroes');

  tr = await run(['truncate', '-s', String(MiB + 5), mnt]);
  t.is(tr.code, 0, tr.stderr);
  t.is(fileStat(image).size, MiB + 5, 'the image shrank');
  t.is((await fsopOk('stat', [mnt])).size, MiB + 5);
  assertBytes(t, readFile(image, 0, 2 * MiB), data.subarray(0, MiB + 5), 'what is left is intact');
  const tail = await readVia(mnt, MiB, 4096);
  assertBytes(t, tail, data.subarray(MiB, MiB + 5), 'reads stop at the new end');

  t.deepEqual(await fsop('ftruncate', [mnt, 2 * MiB]), { ok: true }, 'ftruncate on an open file');
  t.is(fileStat(image).size, 2 * MiB);
});

eachTransport(test, 'SETATTR size on a read-only export fails (EACCES/EROFS) and leaves the image', async (t, ioUring) => {
  const { mnt, image } = await exported(t, { ioUring, size: 4 * MiB });
  const answer = await fsop('truncate', [mnt, MiB]);
  t.true(['EACCES', 'EROFS'].includes(answer.errno ?? ''), JSON.stringify(answer));
  const tr = await run(['truncate', '-s', String(8 * MiB), mnt]);
  t.not(tr.code, 0);
  t.is(fileStat(image).size, 4 * MiB);
});

eachTransport(test, 'SETATTR mode without allow-other: group/other bits EPERM, owner bits allowed', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'off' });
  t.is((await fsop('chmod', [mnt, '644'])).errno, 'EPERM');
  t.is((await fsop('chmod', [mnt, '604'])).errno, 'EPERM');
  t.is((await fsop('chmod', [mnt, '660'])).errno, 'EPERM');
  t.is((await fsopOk('stat', [mnt])).mode, 0o100600, 'refused modes changed nothing');
  t.deepEqual(await fsop('chmod', [mnt, '700']), { ok: true });
  t.is((await fsopOk('stat', [mnt])).mode, 0o100700, 'the new mode is reported');
  t.deepEqual(await fsop('chmod', [mnt, '400']), { ok: true });
  t.is((await fsopOk('stat', [mnt])).mode, 0o100400);
});

eachTransport(test, 'SETATTR mode with allow-other: group/other bits allowed', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'on' });
  t.deepEqual(await fsop('chmod', [mnt, '644']), { ok: true });
  t.is((await fsopOk('stat', [mnt])).mode, 0o100644);
  t.deepEqual(await fsop('chmod', [mnt, '666']), { ok: true });
  t.is((await fsopOk('stat', [mnt])).mode, 0o100666);
});

eachTransport(test, 'SETATTR mode on a read-only export: any write bit is EROFS', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, size: MiB, allowOther: 'on' });
  t.is((await fsop('chmod', [mnt, '600'])).errno, 'EROFS');
  t.is((await fsop('chmod', [mnt, '644'])).errno, 'EROFS');
  t.is((await fsopOk('stat', [mnt])).mode, 0o100400);
});

eachTransport(test, 'SETATTR uid/gid: EOPNOTSUPP without allow-other, applied with it', async (t, ioUring) => {
  const without = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'off' });
  t.is((await fsop('chown', [without.mnt, NOBODY.uid, NOBODY.gid])).errno, 'EOPNOTSUPP');
  t.is((await fsopOk('stat', [without.mnt])).uid, process.getuid!());

  const withOther = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'on' });
  t.deepEqual(await fsop('chown', [withOther.mnt, NOBODY.uid, NOBODY.gid]), { ok: true });
  const st = await fsopOk('stat', [withOther.mnt]);
  t.is(st.uid, NOBODY.uid);
  t.is(st.gid, NOBODY.gid);
});

eachTransport(test, 'SETATTR of other attributes (times) is EOPNOTSUPP', async (t, ioUring) => {
  const { mnt } = await exported(t, { ioUring, size: MiB, writable: true });
  t.is((await fsop('utime', [mnt, 1_000_000])).errno, 'EOPNOTSUPP');
});

eachTransport(test, 'OPEN with O_TRUNC empties a growable export', async (t, ioUring) => {
  const { mnt, image } = await exported(t, {
    ioUring,
    size: 2 * MiB,
    writable: true,
    growable: true,
    extents: [[0, pattern(2 * MiB)]],
  });
  t.deepEqual(await fsop('open', [mnt, 'trunc']), { ok: true });
  t.is(fileStat(image).size, 0, 'the image is empty');
  t.is((await fsopOk('stat', [mnt])).size, 0);
  const sh = await run(['sh', '-c', 'printf hello > "$1"', 'sh', mnt]);
  t.is(sh.code, 0, sh.stderr);
  t.is(fileStat(image).size, 5);
  assertBytes(t, readFile(image, 0, 100), Buffer.from('hello'));
});

eachTransport(test, 'OPEN with O_TRUNC is ignored on a fixed-size export', async (t, ioUring) => {
  const data = pattern(2 * MiB, 4);
  const { mnt, image } = await exported(t, { ioUring, size: 2 * MiB, writable: true, extents: [[0, data]] });
  const sh = await run(['sh', '-c', ': > "$1"', 'sh', mnt]);
  t.is(sh.code, 0, sh.stderr);
  t.deepEqual(await fsop('open', [mnt, 'rwtrunc']), { ok: true });
  t.is(fileStat(image).size, 2 * MiB, 'the image keeps its size');
  t.is((await fsopOk('stat', [mnt])).size, 2 * MiB);
  assertBytes(t, readFile(image, 0, 2 * MiB), data, 'and its bytes');
});

eachTransport(test, 'allow-other off: another user gets EACCES, and no mode change lets them in', async (t, ioUring) => {
  const { mnt, exp } = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'off' });
  t.false(exp.ready.allowOther);
  t.false(mountOn(mnt)!.superOptions.includes('allow_other'), 'mounted without allow_other');
  t.is((await fsop('read', [mnt, 0, 16], { user: NOBODY })).errno, 'EACCES');
  t.is((await fsop('stat', [mnt], { user: NOBODY })).errno, 'EACCES');
  t.is((await fsop('chmod', [mnt, '644'])).errno, 'EPERM');
  t.is((await fsop('read', [mnt, 0, 16], { user: NOBODY })).errno, 'EACCES', 'still shut out');
  t.is((await fsop('read', [mnt, 0, 16])).ok, '00'.repeat(16), 'the owner reads');
});

eachTransport(test, 'allow-other on: other users follow the file mode', async (t, ioUring) => {
  const data = pattern(MiB, 8);
  const { mnt, image, exp } = await exported(t, { ioUring, size: MiB, writable: true, allowOther: 'on', extents: [[0, data]] });
  t.true(exp.ready.allowOther);
  t.true(mountOn(mnt)!.superOptions.includes('allow_other'), 'mounted with allow_other');
  t.is((await fsop('read', [mnt, 0, 16], { user: NOBODY })).errno, 'EACCES', 'mode 0600 keeps them out');

  t.deepEqual(await fsop('chmod', [mnt, '644']), { ok: true });
  assertBytes(t, await readVia(mnt, 4096, 4096, { user: NOBODY }), data.subarray(4096, 8192), 'nobody reads the image');
  t.is((await writeVia(mnt, 0, Buffer.from('x'), { user: NOBODY })).errno, 'EACCES', 'but may not write');

  t.deepEqual(await fsop('chmod', [mnt, '666']), { ok: true });
  t.deepEqual(await writeVia(mnt, 0, Buffer.from('nobody'), { user: NOBODY }), { ok: 6 });
  assertBytes(t, readFile(image, 0, 6), Buffer.from('nobody'));
});
