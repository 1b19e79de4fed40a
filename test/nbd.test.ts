// Remote images over NBD: fuse-export in front of real servers (nbdkit,
// qemu-nbd) on Unix sockets in the test's directory and on 127.0.0.1.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import {
  assertAnsweredAtOnce,
  assertBytes,
  assertUnmounted,
  check,
  eachTransport,
  errorText,
  exportImage,
  fio,
  fsop,
  fsopOk,
  FSOP,
  holdOpen,
  kernelHasUring,
  KiB,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  PYTHON,
  readThrough,
  readVia,
  requestCounter,
  type ReadyExport,
  run,
  runCli,
  setUring,
  sleep,
  startCli,
  stopExport,
  tmpDir,
  waitUntil,
  writeVia,
  type IoUring,
} from './helpers/index.js';
import { serverBytes, startNbdkit, startQemuNbd, type NbdServer } from './helpers/nbd.js';

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

/** An export of `server` on a fresh mountpoint under `dir`. */
async function exportServer(
  t: ExecutionContext,
  dir: string,
  server: NbdServer,
  ioUring: IoUring,
  options: { writable?: boolean; threads?: number; args?: string[] } = {},
) {
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: server.uri, mountpoint: mnt, ioUring, writable: true, threads: 2, ...options });
  return { mnt, exp };
}

/** The lines of nbdkit's log filter naming `command` (Read, Write, Flush, Trim, Zero, ...). */
function logged(logfile: string, command: string): string[] {
  if (!existsSync(logfile)) return [];
  return readFileSync(logfile, 'utf8')
    .split('\n')
    .filter((line) => new RegExp(` ${command} id=`).test(line));
}

