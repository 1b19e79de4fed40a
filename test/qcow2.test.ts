// qcow2 images: format probing and --format, backing chains read and
// written with copy-on-write, every request of the contract checked against
// QEMU's own tools (qemu-img convert / check / compare / map), locks,
// QEMU's probing rule, bad images.
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, readFileSync, rmSync, writeFileSync, openSync, writeSync, closeSync, ftruncateSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  assertBytes,
  check,
  digest,
  eachTransport,
  errorText,
  exportImage,
  fileStat,
  fio,
  fsop,
  fsopOk,
  type IoUring,
  KiB,
  loopMount,
  loopsOf,
  makeImage,
  makeMountpoint,
  makeQcow2,
  MiB,
  pattern,
  qemuCheck,
  qemuCompare,
  qemuInfo,
  qemuMap,
  qemuWrite,
  readFile,
  readVia,
  run,
  runCli,
  startChild,
  PYTHON,
  FSOP,
  sleep,
  stopExport,
  tmpDir,
  toRaw,
  waitUntil,
  writeVia,
} from './helpers/index.js';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

/** Writes `data` at `offset` into a plain file (a raw reference). */
function writeAt(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/**
 * base.qcow2 (data, a zeroed range) <- mid.qcow2 (data, a compressed
 * cluster) <- top.qcow2 (data): 64 MiB with 64 KiB clusters, qcow2 v3
 * unless `options` says otherwise (compat=0.10: v2).
 */
async function chain(dir: string, options?: string): Promise<{ base: string; mid: string; top: string }> {
  const base = await makeQcow2(dir, 'base.qcow2', 64 * MiB, { options });
  await qemuWrite(base, ['write -P 0x11 0 2M', 'write -P 0x22 3M 100k', 'write -P 0x23 40M 1M', 'write -z 40M 64k']);
  const mid = await makeQcow2(dir, 'mid.qcow2', 64 * MiB, { backing: 'base.qcow2', options });
  await qemuWrite(mid, ['write -P 0x33 1M 8k', 'write -c -P 0x44 8M 64k', 'write -P 0x45 20M 3M']);
  const top = await makeQcow2(dir, 'top.qcow2', 64 * MiB, { backing: 'mid.qcow2', options });
  await qemuWrite(top, ['write -P 0x55 512k 4k', 'write -P 0x56 21M 100k']);
  return { base, mid, top };
}

eachTransport(test, 'a qcow2 chain reads as qemu-img convert -O raw sees it; a read-only export changes no file', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { base, mid, top } = await chain(dir);
  const reference = await toRaw(top, dir);
  const before = [digest(base), digest(mid), digest(top)];
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: top, mountpoint: mnt, ioUring });
  t.is(exp.ready.format, 'qcow2');
  t.is(exp.ready.size, 64 * MiB, 'size is the virtual size');
  t.is(fileStat(mnt).size, 64 * MiB);
  const cmp = await run(['cmp', mnt, reference]);
  t.is(cmp.code, 0, `exported bytes differ from qemu-img convert: ${cmp.stdout}${cmp.stderr}`);
  assertBytes(t, await readVia(mnt, 8 * MiB + 4 * KiB, 4 * KiB, { how: 'rdirect' }), Buffer.alloc(4 * KiB, 0x44), 'compressed');
  assertBytes(t, await readVia(mnt, 40 * MiB, 4 * KiB), Buffer.alloc(4 * KiB), 'zero cluster in the base');
  assertBytes(t, await readVia(mnt, 40 * MiB + 64 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x23), 'base data');
  t.regex((await writeVia(mnt, 0, 'x')).errno ?? '', /^(EACCES|EROFS)$/, 'read-only');
  await stopExport(t, exp);
  t.deepEqual([digest(base), digest(mid), digest(top)], before, 'no file of the chain was modified');
});

