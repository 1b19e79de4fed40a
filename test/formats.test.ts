// Every format QEMU serves (VMDK, VHDX, VDI, VHD, QED, qcow, parallels,
// LUKS, a qcow2 chain imago cannot follow): through a qemu-nbd child the
// export owns. The bytes are qemu-img convert's; writes land where QEMU
// puts them (qemu-img check, compare); overlays never touch the image; the
// child's crash is survived and the exporter's kill takes the child along.
import test from 'ava';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  assertBytes,
  check,
  CLI,
  digest,
  eachTransport,
  errorText,
  exportImage,
  fio,
  forceUnmountUnder,
  fsopOk,
  readFile,
  KiB,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  qemuCompare,
  qemuInfo,
  readVia,
  run,
  runCli,
  sleep,
  stopExport,
  tmpDir,
  toRaw,
  waitUntil,
  writeVia,
} from './helpers/index.js';

const SIZE = 16 * MiB;
const KEY = 'correct horse';

/** The formats and subformats made with `qemu-img convert -O FORMAT [-o options]`, and whether QEMU writes them. */
const FORMATS: { format: string; options?: string; writes: boolean; checks: boolean }[] = [
  { format: 'vmdk', writes: true, checks: true },
  { format: 'vmdk', options: 'subformat=streamOptimized', writes: false, checks: true },
  { format: 'vhdx', writes: true, checks: true },
  { format: 'vdi', writes: true, checks: true },
  { format: 'vpc', writes: true, checks: false },
  { format: 'qed', writes: true, checks: true },
  { format: 'qcow', writes: true, checks: false },
  { format: 'parallels', writes: true, checks: true },
];

/** A raw disk with data, a hole and a tail, and the same disk converted into `format`. */
async function imageIn(dir: string, format: string, options?: string): Promise<{ image: string; raw: string }> {
  const raw = makeImage(dir, 'disk.raw', SIZE, [
    [0, pattern(1 * MiB, 1)],
    [5 * MiB + 512, pattern(300 * KiB, 2)],
    [SIZE - 64 * KiB, pattern(64 * KiB, 3)],
  ]);
  if (format === 'raw') return { image: raw, raw };
  const image = join(dir, `disk.${format}`);
  await check(['qemu-img', 'convert', '-O', format, ...(options ? ['-o', options] : []), raw, image]);
  return { image, raw };
}

/** Writes `data` at `offset` into the raw reference as well. */
function mirror(raw: string, offset: number, data: Buffer): void {
  const fd = openSync(raw, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** The live qemu-nbd processes whose parent is `pid` (not zombies). */
async function childrenOf(pid: number): Promise<number[]> {
  const listed = await run(['ps', '-o', 'pid=,stat=,comm=', '--ppid', String(pid)]);
  return listed.stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([, stat, comm]) => comm === 'qemu-nbd' && !stat?.startsWith('Z'))
    .map(([child]) => Number(child));
}

/** Live qemu-nbd processes anywhere whose command line names `image`. */
async function qemuNbdServing(image: string): Promise<number[]> {
  const listed = await run(['ps', '-eo', 'pid=,stat=,args=']);
  return listed.stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([, stat, comm, ...rest]) => comm === 'qemu-nbd' && !stat?.startsWith('Z') && rest.join(' ').includes(image))
    .map(([pid]) => Number(pid));
}

/**
 * `qemu-img create` of an encrypted image. QEMU times its key derivation on
 * the thread's CPU clock, which on a loaded machine may show no progress:
 * it then fails with "Unable to get accurate CPU usage", and is tried again.
 */
async function createEncrypted(args: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const result = await run(['qemu-img', 'create', '-q', ...args]);
    if (result.code === 0) return;
    if (attempt === 5 || !/accurate CPU usage/.test(result.stderr)) throw new Error(`qemu-img create ${args.join(' ')}: ${result.stderr}`);
  }
}

const writes: [number, number, number][] = [
  [0, 4 * KiB, 11],
  [64 * KiB - 100, 300, 12],
  [3 * MiB + 5, 200 * KiB, 13],
  [SIZE - 8 * KiB, 8 * KiB, 14],
  [SIZE - 100, 100, 15],
];