eachTransport(test, 'nbdkit memory: the ready event names the backend, size and URI; writes reach the server', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '48M'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  t.is(exp.ready.backend, 'nbd');
  t.is(exp.ready.size, 48 * MiB, 'the size is the server’s');
  t.is(exp.ready.image, server.uri);

  const data = pattern(4 * MiB, 11);
  await check(['dd', `of=${mnt}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none'], { input: data, timeout: 30_000 });
  assertBytes(t, await readVia(mnt, 0, 4 * MiB), data, 'reads back through the export');
  assertBytes(t, await readVia(mnt, 12345, 7000), data.subarray(12345, 19345), 'unaligned read');
  t.true((await fsop('fsync', [mnt, 'abcd'])).ok === true, 'fsync succeeds');
  data.write('abcd', 0, 'hex');

  const stats = exp.lines;
  const stopped = await stopExport(t, exp);
  t.true(stopped[requestCounter(ioUring)] > 0, 'requests came on the transport asked for');
  t.is(stopped.errors, 0, JSON.stringify(stats.filter((l) => l.level === 'warn')));
  assertBytes(t, await serverBytes(server, dir, 4 * MiB), data, 'the server holds the bytes');
});

eachTransport(test, 'qemu-nbd serving a qcow2: ext4 built, loop-mounted and filled through the export; qemu-img check and compare clean', async (t, ioUring) => {
  const dir = tmpDir(t);
  const qcow2 = join(dir, 'disk.qcow2');
  await check(['qemu-img', 'create', '-q', '-f', 'qcow2', qcow2, '64M']);
  const server = await startQemuNbd(t, dir, qcow2);
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  t.is(exp.ready.size, 64 * MiB);
  const mkfs = await run(['mkfs.ext4', '-q', '-F', mnt], { timeout: 60_000 });
  t.is(mkfs.code, 0, mkfs.stderr);

  const fs = join(dir, 'fs');
  mkdirSync(fs);
  await check(['mount', '-o', 'loop', mnt, fs], { timeout: 60_000 });
  t.teardown(() => run(['umount', '-l', fs]));
  const sums = new Map<string, string>();
  for (const [index, size] of [1, 4096, 65_537, MiB, 3 * MiB + 123].entries()) {
    const data = pattern(size, 40 + index);
    const src = join(dir, `src-${index}`);
    writeFileSync(src, data);
    await check(['cp', src, join(fs, `file-${index}`)], { timeout: 60_000 });
    sums.set(`file-${index}`, sha256(data));
  }
  await check(['umount', fs], { timeout: 60_000 });
  await waitUntil(async () => !(await run(['losetup', '-j', mnt])).stdout.trim(), { what: 'the loop device to let go' });
  const snapshot = join(dir, 'snapshot.raw');
  await check(['cp', mnt, snapshot], { timeout: 60_000 });
  await stopExport(t, exp);
  await server.stop();

  const checked = await run(['qemu-img', 'check', qcow2], { timeout: 60_000 });
  t.is(checked.code, 0, `qemu-img check: ${checked.stdout}${checked.stderr}`);
  const compared = await run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', snapshot, qcow2], { timeout: 60_000 });
  t.is(compared.code, 0, `qemu-img compare: ${compared.stdout}${compared.stderr}`);
  const raw = join(dir, 'back.raw');
  await check(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', qcow2, raw], { timeout: 60_000 });
  const fsck = await run(['e2fsck', '-fn', raw], { timeout: 60_000 });
  t.is(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  for (const [name, sum] of sums) {
    const out = join(dir, `dumped-${name}`);
    await check(['debugfs', '-R', `dump /${name} ${out}`, raw], { timeout: 60_000 });
    t.is(sha256(readFileSync(out)), sum, `${name} is in the qcow2`);
  }
});

/** fio's crc32c verify of 4 KiB random reads and writes, 2 jobs at iodepth 16, each on its own `mib` MiB of `mnt`. */
async function fioVerify(t: ExecutionContext, mnt: string, mib: number): Promise<void> {
  const result = await fio(
    ['--name=verify', `--filename=${mnt}`, '--rw=randrw', '--bs=4k', '--iodepth=16', '--numjobs=2',
      `--size=${mib}M`, `--offset_increment=${mib}M`, '--direct=1', '--ioengine=libaio', '--verify=crc32c',
      '--do_verify=1', '--verify_fatal=1', '--group_reporting'],
    { timeout: 120_000 },
  );
  t.is(result.code, 0, result.stdout + result.stderr);
  t.notRegex(result.stdout + result.stderr, /verify: bad|crc32c: verify failed/);
}

eachTransport(test, 'fio crc32c verify, 2 jobs at iodepth 16, against nbdkit memory', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '64M'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  await fioVerify(t, mnt, 16);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
});

eachTransport(test, 'iodepth 2 for 8 s, reads and writes: every command is answered, none is stranded in libnbd', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '64M'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const result = await fio(
    ['--name=qd2', `--filename=${mnt}`, '--rw=randrw', '--bs=4k', '--iodepth=2', '--numjobs=1', '--size=32M',
      '--time_based', '--runtime=8', '--direct=1', '--ioengine=io_uring', '--group_reporting'],
    { timeout: 40_000 },
  );
  t.is(result.code, 0, result.stdout + result.stderr);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  t.is(stopped.inFlight, 0, 'nothing left in flight');
});

eachTransport(test, 'many reads are in flight at once: 64 reads with 100 ms server latency take far less than 6.4 s', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '16M'], filters: ['delay'], params: ['delay-read=100ms'] });
  const { mnt } = await exportServer(t, dir, server, ioUring, { writable: false });
  const started = Date.now();
  const result = await fio(
    ['--name=lat', `--filename=${mnt}`, '--rw=randread', '--bs=4k', '--iodepth=16', '--numjobs=1',
      '--number_ios=64', '--size=16M', '--direct=1', '--ioengine=libaio', '--readonly'],
    { timeout: 60_000 },
  );
  const took = Date.now() - started;
  t.is(result.code, 0, result.stdout + result.stderr);
  t.true(took < 3_000, `64 reads at 100 ms each took ${took} ms: they were not in flight together`);
});

eachTransport(test, 'fsync is FLUSH, punch hole and zero range WRITE_ZEROES, the first allowed to deallocate (a TRIM promises no zeroes) (nbdkit log filter); all read back right', async (t, ioUring) => {
  const dir = tmpDir(t);
  const logfile = join(dir, 'nbdkit.log');
  const backing = join(dir, 'backing.img');
  writeFileSync(backing, Buffer.alloc(0));
  await check(['truncate', '-s', '16M', backing]);
  // The file plugin flushes (fdatasync), and zeroes (punching holes where it may trim).
  const server = await startNbdkit(t, dir, { plugin: ['file', backing], filters: ['log'], params: [`logfile=${logfile}`] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const data = pattern(4 * MiB, 5);
  await check(['dd', `of=${mnt}`, 'bs=1M', 'conv=notrunc', 'status=none'], { input: data, timeout: 30_000 });

  const flushes = logged(logfile, 'Flush').length;
  t.true((await fsop('fsync', [mnt, 'abcd'])).ok === true);
  await waitUntil(() => logged(logfile, 'Flush').length > flushes, { what: 'a FLUSH in the server log' });

  t.true(await fsopOk('fallocate', [mnt, `${FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE}`, MiB, 256 * KiB]));
  await waitUntil(() => logged(logfile, 'Zero').some((line) => / trim=1 /.test(line)), { what: 'a WRITE_ZEROES that may trim in the server log' });
  t.is(logged(logfile, 'Trim').length, 0, 'no TRIM: it would leave the bytes unspecified');
  const zeroes = logged(logfile, 'Zero').length;
  t.true(await fsopOk('fallocate', [mnt, `${FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE}`, 2 * MiB, 128 * KiB]));
  await waitUntil(() => logged(logfile, 'Zero').length > zeroes, { what: 'a WRITE_ZEROES in the server log' });

  const expected = Buffer.from(data);
  expected.write('abcd', 0, 'hex');
  expected.fill(0, MiB, MiB + 256 * KiB);
  expected.fill(0, 2 * MiB, 2 * MiB + 128 * KiB);
  assertBytes(t, await readVia(mnt, 0, 4 * MiB), expected, 'holes and zeroes read back as zeroes');
  await stopExport(t, exp);
  assertBytes(t, await serverBytes(server, dir, 4 * MiB), expected, 'and so on the server');
});

eachTransport(test, 'zero range is written as zeroes where the server has no WRITE_ZEROES', async (t, ioUring) => {
  const dir = tmpDir(t);
  const logfile = join(dir, 'nbdkit.log');
  const server = await startNbdkit(t, dir, {
    plugin: ['memory', '16M'],
    filters: ['log', 'nozero'],
    params: [`logfile=${logfile}`, 'zeromode=none'],
  });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const data = pattern(4 * MiB, 9);
  await check(['dd', `of=${mnt}`, 'bs=1M', 'conv=notrunc', 'status=none'], { input: data, timeout: 30_000 });
  t.true(await fsopOk('fallocate', [mnt, `${FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE}`, MiB + 4096, 2 * MiB + 100]));
  t.is(logged(logfile, 'Zero').length, 0, 'no WRITE_ZEROES was sent');
  const expected = Buffer.from(data);
  expected.fill(0, MiB + 4096, 3 * MiB + 4196);
  assertBytes(t, await readVia(mnt, 0, 4 * MiB), expected);
  await stopExport(t, exp);
});

eachTransport(test, 'SEEK_DATA / SEEK_HOLE follow base:allocation; without it everything is data', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '16M'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  await check(['dd', `of=${mnt}`, 'bs=1M', 'seek=4', 'count=2', 'iflag=fullblock', 'conv=notrunc', 'status=none'], { input: pattern(2 * MiB, 3), timeout: 30_000 });
  t.is(await fsopOk('lseek', [mnt, 0, 'data']), 4 * MiB, 'the first data');
  t.is(await fsopOk('lseek', [mnt, 4 * MiB, 'hole']), 6 * MiB, 'the hole after it');
  t.is(await fsopOk('lseek', [mnt, 0, 'hole']), 0, 'a hole at the start');
  t.is((await fsop('lseek', [mnt, 7 * MiB, 'data'])).errno, 'ENXIO', 'no data after the last extent');
  await stopExport(t, exp);

  const plain = await startNbdkit(t, dir, { plugin: ['memory', '16M'], filters: ['noextents'] });
  const other = await exportServer(t, dir, plain, ioUring);
  t.is(await fsopOk('lseek', [other.mnt, 12345, 'data']), 12345, 'all data');
  t.is(await fsopOk('lseek', [other.mnt, 0, 'hole']), 16 * MiB, 'the only hole is the end');
  await stopExport(t, other.exp);
});

eachTransport(test, 'a multi-conn server that takes one client: its first connection serves both threads, data and block status, and a warning says so', async (t, ioUring) => {
  const dir = tmpDir(t);
  // The data connections would ask for simple replies; the limit filter turns them away.
  const server = await startNbdkit(t, dir, { plugin: ['memory', '64M'], filters: ['limit'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const said = exp.lines.filter((l) => l.level === 'warn' && /offers multi-conn but turned a second connection away/.test(l.message));
  t.is(said.length, 1, 'the fallback to one connection is said, once');
  const data = pattern(2 * MiB, 8);
  t.is((await writeVia(mnt, 40 * MiB, data, { how: 'rw' })).ok, data.length);
  t.is(await fsopOk('lseek', [mnt, 0, 'data']), 40 * MiB, 'base:allocation on the one connection');
  await fioVerify(t, mnt, 8);
  assertBytes(t, await readVia(mnt, 40 * MiB, data.length), data);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
});

/** Prints SEEK_DATA from 12345 and SEEK_HOLE from 0 of argv[1], then closes it. */
const SEEK_AND_CLOSE = [
  'import os, sys',
  'fd = os.open(sys.argv[1], os.O_RDONLY)',
  'print(os.lseek(fd, 12345, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE), flush=True)',
  'os.close(fd)',
].join('\n');

eachTransport(test, 'SEEK_DATA while the server is away (--reconnect-delay): every byte is data; base:allocation again once it is back', async (t, ioUring) => {
  const dir = tmpDir(t);
  const data = pattern(MiB, 9);
  const path = makeImage(dir, 'sparse.img', 16 * MiB, [[4 * MiB, data]]);
  const socket = join(dir, 'sparse.sock');
  const server = await startNbdkit(t, dir, { plugin: ['file', path], socket });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring, { args: ['--reconnect-delay', '20'] });
  t.is(await fsopOk('lseek', [mnt, 0, 'data']), 4 * MiB, 'the first data');
  t.is(await fsopOk('lseek', [mnt, 4 * MiB, 'hole']), 5 * MiB, 'the hole after it');
  await server.kill();
  // The seeks are answered at once; the close's FLUSH waits for the server.
  const seeker = spawn(PYTHON, ['-c', SEEK_AND_CLOSE, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => seeker.kill('SIGKILL'));
  const exited = once(seeker, 'exit');
  // A whole line: an unbuffered Python (PYTHONUNBUFFERED) writes print()'s pieces one by one.
  const [answer] = await within(10_000, 'the seeks with the server away', once(createInterface({ input: seeker.stdout }), 'line'));
  t.is(String(answer).trim(), `12345 ${16 * MiB}`, 'no server: all data, the only hole is the end');
  await startNbdkit(t, dir, { plugin: ['file', path], socket });
  const [code] = await within(30_000, 'the close once the server is back', exited);
  t.is(code, 0, 'the close (FLUSH) succeeded');
  await waitUntil(async () => (await fsopOk('lseek', [mnt, 0, 'data'])) === 4 * MiB, { timeout: 30_000, what: 'block status to come back' });
  t.is(await fsopOk('lseek', [mnt, 4 * MiB, 'hole']), 5 * MiB);
  assertBytes(t, await readVia(mnt, 4 * MiB, data.length), data, 'and the data reads right');
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0, 'no request failed');
});

eachTransport(test, 'a server error is that request’s errno; the export keeps serving; errors counted, logged once', async (t, ioUring) => {
  const dir = tmpDir(t);
  const trigger = join(dir, 'fail-now');
  const server = await startNbdkit(t, dir, {
    plugin: ['memory', '16M'],
    filters: ['error'],
    params: ['error-pread=ENOSPC', 'error-pread-rate=1', `error-pread-file=${trigger}`],
  });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const data = pattern(MiB, 2);
  await check(['dd', `of=${mnt}`, 'bs=1M', 'conv=notrunc', 'status=none'], { input: data, timeout: 30_000 });
  writeFileSync(trigger, '');
  for (let i = 0; i < 3; i++) {
    const answer = await fsop('read', [mnt, i * 8192, 4096, 'rdirect']);
    t.is(answer.errno, 'ENOSPC', JSON.stringify(answer));
  }
  rmSync(trigger);
  assertBytes(t, await readVia(mnt, 0, MiB), data, 'serves again once the server does');
  const warnings = exp.lines.filter((l) => l.event === 'image-error');
  t.is(warnings.length, 1, `logged once: ${JSON.stringify(warnings)}`);
  const stopped = await stopExport(t, exp);
  t.true(stopped.errors >= 3, `errors counted: ${stopped.errors}`);
});

test.serial('a read-only server: --writable fails naming it; without it the export is read-only', async (t) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '8M'], readOnly: true });
  const mnt = makeMountpoint(dir);
  const refused = await runCli(['--writable', server.uri, mnt]);
  t.is(refused.code, 1, refused.stderr);
  t.regex(errorText(refused), /read-only/);
  t.true(errorText(refused).includes(server.address), errorText(refused));
  assertUnmounted(t, mnt);
  const exp = await exportImage(t, { image: server.uri, mountpoint: mnt });
  t.false(exp.ready.writable);
  t.true(['EROFS', 'EACCES'].includes((await writeVia(mnt, 0, Buffer.from('x'))).errno ?? ''));
  await stopExport(t, exp);
});

test.serial('bad URIs, no server and --growable: exit 1 within 15 s naming the address', async (t) => {
  const dir = tmpDir(t);
  const mnt = makeMountpoint(dir);
  const missing = join(dir, 'nobody-listens.sock');
  const cases: [string[], RegExp | string][] = [
    [[`nbd+unix:///?socket=${missing}`], missing],
    [['nbd://127.0.0.1:9/'], '127.0.0.1:9'],
    [['nbd+unix:///export'], /socket=PATH/],
    [['nbd://host:port/'], /port/],
    [['--writable', '--growable', `nbd+unix:///?socket=${missing}`], /fixed size/],
    // The delay is for a server that goes while serving: at start it must answer.
    [['--reconnect-delay', '5', `nbd+unix:///?socket=${missing}`], missing],
  ];
  for (const [args, expected] of cases) {
    const started = Date.now();
    const result = await runCli([...args, mnt], { timeout: 20_000 });
    t.is(result.code, 1, `${args.join(' ')}: ${result.stderr}`);
    t.true(Date.now() - started < 15_000, `${args.join(' ')} took too long`);
    const message = errorText(result);
    if (typeof expected === 'string') t.true(message.includes(expected), message);
    else t.regex(message, expected);
    assertUnmounted(t, mnt);
  }
});

