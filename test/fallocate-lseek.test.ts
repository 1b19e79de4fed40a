// FALLOCATE (preallocate, punch hole, zero range) and LSEEK (SEEK_DATA /
// SEEK_HOLE) against the image's own allocation.
import test from 'ava';
import { closeSync, fsyncSync, openSync, writeFileSync } from 'node:fs';
import {
  assertBytes,
  eachTransport,
  exported,
  fileStat,
  fsop,
  fsopOk,
  KiB,
  MiB,
  pattern,
  PYTHON,
  readFile,
  readVia,
  run,
} from './helpers/index.js';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_COLLAPSE_RANGE = 0x08;
const FALLOC_FL_ZERO_RANGE = 0x10;
const FALLOC_FL_INSERT_RANGE = 0x20;

const fallocate = (path: string, mode: number, offset: number, length: number) => fsop('fallocate', [path, `0x${mode.toString(16)}`, offset, length]);

/** Makes sure the image's blocks are really allocated before counting them. */
function syncFile(path: string): void {
  const fd = openSync(path, 'r+');
  fsyncSync(fd);
  closeSync(fd);
}

eachTransport(test, 'FALLOCATE mode 0 inside the image is EOPNOTSUPP and changes nothing', async (t, ioUring) => {
  const data = pattern(2 * MiB, 12);
  const { mnt, image } = await exported(t, { ioUring, size: 2 * MiB, writable: true, growable: true, extents: [[0, data]] });
  t.is((await fallocate(mnt, 0, 0, 4096)).errno, 'EOPNOTSUPP');
  t.is((await fallocate(mnt, 0, MiB, 2 * MiB)).errno, 'EOPNOTSUPP', 'even when it reaches past EOF');
  const cli = await run(['fallocate', '-o', '4096', '-l', '4096', mnt]);
  t.not(cli.code, 0);
  t.regex(cli.stderr, /not supported/i);
  t.is(fileStat(image).size, 2 * MiB);
  assertBytes(t, readFile(image, 0, 2 * MiB), data);
});

eachTransport(test, 'FALLOCATE mode 0 at or after EOF grows the image', async (t, ioUring) => {
  const { mnt, image } = await exported(t, { ioUring, size: 2 * MiB, writable: true, growable: true });
  const before = fileStat(image).blocks;
  const at = await run(['fallocate', '-o', String(2 * MiB), '-l', String(MiB), mnt]);
  t.is(at.code, 0, at.stderr);
  t.is(fileStat(image).size, 3 * MiB, 'grown by the length');
  t.true(fileStat(image).blocks >= before + 2048, 'and the new range is allocated');
  t.is((await fsopOk('stat', [mnt])).size, 3 * MiB);
  t.deepEqual(await fallocate(mnt, 0, 4 * MiB, MiB), { ok: true }, 'past EOF');
  t.is(fileStat(image).size, 5 * MiB);
  assertBytes(t, await readVia(mnt, 2 * MiB, 64 * KiB), Buffer.alloc(64 * KiB), 'the new range reads as zeroes');
});

eachTransport(test, 'PUNCH_HOLE|KEEP_SIZE reads back as zeroes and frees the image blocks', async (t, ioUring) => {
  const data = pattern(4 * MiB, 13);
  const { mnt, image } = await exported(t, { ioUring, size: 4 * MiB, writable: true, extents: [[0, data]] });
  syncFile(image);
  const before = fileStat(image).blocks;
  t.true(before >= 8192, `the image starts fully allocated (${before} blocks)`);

  const punch = await run(['fallocate', '-p', '-o', String(MiB), '-l', String(MiB), mnt]);
  t.is(punch.code, 0, punch.stderr);
  syncFile(image);
  const freed = before - fileStat(image).blocks;
  t.true(freed >= 2048 - 8, `1 MiB of blocks freed in the image (${freed} blocks)`);
  t.is(fileStat(image).size, 4 * MiB, 'the size is kept');
  const expected = Buffer.from(data);
  expected.fill(0, MiB, 2 * MiB);
  assertBytes(t, await readVia(mnt, 0, 3 * MiB), expected.subarray(0, 3 * MiB), 'zeroes in the hole, data around it');
  assertBytes(t, readFile(image, 0, 4 * MiB), expected, 'the image agrees');
  t.is(await fsopOk('lseek', [mnt, 0, 'hole']), MiB, 'SEEK_HOLE finds the punched hole');

  t.deepEqual(await fallocate(mnt, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5 * MiB, MiB), { ok: true }, 'past EOF: nothing to do');
  t.is(fileStat(image).size, 4 * MiB);
});

eachTransport(test, 'PUNCH_HOLE without KEEP_SIZE is refused and punches nothing', async (t, ioUring) => {
  const data = pattern(2 * MiB, 14);
  const { mnt, image } = await exported(t, { ioUring, size: 2 * MiB, writable: true, extents: [[0, data]] });
  const answer = await fallocate(mnt, FALLOC_FL_PUNCH_HOLE, 0, MiB);
  // The export answers EINVAL; Linux's vfs_fallocate() refuses this mode with
  // EOPNOTSUPP before the request is sent, so either is what a caller sees.
  t.true(['EINVAL', 'EOPNOTSUPP'].includes(answer.errno ?? ''), JSON.stringify(answer));
  assertBytes(t, readFile(image, 0, 2 * MiB), data);
  t.is(fileStat(image).size, 2 * MiB);
});