for (const [version, options] of [['v3', undefined], ['v2', 'compat=0.10']] as const) {
eachTransport(test, `qcow2 ${version}: writes go to the top image with copy-on-write; qemu-img check and compare agree; backing files unchanged`, async (t, ioUring) => {
  const dir = tmpDir(t);
  const { base, mid, top } = await chain(dir, options);
  const reference = await toRaw(top, dir);
  const before = [digest(base), digest(mid)];
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: top, mountpoint: mnt, ioUring, writable: true });
  // Unaligned and cluster-spanning writes over backing data, zeroes,
  // compressed data, top data and unallocated space; O_DIRECT and not.
  const writes: [number, number, number, string?][] = [
    [1, 1, 1],
    [64 * KiB - 100, 300, 2],
    [1 * MiB + 4 * KiB, 4 * KiB, 3, 'direct'],
    [3 * MiB + 50 * KiB, 200 * KiB, 4],
    [8 * MiB + 8 * KiB, 8 * KiB, 5, 'direct'],
    [20 * MiB - 12 * KiB, 1 * MiB + 24 * KiB, 6],
    [40 * MiB + 32 * KiB, 64 * KiB, 7, 'direct'],
    [50 * MiB + 123, 777 * KiB, 8],
    [64 * MiB - 4 * KiB, 4 * KiB, 9, 'direct'],
  ];
  for (const [offset, length, seed, how] of writes) {
    const data = pattern(length, seed);
    const answer = await writeVia(mnt, offset, data, { how });
    t.deepEqual(answer, { ok: length }, `write of ${length} at ${offset}`);
    writeAt(reference, offset, data);
  }
  const cmp = await run(['cmp', mnt, reference]);
  t.is(cmp.code, 0, `read back through the export: ${cmp.stdout}${cmp.stderr}`);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  const checked = await qemuCheck(top);
  t.is(checked.code, 0, checked.out);
  const compared = await qemuCompare(top, reference);
  t.is(compared.code, 0, compared.out);
  t.deepEqual([digest(base), digest(mid)], before, 'the backing files are unchanged');
  const specific = (await qemuInfo(top))['format-specific'] as { data?: { compat?: string } } | undefined;
  t.is(specific?.data?.compat, options ? '0.10' : '1.1', 'the image keeps its version');
});
}

/**
 * fio with crc32c verify (4 KiB, O_DIRECT, io_uring) through a writable
 * export of a fresh qcow2 made with `options`, running `job` (fio's job
 * options); then the export's counters and qemu-img check.
 */
async function verifyOnFresh(t: ExecutionContext, ioUring: IoUring, size: number, options: string, job: string[]) {
  const dir = tmpDir(t);
  const image = await makeQcow2(dir, 'fresh.qcow2', size, { options });
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  const result = await fio(
    [`--filename=${mnt}`, '--ioengine=io_uring', '--direct=1', '--bs=4k', '--verify=crc32c', '--verify_fatal=1', ...job],
    { timeout: 180_000 },
  );
  t.is(result.code, 0, `${result.stdout}${result.stderr}`);
  t.regex(result.stdout, /err= 0/);
  t.notRegex(result.stdout + result.stderr, /verify: bad|verify failed/);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  const checked = await qemuCheck(image);
  t.is(checked.code, 0, checked.out);
}

eachTransport(test, 'fio: 2 jobs x iodepth 16 random 4k writes with crc32c verify on a fresh, unallocated qcow2', async (t, ioUring) => {
  const perJob = 16 * MiB;
  await verifyOnFresh(t, ioUring, 2 * perJob, 'cluster_size=65536', [
    '--name=verify', '--rw=randwrite', `--size=${perJob}`, `--offset_increment=${perJob}`, '--numjobs=2', '--iodepth=16',
    '--randrepeat=1', '--group_reporting',
  ]);
});

eachTransport(test, 'small clusters, 512 L2 tables for a cache of 128: misses and evictions on every path, crc32c verify', async (t, ioUring) => {
  await verifyOnFresh(t, ioUring, 1024 * MiB, 'cluster_size=4096', [
    '--name=spread', '--rw=randwrite', '--size=1G', '--io_size=8M', '--iodepth=16', '--randrepeat=1',
  ]);
});

eachTransport(test, 'concurrent writes into the same unallocated clusters lose nothing', async (t, ioUring) => {
  // 4 KiB writes, 16 per 64 KiB cluster, all in flight at once, from 2 jobs on interleaved blocks.
  await verifyOnFresh(t, ioUring, 8 * MiB, 'cluster_size=65536', [
    '--name=race', '--rw=write:4k', '--size=4M', '--offset_increment=4k', '--numjobs=2', '--iodepth=32', '--group_reporting',
  ]);
});