eachTransport(test, 'every format QEMU serves reads as qemu-img convert -O raw sees it, takes writes where QEMU does; qemu-img check and compare agree', async (t, ioUring) => {
  for (const { format, options, writes: writable, checks } of FORMATS) {
    const what = `${format}${options ? ` (${options})` : ''}`;
    const dir = tmpDir(t);
    const { image } = await imageIn(dir, format, options);
    // The guest's view, in QEMU's words (a VHD's size is rounded up to its geometry).
    const raw = await toRaw(image, dir);
    const mnt = makeMountpoint(dir);
    const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable });
    t.is(exp.ready.format, format, what);
    t.is(exp.ready.backend, 'qemu', what);
    t.regex(String(exp.ready.qemuVersion), /^\d+\.\d+/, `${what}: qemu-nbd's version`);
    t.is(exp.ready.size, (await qemuInfo(image))['virtual-size'], what);
    const cmp = await run(['cmp', mnt, raw]);
    t.is(cmp.code, 0, `${what}: the export differs from qemu-img convert: ${cmp.stdout}${cmp.stderr}`);
    if (writable) {
      for (const [offset, length, seed] of writes) {
        const data = pattern(length, seed);
        t.deepEqual(await writeVia(mnt, offset, data), { ok: length }, `${what}: write at ${offset}`);
        mirror(raw, offset, data);
      }
      const after = await run(['cmp', mnt, raw]);
      t.is(after.code, 0, `${what}: read back: ${after.stdout}${after.stderr}`);
    } else {
      t.regex((await writeVia(mnt, 0, 'x')).errno ?? '', /^(EACCES|EROFS)$/, `${what}: read-only`);
    }
    const stopped = await stopExport(t, exp);
    t.is(stopped.errors, 0, what);
    if (checks) {
      const checked = await run(['qemu-img', 'check', '-f', format, image]);
      t.is(checked.code, 0, `${what}: qemu-img check: ${checked.stdout}${checked.stderr}`);
    }
    const compared = await run(['qemu-img', 'compare', '-f', format, '-F', 'raw', image, raw]);
    t.is(compared.code, 0, `${what}: qemu-img compare: ${compared.stdout}${compared.stderr}`);
  }
});

test.serial('--format names any of QEMU formats; an unknown one exits 1 naming it; a wrong one says what QEMU found', async (t) => {
  const dir = tmpDir(t);
  const { image } = await imageIn(dir, 'vdi');
  const mnt = makeMountpoint(dir);
  const unknown = await runCli(['--format', 'vmdk2', image, mnt]);
  t.is(unknown.code, 1);
  t.regex(unknown.stderr, /vmdk2/);
  const wrong = await runCli(['--format', 'vhdx', image, mnt]);
  t.is(wrong.code, 1);
  t.regex(errorText(wrong), new RegExp(`${image}.*vhdx|vhdx.*${image}`));
  const named = await exportImage(t, { image, mountpoint: mnt, format: 'vdi' });
  t.is(named.ready.format, 'vdi');
  await stopExport(t, named);
});

eachTransport(test, 'a qcow2 over a VMDK (a chain imago cannot follow) goes through QEMU whole; the VMDK is never written', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { image: base } = await imageIn(dir, 'vmdk');
  const top = join(dir, 'top.qcow2');
  await check(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'vmdk', top]);
  await check(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x77 2M 64k', top]);
  const reference = await toRaw(top, dir);
  const before = digest(base);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: top, mountpoint: mnt, ioUring, writable: true });
  t.is(exp.ready.backend, 'qemu');
  t.is(exp.ready.format, 'qcow2');
  const cmp = await run(['cmp', mnt, reference]);
  t.is(cmp.code, 0, `${cmp.stdout}${cmp.stderr}`);
  const data = pattern(100 * KiB, 5);
  t.deepEqual(await writeVia(mnt, 1 * MiB - 10, data), { ok: data.length });
  mirror(reference, 1 * MiB - 10, data);
  await stopExport(t, exp);
  t.is(digest(base), before, 'the VMDK under the qcow2 is unchanged');
  const compared = await qemuCompare(top, reference);
  t.is(compared.code, 0, compared.out);
});

for (const format of ['vmdk', 'raw']) {
eachTransport(test, `--snapshot and --overlay on ${format}: writes land in the overlay, the image keeps its checksum; an overlay file is reused; a snapshot leaves nothing`, async (t, ioUring) => {
  const dir = tmpDir(t);
  const { image } = await imageIn(dir, format);
  const before = digest(image);
  const mnt = makeMountpoint(dir);
  const data = pattern(64 * KiB, 9);

  const snapshot = await exportImage(t, { image, mountpoint: mnt, ioUring, args: ['--snapshot'] });
  t.true(snapshot.ready.writable, '--snapshot exports writable');
  t.deepEqual(await writeVia(mnt, 4 * MiB, data), { ok: data.length });
  assertBytes(t, await readVia(mnt, 4 * MiB, data.length), data, 'the write reads back');
  const temporary = readdirSync(tmpdir()).filter((n) => n.startsWith('fuse-export-qemu-'));
  await stopExport(t, snapshot);
  t.is(digest(image), before, `--snapshot left the ${format} image unchanged`);
  for (const name of temporary) t.false(existsSync(join(tmpdir(), name)), `${name} is gone`);

  const overlay = join(dir, 'writes.qcow2');
  const first = await exportImage(t, { image, mountpoint: mnt, ioUring, args: ['--overlay', overlay] });
  t.deepEqual(await writeVia(mnt, 4 * MiB, data), { ok: data.length });
  await stopExport(t, first);
  const info = await qemuInfo(overlay);
  t.is(info.format, 'qcow2');
  t.is(info['backing-filename-format'] ?? info['backing-format'], format, 'the base format is recorded');
  const second = await exportImage(t, { image, mountpoint: mnt, ioUring, args: ['--overlay', overlay] });
  assertBytes(t, await readVia(mnt, 4 * MiB, data.length), data, 'the reused overlay holds the earlier write');
  assertBytes(t, await readVia(mnt, 0, 64 * KiB), pattern(64 * KiB, 1), 'the image shows through');
  await stopExport(t, second);
  t.is(digest(image), before, `--overlay left the ${format} image unchanged`);
});
}