eachTransport(test, 'ZERO_RANGE zeroes; it grows the image only without KEEP_SIZE', async (t, ioUring) => {
  const data = pattern(2 * MiB, 15);
  const { mnt, image } = await exported(t, { ioUring, size: 2 * MiB, writable: true, growable: true, extents: [[0, data]] });
  const zero = await run(['fallocate', '-z', '-o', String(64 * KiB), '-l', String(128 * KiB), mnt]);
  t.is(zero.code, 0, zero.stderr);
  const expected = Buffer.from(data);
  expected.fill(0, 64 * KiB, 192 * KiB);
  assertBytes(t, await readVia(mnt, 0, 256 * KiB), expected.subarray(0, 256 * KiB));
  assertBytes(t, readFile(image, 0, 2 * MiB), expected, 'in the image, and nothing else touched');
  t.is(fileStat(image).size, 2 * MiB);

  t.deepEqual(await fallocate(mnt, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 2 * MiB - 4096, MiB), { ok: true });
  t.is(fileStat(image).size, 2 * MiB, 'KEEP_SIZE: no growth');
  assertBytes(t, readFile(image, 2 * MiB - 4096, 4096), Buffer.alloc(4096), 'but the part inside is zeroed');

  t.deepEqual(await fallocate(mnt, FALLOC_FL_ZERO_RANGE, 2 * MiB - 4096, MiB), { ok: true });
  t.is(fileStat(image).size, 3 * MiB - 4096, 'without KEEP_SIZE the image grows');
  t.is((await fsopOk('stat', [mnt])).size, 3 * MiB - 4096);
});

eachTransport(test, 'ZERO_RANGE on tmpfs, which refuses it, writes zeroes instead', async (t, ioUring) => {
  const data = pattern(4 * MiB, 17);
  const { dir, mnt, image } = await exported(t, { ioUring, under: '/dev/shm', size: 4 * MiB, writable: true, growable: true, extents: [[0, data]] });
  const scratch = `${dir}/scratch`;
  writeFileSync(scratch, Buffer.alloc(8192));
  t.is((await fallocate(scratch, FALLOC_FL_ZERO_RANGE, 0, 4096)).errno, 'EOPNOTSUPP', 'the premise: tmpfs itself refuses ZERO_RANGE');

  // 3 MiB at an unaligned offset: more than one chunk of written zeroes.
  t.deepEqual(await fallocate(mnt, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 4096 + 512, 3 * MiB), { ok: true });
  const expected = Buffer.from(data);
  expected.fill(0, 4096 + 512, 4096 + 512 + 3 * MiB);
  assertBytes(t, readFile(image, 0, 4 * MiB), expected, 'zeroed exactly there, nothing else touched');
  t.deepEqual(await fallocate(mnt, FALLOC_FL_ZERO_RANGE, 4 * MiB - 4096, MiB), { ok: true }, 'again, now that the fallback is known');
  t.is(fileStat(image).size, 5 * MiB - 4096, 'without KEEP_SIZE the image grows');
  assertBytes(t, await readVia(mnt, 4 * MiB - 4096, MiB), Buffer.alloc(MiB));
});

eachTransport(test, 'other FALLOCATE modes are EOPNOTSUPP', async (t, ioUring) => {
  const data = pattern(MiB, 16);
  const { mnt, image } = await exported(t, { ioUring, size: MiB, writable: true, extents: [[0, data]] });
  t.is((await fallocate(mnt, FALLOC_FL_COLLAPSE_RANGE, 0, 64 * KiB)).errno, 'EOPNOTSUPP');
  t.is((await fallocate(mnt, FALLOC_FL_INSERT_RANGE, 0, 64 * KiB)).errno, 'EOPNOTSUPP');
  t.is((await fallocate(mnt, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096)).errno, 'EOPNOTSUPP');
  assertBytes(t, readFile(image, 0, MiB), data);
});

eachTransport(test, 'SEEK_DATA / SEEK_HOLE follow the image holes; ENXIO past the end', async (t, ioUring) => {
  const size = 8 * MiB;
  const { mnt, image } = await exported(t, {
    ioUring,
    size,
    extents: [
      [MiB, pattern(MiB, 1)],
      [5 * MiB, pattern(MiB, 2)],
    ],
  });
  syncFile(image);
  const cases: [number, 'data' | 'hole', number | string][] = [
    [0, 'data', MiB],
    [0, 'hole', 0],
    [MiB, 'data', MiB],
    [MiB + 4096, 'hole', 2 * MiB],
    [2 * MiB, 'data', 5 * MiB],
    [5 * MiB, 'hole', 6 * MiB],
    [6 * MiB, 'hole', 6 * MiB],
    [7 * MiB, 'hole', 7 * MiB],
    [6 * MiB, 'data', 'ENXIO'],
    [size, 'data', 'ENXIO'],
    [size, 'hole', 'ENXIO'],
    [size + MiB, 'data', 'ENXIO'],
    [size + MiB, 'hole', 'ENXIO'],
  ];
  // The oracle: the same seeks on the image file itself.
  const oracle = await run([
    PYTHON,
    '-c',
    `import os, sys, json
fd = os.open(sys.argv[1], os.O_RDONLY)
out = []
for off, how in json.loads(sys.argv[2]):
    try: out.append(os.lseek(fd, off, os.SEEK_DATA if how == 'data' else os.SEEK_HOLE))
    except OSError as e: out.append('ENXIO' if e.errno == 6 else e.errno)
print(json.dumps(out))`,
    image,
    JSON.stringify(cases.map(([o, w]) => [o, w])),
  ]);
  const onImage = JSON.parse(oracle.stdout);
  for (const [index, [offset, whence, expected]] of cases.entries()) {
    const answer = await fsop('lseek', [mnt, offset, whence]);
    const got = 'ok' in answer ? answer.ok : answer.errno;
    t.is(got, expected, `SEEK_${whence.toUpperCase()} from ${offset}`);
    t.is(got, onImage[index], `SEEK_${whence.toUpperCase()} from ${offset} agrees with the image`);
  }
});