eachTransport(test, 'punch hole discards, zero range zeroes, SEEK_DATA / SEEK_HOLE follow the chain', async (t, ioUring) => {
  const dir = tmpDir(t);
  const base = await makeQcow2(dir, 'base.qcow2', 16 * MiB);
  await qemuWrite(base, ['write -P 0x11 2M 1M']);
  const top = await makeQcow2(dir, 'top.qcow2', 16 * MiB, { backing: 'base.qcow2' });
  await qemuWrite(top, ['write -P 0x22 8M 1M', 'write -P 0x23 12M 64k']);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: top, mountpoint: mnt, ioUring, writable: true });
  t.is(await fsopOk('lseek', [mnt, 0, 'data']), 2 * MiB, 'data in the base');
  t.is(await fsopOk('lseek', [mnt, 2 * MiB, 'hole']), 3 * MiB);
  t.is(await fsopOk('lseek', [mnt, 3 * MiB, 'data']), 8 * MiB, 'data in the top');
  t.is(await fsopOk('lseek', [mnt, 13 * MiB, 'hole']), 13 * MiB);
  t.is((await fsop('lseek', [mnt, 13 * MiB, 'data'])).errno, 'ENXIO', 'no data after the last');
  t.is((await fsop('lseek', [mnt, 16 * MiB, 'hole'])).errno, 'ENXIO', 'past the end');

  const fallocate = (mode: number, offset: number, length: number) =>
    fsop('fallocate', [mnt, `0x${mode.toString(16)}`, offset, length]);
  t.deepEqual(await fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * MiB, 512 * KiB), { ok: true });
  t.deepEqual(await fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB, 256 * KiB), { ok: true }, 'over backing data');
  t.deepEqual(await fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 12 * MiB + 4 * KiB, 8 * KiB), { ok: true }, 'part of a cluster');
  assertBytes(t, await readVia(mnt, 8 * MiB, 512 * KiB), Buffer.alloc(512 * KiB), 'the hole reads zero');
  assertBytes(t, await readVia(mnt, 8 * MiB + 512 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x22), 'data after it stays');
  assertBytes(t, await readVia(mnt, 2 * MiB, 256 * KiB), Buffer.alloc(256 * KiB), 'the backing data no longer shows');
  assertBytes(t, await readVia(mnt, 2 * MiB + 256 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x11));
  const zeroed = await readVia(mnt, 12 * MiB, 64 * KiB);
  const expected = Buffer.alloc(64 * KiB, 0x23);
  expected.fill(0, 4 * KiB, 12 * KiB);
  assertBytes(t, zeroed, expected, 'zero range inside a cluster');
  t.is(await fsopOk('lseek', [mnt, 8 * MiB, 'data']), 8 * MiB + 512 * KiB, 'SEEK_DATA skips the discarded clusters');
  await stopExport(t, exp);
  const map = await qemuMap(top);
  const hole = map.find((e) => e.start <= 8 * MiB && 8 * MiB < e.start + e.length);
  t.is(hole?.data, false, `qemu-img map shows the hole: ${JSON.stringify(hole)}`);
  t.is(hole?.zero, true);
  const checked = await qemuCheck(top);
  t.is(checked.code, 0, checked.out);
});

eachTransport(test, '--growable: a write past the end grows the virtual size; truncate grows; shrinking is EOPNOTSUPP', async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = await makeQcow2(dir, 'grow.qcow2', 4 * MiB);
  await qemuWrite(image, ['write -P 0x31 0 4M']);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true, growable: true });
  const data = pattern(64 * KiB, 3);
  t.deepEqual(await writeVia(mnt, 5 * MiB, data), { ok: data.length });
  t.is((await fsopOk('stat', [mnt])).size, 5 * MiB + 64 * KiB);
  assertBytes(t, await readVia(mnt, 4 * MiB, MiB), Buffer.alloc(MiB), 'the gap reads as zeroes');
  t.deepEqual(await fsop('truncate', [mnt, 8 * MiB]), { ok: true });
  t.is((await fsopOk('stat', [mnt])).size, 8 * MiB);
  t.is((await fsop('truncate', [mnt, 2 * MiB])).errno, 'EOPNOTSUPP');
  t.is((await fsop('truncate', [mnt, 9 * MiB + 100])).errno, 'EINVAL', 'qcow2 sizes are whole sectors');
  t.deepEqual(await writeVia(mnt, 8 * MiB + 1000, 'tail'), { ok: 4 });
  t.is((await fsopOk('stat', [mnt])).size, 8 * MiB + 1024, 'grown to the next sector boundary');
  await stopExport(t, exp);
  t.is((await qemuInfo(image))['virtual-size'], 8 * MiB + 1024, 'the header says so');
  const checked = await qemuCheck(image);
  t.is(checked.code, 0, checked.out);
  const raw = await toRaw(image, dir);
  assertBytes(t, readFile(raw, 5 * MiB, data.length), data);
});