test.serial('nbd:// on 127.0.0.1 and a secret in the URI is never shown', async (t) => {
  const dir = tmpDir(t);
  const port = 20_000 + (process.pid % 20_000);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '8M'], tcpPort: port });
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: `nbd://127.0.0.1:${port}/?tls-psk-file=/secret/keys.psk`, mountpoint: mnt, writable: true });
  t.is(exp.ready.image, `nbd://127.0.0.1:${port}/`);
  t.false(exp.stderr().includes('secret'));
  t.false(readFileSync('/proc/self/mountinfo', 'utf8').includes('secret'), 'not in the mount table either');
  await writeVia(mnt, 4096, Buffer.from('hello'));
  assertBytes(t, await readVia(mnt, 4096, 5), Buffer.from('hello'));
  await stopExport(t, exp);
  void server;
});

eachTransport(test, 'the server killed under load: requests fail with EIO, the export halts, exits 2, nothing left mounted', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '64M'], filters: ['delay'], params: ['delay-read=20ms'] });
  const mnt = makeMountpoint(dir);
  const exp = startCli(t, ['--io-uring', ioUring, '--writable', '--threads', '2', server.uri, mnt]);
  await exp.event('ready');
  const load = fio(
    ['--name=load', `--filename=${mnt}`, '--rw=randread', '--bs=4k', '--iodepth=16', '--numjobs=2',
      '--time_based', '--runtime=30', '--size=64M', '--direct=1', '--ioengine=libaio'],
    { timeout: 60_000 },
  );
  await new Promise((r) => setTimeout(r, 1500));
  await server.kill();
  const halted = await exp.event('halted', 30_000);
  t.regex(halted.reason ?? halted.message, /NBD server/);
  const { code } = await exp.wait(30_000);
  t.is(code, 2, exp.stderr());
  const result = await load;
  t.not(result.code, 0, 'fio saw errors, not success');
  t.false(result.timedOut ?? false, 'fio did not hang');
  assertUnmounted(t, mnt);
});