eachTransport(test, 'LUKS and LUKS-encrypted qcow2: the right key opens them (writes land), no key or a wrong one exits 1 naming the image; the key is in no command line', async (t, ioUring) => {
  const dir = tmpDir(t);
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, `${KEY}\n`);
  const wrongKey = join(dir, 'wrong');
  writeFileSync(wrongKey, 'not it\n');
  const secret = ['--object', `secret,id=k,data=${KEY}`];
  const luks = join(dir, 'disk.luks');
  await createEncrypted(['-f', 'luks', ...secret, '-o', 'key-secret=k,iter-time=200', luks, '8M']);
  const qcow2 = join(dir, 'disk.qcow2');
  await createEncrypted(['-f', 'qcow2', ...secret, '-o', 'encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=200', qcow2, '8M']);
  const mnt = makeMountpoint(dir);
  for (const [image, format] of [[luks, 'luks'], [qcow2, 'qcow2']] as const) {
    const none = await runCli([image, mnt]);
    t.is(none.code, 1, format);
    t.regex(errorText(none), new RegExp(`${image}.*encrypted.*--key-file`), format);
    const wrong = await runCli(['--key-file', wrongKey, image, mnt]);
    t.is(wrong.code, 1, format);
    t.regex(errorText(wrong), new RegExp(`does not unlock image ${image}.*wrong key`), format);
    const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true, args: ['--key-file', keyFile] });
    t.is(exp.ready.format, format);
    const commandLines = (await run(['ps', '-eo', 'args='])).stdout;
    t.false(commandLines.includes(KEY), 'the key is on no command line');
    const data = pattern(8 * KiB, 4);
    t.deepEqual(await writeVia(mnt, 1 * MiB, data), { ok: data.length });
    await stopExport(t, exp);
    const io = await run(['qemu-io', '--object', `secret,id=k,data=${KEY}`, '--image-opts',
      format === 'luks' ? `driver=luks,key-secret=k,file.filename=${image}` : `driver=qcow2,encrypt.key-secret=k,file.filename=${image}`,
      '-c', `read -P 0x${data[0]!.toString(16)} ${1 * MiB} 1`]);
    t.is(io.code, 0, `${format}: the write is in the image, encrypted: ${io.stdout}${io.stderr}`);
    t.false(readFileSync(image).includes(data), `${format}: the data is not in the file in the clear`);
  }
});

eachTransport(test, 'qemu-nbd killed (kill -9) under reads: it is restarted, reads carry on with the right bytes; the exporter killed takes its child along', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { image, raw } = await imageIn(dir, 'vmdk');
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring });
  const [child] = await childrenOf(exp.pid);
  t.truthy(child, 'qemu-nbd runs as the exporter\'s child');
  let stop = false;
  const reader = (async () => {
    let rounds = 0;
    while (!stop) {
      const cmp = await run(['cmp', mnt, raw], { timeout: 60_000 });
      if (cmp.code !== 0) throw new Error(`round ${rounds}: ${cmp.stdout}${cmp.stderr}`);
      rounds++;
    }
    return rounds;
  })();
  await sleep(200);
  process.kill(child!, 'SIGKILL');
  await waitUntil(() => exp.lines.some((l) => /serves the image again/.test(String(l.message))), { timeout: 20_000, what: 'the restart' });
  await sleep(500);
  stop = true;
  t.true((await reader) >= 1, 'reads went on');
  t.is(exp.lines.filter((l) => l.level === 'error').length, 0, exp.stderr());

  const [restarted] = await childrenOf(exp.pid);
  t.truthy(restarted);
  t.not(restarted, child);
  exp.signal('SIGKILL');
  await exp.wait();
  await waitUntil(async () => (await qemuNbdServing(image)).length === 0, { timeout: 5_000, what: 'qemu-nbd to die with the exporter' });
  forceUnmountUnder(dir);
  // Its private directory is left; the next export sweeps it.
  const left = readdirSync(tmpdir()).filter((name) => name.startsWith(`fuse-export-qemu-${exp.pid}-`));
  t.true(left.length > 0, 'the killed exporter left its directory');
  const next = await exportImage(t, { image, mountpoint: mnt, ioUring });
  await stopExport(t, next);
  for (const name of left) t.false(existsSync(join(tmpdir(), name)), `${name} was swept`);
});