eachTransport(test, 'a partitioned ext4 disk as a qcow2 overlay: fdisk, loop mount, files read and written; check clean, base unchanged', async (t, ioUring) => {
  const dir = tmpDir(t);
  const disk = makeImage(dir, 'disk.raw', 64 * MiB);
  await check(['sfdisk', '-q', disk], { input: 'label: dos\nstart=2048, type=83\n' });
  const src = join(dir, 'src');
  mkdirSync(src);
  const old = pattern(300_000, 41);
  writeFileSync(join(src, 'old.bin'), old);
  // The partition's filesystem, made in place (offset 1 MiB, 63 MiB long), holding old.bin.
  await check(['mkfs.ext4', '-q', '-F', '-d', src, '-E', `offset=${MiB}`, disk, '64512k'], { timeout: 60_000 });
  const base = join(dir, 'base.qcow2');
  await check(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', disk, base]);
  const overlay = await makeQcow2(dir, 'overlay.qcow2', 64 * MiB, { backing: 'base.qcow2' });
  const baseDigest = digest(base);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: overlay, mountpoint: mnt, ioUring, writable: true });
  const fdisk = await check(['fdisk', '-l', mnt]);
  t.regex(fdisk.stdout, /mnt1\s+2048\s+131071\s+129024/, fdisk.stdout);
  const fs = join(dir, 'fs');
  await loopMount(t, mnt, fs, `loop,offset=${MiB}`);
  assertBytes(t, readFileSync(join(fs, 'old.bin')), old, 'a file from the base');
  const fresh = pattern(3 * MiB + 123, 42);
  writeFileSync(join(fs, 'new.bin'), fresh);
  await check(['umount', fs], { timeout: 60_000 });
  await waitUntil(async () => (await loopsOf(mnt)).length === 0, { what: 'the loop device to let go' });
  await stopExport(t, exp);
  const checked = await qemuCheck(overlay);
  t.is(checked.code, 0, checked.out);
  t.is(digest(base), baseDigest, 'the base is unchanged');
  const raw = await toRaw(overlay, dir, 'after.raw');
  const partition = join(dir, 'partition.raw');
  await check(['dd', `if=${raw}`, `of=${partition}`, 'bs=1M', 'skip=1', 'status=none']);
  const fsck = await run(['e2fsck', '-fn', partition], { timeout: 120_000 });
  t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  const direct = join(dir, 'direct');
  await loopMount(t, raw, direct, `loop,ro,offset=${MiB}`);
  assertBytes(t, readFileSync(join(direct, 'new.bin')), fresh, 'the new file is in the overlay');
  assertBytes(t, readFileSync(join(direct, 'old.bin')), old);
});

test.serial('--format: auto probes, qcow2 on a raw file is refused by name, raw shows the qcow2 file itself', async (t) => {
  const dir = tmpDir(t);
  const qcow2 = await makeQcow2(dir, 'disk.qcow2', 4 * MiB);
  const raw = makeImage(dir, 'disk.img', MiB, [[0, pattern(4096, 1)]]);
  const mnt = makeMountpoint(dir);
  const refused = await runCli(['--format', 'qcow2', raw, mnt]);
  t.is(refused.code, 1);
  t.regex(errorText(refused), /disk\.img.*not a qcow2 image/);
  const bad = await runCli(['--format', 'vmdk', raw, mnt]);
  t.is(bad.code, 1);
  const asRaw = await exportImage(t, { image: qcow2, mountpoint: mnt, format: 'raw' });
  t.is(asRaw.ready.format, 'raw');
  t.is(asRaw.ready.size, fileStat(qcow2).size, 'the file as it is');
  assertBytes(t, await readVia(mnt, 0, 4), Buffer.from('QFI\xfb', 'latin1'));
  await stopExport(t, asRaw);
  const auto = await exportImage(t, { image: raw, mountpoint: mnt });
  t.is(auto.ready.format, 'raw');
  await stopExport(t, auto);
});