eachTransport(test, 'the server killed under a reader that keeps reading: each read returns within 1 s (EIO), the export exits 2 once it closes the file', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '16M'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const reader = readThrough(t, mnt, 4);
  await sleep(1000);
  await server.kill();
  await exp.event('halted', 10_000);
  const reads = await reader.done();
  const closed = Date.now();
  assertAnsweredAtOnce(t, reads);
  t.true(reads.errnos.EIO > 0, 'reads after the loss get EIO');
  t.is((await exp.wait(20_000)).code, 2);
  t.true(Date.now() - closed < 3000, `the stop ended ${Date.now() - closed} ms after the reader closed the file`);
  t.deepEqual(exp.lines.filter((l) => l.event === 'connection-busy'), [], 'the stop waited for no deadline');
  assertUnmounted(t, mnt);
});

/** A 16 MiB file holding `pattern(16 MiB, seed)`, for nbdkit's file plugin (the data survives a restart). */
function backingFile(dir: string, seed: number): { path: string; data: Buffer } {
  const path = join(dir, 'backing.img');
  const data = pattern(16 * MiB, seed);
  writeFileSync(path, data);
  return { path, data };
}

/** The warning lines of `event` the export logged so far. */
const warnings = (exp: ReadyExport, event: string) => exp.lines.filter((l) => l.level === 'warn' && l.event === event);