test.serial('corrupt VMDK and VHDX files: exit 1 naming the problem, or EIO for what they cannot give; never a hang; the file is not changed', async (t) => {
  for (const format of ['vmdk', 'vhdx']) {
    const dir = tmpDir(t);
    const { image } = await imageIn(dir, format);
    const mnt = makeMountpoint(dir);
    // Garbage over the metadata after the magic: the grain directory and
    // tables of a sparse VMDK, the headers and region tables of a VHDX.
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.alloc(192 * KiB, 0xff), 0, 192 * KiB, 8);
    closeSync(fd);
    const before = digest(image);
    const result = await runCli([image, mnt], { timeout: 30_000 });
    if (result.code === 0) t.fail(`${format}: a corrupt image was exported`);
    t.is(result.code, 1, `${format}: ${result.stderr}`);
    t.regex(errorText(result), new RegExp(`QEMU could not open image ${image}: .+`), format);
    t.is(digest(image), before, `${format}: the file is unchanged`);
  }
});

eachTransport(test, 'fio on a VHDX: 2 jobs x iodepth 16, direct 4k random writes, crc32c verify', async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = join(dir, 'disk.vhdx');
  await check(['qemu-img', 'create', '-q', '-f', 'vhdx', image, String(32 * MiB)]);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  const result = await fio([
    '--name=verify', `--filename=${mnt}`, '--ioengine=io_uring', '--direct=1', '--bs=4k', '--rw=randwrite',
    '--verify=crc32c', '--verify_fatal=1', `--size=${16 * MiB}`, `--offset_increment=${16 * MiB}`,
    '--numjobs=2', '--iodepth=16', '--randrepeat=1', '--group_reporting',
  ], { timeout: 120_000 });
  t.is(result.code, 0, `${result.stdout}${result.stderr}`);
  t.notRegex(result.stdout + result.stderr, /verify: bad|crc32c: verify failed/);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  const checked = await run(['qemu-img', 'check', image]);
  t.is(checked.code, 0, checked.stdout + checked.stderr);
});

test.serial('without qemu-nbd: exit 1 naming the Debian package to install', async (t) => {
  const dir = tmpDir(t);
  const { image } = await imageIn(dir, 'vdi');
  const mnt = makeMountpoint(dir);
  const result = await run([process.execPath, CLI, '--log-format', 'json', image, mnt], { env: { ...process.env, PATH: dir } });
  t.is(result.code, 1, result.stderr);
  t.regex(result.stderr, /qemu-nbd is missing.*install Debian's qemu-utils/);
});

eachTransport(test, 'reads straight from a VMDK file where QEMU maps them stay right after writes, punched holes and zeroed ranges', async (t, ioUring) => {
  const dir = tmpDir(t);
  // With zeroed grains, QEMU zeroes a whole grain by marking it in its
  // table, not by writing: the bytes in the file stay, and only a map that
  // forgot the range keeps them from being read.
  const { image } = await imageIn(dir, 'vmdk', 'zeroed_grain=on');
  const raw = await toRaw(image, dir);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  // Mapped at start: the first MiB. Change parts of it through the export,
  // then read every part back, through the page cache and O_DIRECT.
  const data = pattern(8 * KiB, 21);
  t.deepEqual(await writeVia(mnt, 64 * KiB, data), { ok: data.length });
  mirror(raw, 64 * KiB, data);
  await fsopOk('fallocate', [mnt, 0x01 | 0x02, 128 * KiB, 64 * KiB]);
  mirror(raw, 128 * KiB, Buffer.alloc(64 * KiB));
  await fsopOk('fallocate', [mnt, 0x10, 256 * KiB + 512, 4 * KiB]);
  mirror(raw, 256 * KiB + 512, Buffer.alloc(4 * KiB));
  for (const how of [undefined, 'rdirect']) {
    for (const offset of [0, 64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB]) {
      const expected = readFile(raw, offset, 4 * KiB);
      assertBytes(t, await readVia(mnt, offset, 4 * KiB, { how }), expected, `${how ?? 'cached'} read at ${offset}`);
    }
  }
  const cmp = await run(['cmp', mnt, raw]);
  t.is(cmp.code, 0, `${cmp.stdout}${cmp.stderr}`);
  await stopExport(t, exp);
  const compared = await run(['qemu-img', 'compare', '-f', 'vmdk', '-F', 'raw', image, raw]);
  t.is(compared.code, 0, compared.stdout + compared.stderr);
});