test.serial('an image probed as raw refuses a write that plants a qcow2 header (EPERM); --format raw allows it', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  const header = Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(508)]);
  const probed = await exportImage(t, { image, mountpoint: mnt, writable: true });
  t.is((await writeVia(mnt, 0, header)).errno, 'EPERM');
  t.is((await writeVia(mnt, 0, Buffer.from('QF'))).ok, 2, 'half of it is fine');
  t.is((await writeVia(mnt, 2, Buffer.from('I\xfb', 'latin1'))).errno, 'EPERM', 'completing it is not');
  t.is((await writeVia(mnt, 4096, header)).ok, 512, 'elsewhere it is data');
  await stopExport(t, probed);
  t.notDeepEqual(readFile(image, 0, 4), Buffer.from('QFI\xfb', 'latin1'));
  const named = await exportImage(t, { image, mountpoint: mnt, writable: true, format: 'raw' });
  t.is((await writeVia(mnt, 0, header)).ok, 512);
  await stopExport(t, named);
  assertBytes(t, readFile(image, 0, 4), Buffer.from('QFI\xfb', 'latin1'));
});

test.serial('locks: a second writer (export or qemu-img) is refused by name; read-only exports share', async (t) => {
  const dir = tmpDir(t);
  const image = await makeQcow2(dir, 'disk.qcow2', 4 * MiB);
  const [first, second] = [makeMountpoint(dir, 'a'), makeMountpoint(dir, 'b')];
  const writer = await exportImage(t, { image, mountpoint: first, writable: true });
  const again = await runCli(['--writable', image, second]);
  t.is(again.code, 1);
  t.regex(errorText(again), /disk\.qcow2 is in use.*write/);
  const reader = await runCli([image, second]);
  t.is(reader.code, 1, 'a reader wants no writer either');
  const qemu = await run(['qemu-img', 'info', image]);
  t.not(qemu.code, 0, 'qemu-img is refused too');
  t.regex(qemu.stderr, /lock/);
  await stopExport(t, writer);
  const one = await exportImage(t, { image, mountpoint: first });
  const two = await exportImage(t, { image, mountpoint: second });
  t.is((await run(['qemu-img', 'info', image])).code, 0, 'qemu-img reads alongside');
  const qemuWriter = await run(['qemu-io', '-c', 'write 0 4k', image]);
  t.not(qemuWriter.code, 0, 'a QEMU writer is refused while we read');
  await stopExport(t, one);
  await stopExport(t, two);
});

test.serial('bad images end in exit 1 naming the file and the problem', async (t) => {
  const dir = tmpDir(t);
  const mnt = makeMountpoint(dir);
  const expectFailure = async (image: string, problem: RegExp, format = 'auto') => {
    const result = await runCli(['--format', format, image, mnt]);
    t.is(result.code, 1, `${image}: ${result.stderr}`);
    t.regex(errorText(result), problem);
  };
  const version = await makeQcow2(dir, 'version.qcow2', MiB);
  writeAt(version, 4, Buffer.from([0, 0, 0, 9]));
  await expectFailure(version, /version\.qcow2.*version is 9/);

  const gone = await makeQcow2(dir, 'gone.qcow2', MiB);
  const orphan = await makeQcow2(dir, 'orphan.qcow2', MiB, { backing: 'gone.qcow2' });
  rmSync(gone);
  await expectFailure(orphan, /orphan\.qcow2.*gone\.qcow2/);

  const a = await makeQcow2(dir, 'a.qcow2', MiB);
  await makeQcow2(dir, 'b.qcow2', MiB, { backing: 'a.qcow2' });
  await run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', a]);
  await expectFailure(a, /a\.qcow2.*loop/);

  const l1 = await makeQcow2(dir, 'l1.qcow2', MiB);
  await qemuWrite(l1, ['write 0 4k']);
  setEntry(l1, Number(readFile(l1, 40, 8).readBigUInt64BE()), 0x8000_0000_0001_0123n);
  await expectFailure(l1, /l1\.qcow2.*L1 entry/);

  const far = await makeQcow2(dir, 'far.qcow2', MiB);
  setEntry(far, 40, BigInt(64 * MiB));
  const overFar = await makeQcow2(dir, 'over-far.qcow2', MiB, { backing: 'far.qcow2' });
  await expectFailure(overFar, /far\.qcow2.*past the end of the file/);

  const truncated = await makeQcow2(dir, 'truncated.qcow2', 64 * MiB);
  const fd = openSync(truncated, 'r+');
  ftruncateSync(fd, 1024);
  closeSync(fd);
  await expectFailure(truncated, /truncated\.qcow2/);

  const short = join(dir, 'short.qcow2');
  writeFileSync(short, Buffer.from('QFI\xfb\0\0\0\x03', 'latin1'));
  await expectFailure(short, /short\.qcow2.*truncated/);
});