/** Races `promise` against a deadline, so that a hung request fails the test instead of hanging it. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

eachTransport(test, '--reconnect-delay: the server killed under a reader and restarted in time: no EIO, reads in the gap right, writes before and after land', async (t, ioUring) => {
  const dir = tmpDir(t);
  const backing = backingFile(dir, 21);
  const socket = join(dir, 'restarted.sock');
  const server = await startNbdkit(t, dir, { plugin: ['file', backing.path], socket });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring, { args: ['--reconnect-delay', '20'] });
  const before = pattern(64 * KiB, 22);
  t.is((await writeVia(mnt, 3 * MiB, before, { how: 'rw' })).ok, before.length);
  t.true((await fsop('fsync', [mnt, ''])).ok === true, 'fsync before the loss');
  const expected = Buffer.from(backing.data);
  before.copy(expected, 3 * MiB);

  // A reader that keeps O_DIRECT reads going (each one reaches the server) and checks every byte.
  let reading = true;
  let reads = 0;
  const failures: string[] = [];
  const reader = (async () => {
    for (let i = 0; reading; i++) {
      const offset = ((i * 7919) % 255) * 64 * KiB;
      const answer = await fsop('read', [mnt, offset, 64 * KiB, 'rdirect'], { timeout: 60_000 });
      if (!('ok' in answer)) failures.push(`read at ${offset}: ${answer.errno}`);
      else if (!Buffer.from(answer.ok, 'hex').equals(expected.subarray(offset, offset + 64 * KiB))) failures.push(`read at ${offset}: wrong bytes`);
      reads++;
    }
  })();
  // And load: 2 jobs at iodepth 16 whose commands are in flight when the server dies.
  const load = fio(
    ['--name=load', `--filename=${mnt}`, '--rw=randread', '--bs=4k', '--iodepth=16', '--numjobs=2',
      '--time_based', '--runtime=8', '--size=16M', '--direct=1', '--ioengine=libaio', '--readonly'],
    { timeout: 60_000 },
  );
  await waitUntil(() => reads >= 3, { what: 'the reader to get going' });
  await sleep(500);
  await server.kill();
  await waitUntil(() => warnings(exp, 'nbd-lost').length > 0, { what: 'the loss to be logged' });
  const inGap = readVia(mnt, 5 * MiB + 512, 100_000, { how: 'rdirect', timeout: 60_000 });
  let answered = false;
  void inGap.then(() => (answered = true), () => (answered = true));
  await sleep(1500);
  t.false(answered, 'a read in the gap waits for the server');
  const readsInGap = reads;
  await startNbdkit(t, dir, { plugin: ['file', backing.path], socket });
  assertBytes(t, await within(30_000, 'the read in the gap', inGap), expected.subarray(5 * MiB + 512, 5 * MiB + 512 + 100_000), 'the read in the gap is served once the server is back');
  await waitUntil(() => warnings(exp, 'nbd-reconnected').length > 0, { what: 'the return to be logged' });
  await waitUntil(() => reads > readsInGap + 3, { timeout: 30_000, what: 'the reader to go on' });
  reading = false;
  await within(60_000, 'the reader', reader);
  t.deepEqual(failures, [], 'no read failed or read wrong bytes');
  const loaded = await load;
  t.is(loaded.code, 0, `fio saw no error: ${loaded.stdout}${loaded.stderr}`);

  const after = pattern(64 * KiB, 23);
  t.is((await writeVia(mnt, 9 * MiB, after, { how: 'rw' })).ok, after.length);
  after.copy(expected, 9 * MiB);
  t.is(warnings(exp, 'nbd-delay-expired').length, 0);
  t.is(exp.lines.filter((l) => l.event === 'halted').length, 0, 'the export did not halt');
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0, 'no request failed');
  assertBytes(t, readFileSync(backing.path), expected, 'writes before and after the loss are in the file');
});

eachTransport(test, '--reconnect-delay: a write acknowledged, then lost by a server that came back without it: the next fsync fails with EIO, once', async (t, ioUring) => {
  const dir = tmpDir(t);
  // A memory server keeps nothing across a restart, as a write-back cache may not.
  const volatile = { plugin: ['memory', '16M'], socket: join(dir, 'volatile.sock') };
  const server = await startNbdkit(t, dir, volatile);
  const { mnt, exp } = await exportServer(t, dir, server, ioUring, { args: ['--reconnect-delay', '10'] });
  const holder = await holdOpen(t, mnt, ['fsync', 'fsync', 'close']);
  await server.kill();
  await waitUntil(() => warnings(exp, 'nbd-lost').length > 0, { what: 'the loss to be logged' });
  await startNbdkit(t, dir, volatile);
  await waitUntil(() => warnings(exp, 'nbd-reconnected').length > 0, { timeout: 20_000, what: 'the reconnection' });
  const held = await holder.release();
  t.deepEqual(
    held.map(([call, errno]) => [call, errno]),
    [
      ['fsync', 'EIO'],
      ['fsync', null],
      ['close', null],
    ],
    'the first fsync after the loss reports it; the next ones cover only what came after',
  );
  await stopExport(t, exp);
});

test.serial('[io-uring on] a stop while the second I/O thread writes zeroes chunk by chunk on the shared connection: every thread ends', async (t) => {
  t.true(kernelHasUring, 'the kernel has FUSE-over-io_uring');
  setUring(t, 'Y');
  const dir = tmpDir(t);
  // One connection (driven by thread 0), no WRITE_ZEROES (zeroes are written
  // 1 MiB at a time) and slow writes: the zeroing outlives the drain.
  const server = await startNbdkit(t, dir, {
    plugin: ['memory', '16M'],
    filters: ['multi-conn', 'nozero', 'delay'],
    params: ['multi-conn-mode=disable', 'zeromode=none', 'delay-write=100ms'],
  });
  const { mnt, exp } = await exportServer(t, dir, server, 'on', { args: ['--shutdown-timeout', '0.3'] });
  t.is(exp.ready.transport, 'io_uring');
  // Called from CPU 1, whose ring queue thread 1 serves.
  const ZERO_RANGE_KEEP_SIZE = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
  const zeroing = run(['taskset', '-c', '1', PYTHON, FSOP, 'fallocate', mnt, ZERO_RANGE_KEEP_SIZE, 0, 8 * MiB], { timeout: 30_000 });
  await sleep(150);
  exp.signal('SIGTERM');
  t.is((await exp.wait(20_000)).code, 0, exp.stderr());
  t.deepEqual(
    exp.lines.filter((l) => l.event === 'threads-left').map((l) => l.message),
    [],
    'thread 0 drove the shared connection until thread 1 had written its last chunk',
  );
  await zeroing;
  assertUnmounted(t, mnt);
});

eachTransport(test, 'a server slow to answer block status holds SEEK_DATA / SEEK_HOLE 3 s at most: every byte is data then, and the thread serves on', async (t, ioUring) => {
  const dir = tmpDir(t);
  const server = await startNbdkit(t, dir, { plugin: ['memory', '16M'], filters: ['delay'], params: ['delay-extents=30'] });
  const { mnt, exp } = await exportServer(t, dir, server, ioUring);
  const timed = async <T>(what: Promise<T>): Promise<[T, number]> => {
    const started = Date.now();
    const answer = await what;
    return [answer, Date.now() - started];
  };
  const [data, dataMs] = await timed(fsop('lseek', [mnt, 4096, 'data'], { timeout: 60_000 }));
  t.deepEqual(data, { ok: 4096 }, 'SEEK_DATA past the deadline: data right there');
  t.true(dataMs >= 2500 && dataMs < 6000, `SEEK_DATA answered after ${dataMs} ms, the 3 s deadline`);
  const [hole, holeMs] = await timed(fsop('lseek', [mnt, 4096, 'hole'], { timeout: 60_000 }));
  t.deepEqual(hole, { ok: 16 * MiB }, 'SEEK_HOLE past the deadline: the end');
  t.true(holeMs < 6000, `SEEK_HOLE answered after ${holeMs} ms`);
  const [read, readMs] = await timed(readVia(mnt, MiB, 4096, { how: 'rdirect' }));
  assertBytes(t, read, Buffer.alloc(4096));
  t.true(readMs < 1000, `a read after the seeks took ${readMs} ms`);
  await stopExport(t, exp);
});

eachTransport(test, '--reconnect-delay 2 with one shared connection: the server killed and not back: EIO after ~2 s, the export stays up and serves again once it is', async (t, ioUring) => {
  const dir = tmpDir(t);
  const backing = backingFile(dir, 31);
  const socket = join(dir, 'gone.sock');
  // Without multi-conn: one connection, driven by thread 0, used by both threads.
  const plugin = ['file', backing.path];
  const shared = { plugin, socket, filters: ['multi-conn'], params: ['multi-conn-mode=disable'] };
  const server = await startNbdkit(t, dir, shared);
  const { mnt, exp } = await exportServer(t, dir, server, ioUring, { args: ['--reconnect-delay', '2'] });
  assertBytes(t, await readVia(mnt, MiB, 4096, { how: 'rdirect' }), backing.data.subarray(MiB, MiB + 4096));

  await server.kill();
  const killed = Date.now();
  const waited = await within(20_000, 'a read while the server is gone', fsop('read', [mnt, 2 * MiB, 4096, 'rdirect'], { timeout: 20_000 }));
  const took = Date.now() - killed;
  t.is(waited.errno, 'EIO', JSON.stringify(waited));
  t.true(took >= 1500 && took < 5000, `EIO came ${took} ms after the server went, not about 2 s`);
  t.log(`EIO ${took} ms after the kill`);
  t.is(warnings(exp, 'nbd-delay-expired').length, 1, 'the expiry is logged once');

  const started = Date.now();
  const fast = await fsop('read', [mnt, 3 * MiB, 4096, 'rdirect'], { timeout: 20_000 });
  t.is(fast.errno, 'EIO', 'past the delay new requests fail at once');
  t.true(Date.now() - started < 1500, `and fast: ${Date.now() - started} ms`);
  t.false(exp.done, 'the export is still up');
  t.is(exp.lines.filter((l) => l.event === 'halted').length, 0, 'and did not halt');

  await startNbdkit(t, dir, shared);
  await waitUntil(() => warnings(exp, 'nbd-reconnected').length > 0, { timeout: 20_000, what: 'the reconnection' });
  assertBytes(t, await readVia(mnt, 4 * MiB, 8192, { how: 'rdirect' }), backing.data.subarray(4 * MiB, 4 * MiB + 8192), 'served again');
  t.log(exp.lines.filter((l) => l.event?.startsWith('nbd-')).map((l) => `${l.event}: ${l.message}`).join('\n'));
  const stopped = await stopExport(t, exp);
  t.true(stopped.errors >= 2, `the failed reads are counted: ${stopped.errors}`);
});