test.serial('refcounts that do not cover the image\'s own metadata: refused writable (imago would recurse until the stack overflows), served read-only', async (t) => {
  const dir = tmpDir(t);
  const mnt = makeMountpoint(dir);
  // The fuzzer's image (test/fixtures/README.md), and a qemu-img image whose first refcount table entry is gone.
  const found = join(dir, 'found.qcow2');
  writeFileSync(found, readFileSync(new URL('./fixtures/imago-refblock-recursion.qcow2', import.meta.url)));
  const cleared = await makeQcow2(dir, 'cleared.qcow2', MiB);
  setEntry(cleared, Number(readFile(cleared, 48, 8).readBigUInt64BE()), 0n);
  for (const image of [found, cleared]) {
    const before = readFileSync(image);
    const refused = await runCli(['--writable', image, mnt]);
    t.is(refused.code, 1, refused.stderr);
    t.regex(errorText(refused), /cannot be exported writable: no refcount block covers its header.*qemu-img check -r all/);
    const exp = await exportImage(t, { image, mountpoint: mnt });
    t.is((await fsop('read', [mnt, 0, 4096])).ok?.length, 8192, 'read-only, it serves');
    await stopExport(t, exp);
    t.deepEqual(readFileSync(image), before, 'and the image is unchanged');
  }
});

/** Sets the 8-byte big-endian table entry at `offset` of an image file. */
function setEntry(image: string, offset: number, value: bigint): void {
  const entry = Buffer.alloc(8);
  entry.writeBigUInt64BE(value);
  writeAt(image, offset, entry);
}

/** The file offset of the L2 table the first L1 entry names. */
function firstL2(image: string): number {
  const l1 = Number(readFile(image, 40, 8).readBigUInt64BE());
  return Number(readFile(image, l1, 8).readBigUInt64BE() & 0x00ff_ffff_ffff_fe00n);
}

eachTransport(test, 'a corrupt table entry gives EIO for the requests it maps, logged once; other requests and the stop go on', async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = await makeQcow2(dir, 'corrupt.qcow2', 2 * 1024 * MiB);
  await qemuWrite(image, ['write -P 0x61 0 64k', 'write -P 0x62 1536M 64k']);
  // The first L2 entry (guest 0 .. 64 KiB) gets reserved bits set.
  setEntry(image, firstL2(image), 0x8000_0000_0001_0123n);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring });
  t.is((await fsop('read', [mnt, 0, 4096])).errno, 'EIO');
  t.is((await fsop('read', [mnt, 4096, 4096])).errno, 'EIO');
  assertBytes(t, await readVia(mnt, 1536 * MiB, 4096), Buffer.alloc(4096, 0x62), 'the rest of the image serves');
  const stopped = await stopExport(t, exp);
  t.true(stopped.errors >= 2);
  const logged = exp.lines.filter((l) => l.event === 'image-error');
  t.is(logged.length, 1, 'logged once');
  t.regex(logged[0]?.message ?? '', /read failed at offset/);
});

/**
 * cut.qcow2 (64 KiB clusters): 0x11 at 0 .. 1 MiB, then 0x22 at 40 .. 41 MiB,
 * allocated in that order, then cut short in the middle of the cluster at
 * guest 40 MiB + 512 KiB, as an incomplete copy leaves it.
 */
async function cutShort(dir: string): Promise<string> {
  const image = await makeQcow2(dir, 'cut.qcow2', 64 * MiB);
  await qemuWrite(image, ['write -P 0x11 0 1M', 'write -P 0x22 40M 1M']);
  const host = (await qemuMap(image)).find((m) => m.start === 40 * MiB) as { offset: number } | undefined;
  if (host === undefined) throw new Error('qemu-img map shows no data at 40 MiB');
  truncateSync(image, host.offset + 512 * KiB + 4 * KiB);
  return image;
}

test.serial('a qcow2 cut short: clusters past the end of its file give EIO, logged once naming the file and the offsets, on the ring and in memory', async (t) => {
  for (const under of [tmpdir(), '/dev/shm']) {
    const dir = tmpDir(t, { under });
    const image = await cutShort(dir);
    const mnt = makeMountpoint(dir);
    const exp = await exportImage(t, { image, mountpoint: mnt });
    assertBytes(t, await readVia(mnt, 0, 4 * KiB), Buffer.alloc(4 * KiB, 0x11), 'before the cut');
    assertBytes(t, await readVia(mnt, 40 * MiB + 512 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x22), 'the part of the cut cluster the file holds');
    t.is((await fsop('read', [mnt, 40 * MiB + 512 * KiB, 64 * KiB])).errno, 'EIO', 'the cut cluster, whole');
    t.is((await fsop('read', [mnt, 40 * MiB + 768 * KiB, 4 * KiB])).errno, 'EIO', 'a cluster wholly past the end');
    t.is((await fsop('read', [mnt, 40 * MiB + 768 * KiB, 4 * KiB, 'rdirect'])).errno, 'EIO', 'the same with O_DIRECT');
    assertBytes(t, await readVia(mnt, 2 * MiB, 4 * KiB), Buffer.alloc(4 * KiB), 'unallocated clusters are zeroes');
    const stopped = await stopExport(t, exp);
    t.true(stopped.errors >= 3);
    const logged = exp.lines.filter((l) => l.event === 'image-error');
    t.is(logged.length, 1, 'logged once');
    t.regex(logged[0]?.message ?? '', /read failed at offset 4246732\d.*guest offset 4246732\d maps to host offset \d+ of .*cut\.qcow2, which ends at/);
  }
});

test.serial('in a chain: a cut qcow2 backing file gives EIO; a raw backing file shorter than the overlay reads zeroes past its end, as in QEMU; a compressed cluster ending the file reads', async (t) => {
  const dir = tmpDir(t);
  await cutShort(dir);
  const overCut = await makeQcow2(dir, 'over-cut.qcow2', 64 * MiB, { backing: 'cut.qcow2' });
  const raw = makeImage(dir, 'base.raw', MiB);
  writeAt(raw, 0, Buffer.alloc(MiB, 0x44));
  const overRaw = await makeQcow2(dir, 'over-raw.qcow2', 4 * MiB, { backing: 'base.raw', backingFormat: 'raw' });
  // Compressed last: the file ends inside the sector its length counts.
  await qemuWrite(overRaw, ['write -P 0x55 3M 64k', 'write -c -P 0x66 2M 64k']);
  t.not(fileStat(overRaw).size % 512, 0, 'the compressed cluster ends the file mid-sector');
  const [one, two] = [makeMountpoint(dir, 'a'), makeMountpoint(dir, 'b')];
  const cut = await exportImage(t, { image: overCut, mountpoint: one });
  const short = await exportImage(t, { image: overRaw, mountpoint: two });
  assertBytes(t, await readVia(one, 0, 4 * KiB), Buffer.alloc(4 * KiB, 0x11), 'backing data before the cut');
  t.is((await fsop('read', [one, 40 * MiB + 768 * KiB, 4 * KiB])).errno, 'EIO', 'backing data past the cut');
  assertBytes(t, await readVia(two, MiB - 4 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x44), 'the raw backing file');
  assertBytes(t, await readVia(two, MiB, 64 * KiB), Buffer.alloc(64 * KiB), 'past the raw backing file');
  assertBytes(t, await readVia(two, 2 * MiB, 64 * KiB), Buffer.alloc(64 * KiB, 0x66), 'the compressed cluster at the end');
  assertBytes(t, await readVia(two, 3 * MiB, 64 * KiB), Buffer.alloc(64 * KiB, 0x55), 'top data');
  t.true((await stopExport(t, cut)).errors >= 1);
  t.is((await stopExport(t, short)).errors, 0);
  t.regex(cut.lines.find((l) => l.event === 'image-error')?.message ?? '', /cut\.qcow2/);
});

test.serial('fsync on a qcow2 with an external data file syncs the data file, not only the qcow2 file (strace of the export)', async (t) => {
  const dir = tmpDir(t);
  const data = join(dir, 'data.raw');
  const image = await makeQcow2(dir, 'meta.qcow2', 4 * MiB, { options: `data_file=${data},data_file_raw=on` });
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, writable: true });
  // -y names each descriptor's file; -f -p follows every thread of the export.
  const log = join(dir, 'syncs.log');
  const strace = startChild(t, ['strace', '-f', '-y', '-e', 'trace=fsync,fdatasync', '-o', log, '-p', String(exp.pid)]);
  await strace.waitFor(/attached/);
  t.deepEqual(await fsop('write', [mnt, 64 * KiB, '-', 'rw', '1'], { input: pattern(4 * KiB, 3) }), { ok: 4 * KiB });
  strace.child.kill('SIGINT');
  await strace.wait();
  const synced = readFileSync(log, 'utf8');
  t.regex(synced, /f(data)?sync\(\d+<[^>]*meta\.qcow2>\) = 0/, 'the qcow2 file');
  t.regex(synced, /f(data)?sync\(\d+<[^>]*data\.raw>\) = 0/, 'the data file');
  await stopExport(t, exp);
  assertBytes(t, readFile(data, 64 * KiB, 4 * KiB), pattern(4 * KiB, 3), 'the data is in the data file');
});

/** Writes 64 KiB of 0x5a at argv[2] of the file argv[1] (O_DIRECT), says so, and keeps the file open. */
const WRITE_AND_HOLD = `
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 65536)
buf[:] = b'\\x5a' * 65536
os.pwritev(fd, [buf], int(sys.argv[2]))
print('written', flush=True)
time.sleep(120)
`;

test.serial('the stop writes a qcow2\'s metadata back even when an I/O thread is left running (a read stuck on a stopped backing file)', async (t) => {
  const dir = tmpDir(t);
  // The backing file is another export's file; that export is stopped
  // (SIGSTOP) so that a read of backing data never ends.
  const base = makeImage(dir, 'base.img', 4 * MiB, [[0, Buffer.alloc(64 * KiB, 0x11)]]);
  const baseMnt = makeMountpoint(dir, 'base');
  const baseExport = await exportImage(t, { image: base, mountpoint: baseMnt });
  const top = await makeQcow2(dir, 'top.qcow2', 4 * MiB, { backing: baseMnt, backingFormat: 'raw' });
  const mnt = makeMountpoint(dir, 'top');
  const exp = await exportImage(t, { image: top, mountpoint: mnt, writable: true, args: ['--shutdown-timeout', '1'] });
  // An allocating write whose file stays open: no FLUSH writes its metadata back.
  const writer = startChild(t, [PYTHON, '-c', WRITE_AND_HOLD, mnt, String(3 * MiB)]);
  await writer.waitFor(/written/);
  baseExport.signal('SIGSTOP');
  t.teardown(() => baseExport.signal('SIGCONT'));
  startChild(t, [PYTHON, FSOP, 'read', mnt, 0, 4096]);
  await sleep(500); // the read reaches the backing file, where it stays
  exp.signal('SIGTERM');
  await exp.event('stopped', 20_000);
  t.truthy(exp.lines.find((l) => l.event === 'threads-left'), `an I/O thread was left running:\n${exp.stderr()}`);
  t.falsy(exp.lines.find((l) => l.event === 'final-flush-failed'));
  // The process exits meanwhile, its left thread killed, but the exit ends
  // only once the stuck read does: the backing export goes on.
  await sleep(1000);
  baseExport.signal('SIGCONT');
  t.is((await exp.wait(20_000)).code, 0, exp.stderr());
  writer.child.kill('SIGKILL');
  const checked = await qemuCheck(top);
  t.is(checked.code, 0, checked.out);
  const raw = await toRaw(top, dir);
  assertBytes(t, readFile(raw, 3 * MiB, 64 * KiB), Buffer.alloc(64 * KiB, 0x5a), 'the held write is in the image');
  await stopExport(t, baseExport);
});
