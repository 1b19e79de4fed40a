// The command-line interface scripts rely on: usage, JSON log events,
// --pidfile, signals, unmounting from outside, exit statuses.
import test from 'ava';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  assertBytes,
  CLI,
  assertUnmounted,
  check,
  eachTransport,
  errorText,
  exported,
  FSOP,
  fsop,
  KiB,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  PYTHON,
  qemuIo,
  readFile,
  readVia,
  requestCounter,
  runCli,
  startChild,
  startCli,
  stopExport,
  tmpDir,
  transportFor,
  waitUntil,
  writeVia,
} from './helpers/index.js';
import { ackedBlocks, lostBlocks } from './helpers/durability.js';

const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** Number of possible CPUs (get_nprocs_conf()): the kernel wants one ring queue per each. */
function possibleCpus() {
  let count = 0;
  for (const range of readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim().split(',')) {
    const [a, b = a] = range.split('-').map(Number);
    count += b - a + 1;
  }
  return count;
}

test.serial('--help prints the usage and every option, exit 0', async (t) => {
  const result = await runCli(['--help'], { json: false });
  t.is(result.code, 0);
  t.regex(result.stdout, /<image> <mountpoint>/);
  for (const option of [
    '--writable',
    '--growable',
    '--allow-other',
    '--io-uring',
    '--threads',
    '--queue-depth',
    '--poll-max-us',
    '--cache',
    '--log-format',
    '--log-level',
    '--pidfile',
    '--version',
  ]) {
    t.true(result.stdout.includes(option), `${option} is documented`);
  }
});

test.serial('--version prints the package version, exit 0', async (t) => {
  const result = await runCli(['--version'], { json: false });
  t.is(result.code, 0);
  t.is(result.stdout.trim(), version);
});

test.serial('bad usage exits 1 with a message naming the problem, nothing mounted', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  const cases: [string[], RegExp][] = [
    [[], /image|mountpoint|argument/i],
    [[image], /mountpoint|argument/i],
    [['--threads', '0', image, mnt], /threads/],
    [['--threads', 'many', image, mnt], /threads/],
    [['--threads', '1.5', image, mnt], /threads/],
    [['--queue-depth', '0', image, mnt], /queue-depth/],
    [['--queue-depth', '100000', image, mnt], /queue-depth/],
    [['--poll-max-us', '-1', image, mnt], /poll-max-us/],
    [['--poll-max-us', '2.5', image, mnt], /poll-max-us/],
    [['--poll-max-us', '20000', image, mnt], /poll-max-us/],
    [['--cache', 'sometimes', image, mnt], /cache/],
    [['--allow-other', 'maybe', image, mnt], /allow-other/],
    [['--io-uring', 'perhaps', image, mnt], /io-uring/],
    [['--log-level', 'chatty', image, mnt], /log-level/],
    [['--log-format', 'xml', image, mnt], /log-format/],
    [['--bogus-option=1', image, mnt], /bogus-option|bogusOption/],
    [[image, mnt, 'extra'], /extra|argument/i],
  ];
  for (const [args, regex] of cases) {
    const result = await runCli(['--io-uring', 'off', ...args]);
    t.is(result.code, 1, `${args.join(' ')}: exit 1\n${result.stderr}`);
    t.regex(result.stderr, regex, `${args.join(' ')}: the message names the problem`);
    t.false(result.lines.some((l) => l.event === 'ready'), `${args.join(' ')}: never ready`);
  }
  assertUnmounted(t, mnt);
});

test.serial('an unknown option is refused by name before anything else: exit 1, nothing mounted', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  for (const bogus of ['--bogus', '--bogus=1', '-x']) {
    const name = bogus.split('=')[0];
    // Before the fix yargs took `--bogus image mnt` as --bogus=image and complained about positionals.
    const result = await runCli(['--io-uring', 'off', bogus, image, mnt]);
    t.is(result.code, 1, `${bogus}: exit 1`);
    t.is(result.stderr, `fuse-export: Unknown option: ${name}\nRun 'fuse-export --help' for usage.\n`, bogus);
    t.is(result.stdout, '');
  }
  assertUnmounted(t, mnt);
});

test.serial('a mountpoint that does not exist: says so once and how to make one, exit 1, nothing created', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const missing = join(dir, 'no such mnt');
  const result = await runCli(['--io-uring', 'off', image, missing]);
  t.is(result.code, 1);
  t.is(result.lines.length, 1, `one line:\n${result.stderr}`);
  t.is(result.lines[0]!.level, 'error');
  t.is(
    result.lines[0]!.message,
    `Failed to stat ${missing}: the mountpoint does not exist. Create it as an empty regular file first: touch '${missing}'`,
  );
  t.notRegex(result.stderr, /ENOENT|no such file or directory/i, "Node's error text is not repeated");
  t.false(existsSync(missing));
});

eachTransport(test, 'the ready line carries the contract fields; every JSON line has level, message, timestamp', async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 3 * MiB + 4096);
  const mnt = makeMountpoint(dir);
  const exp = startCli(t, ['--io-uring', ioUring, '--writable', '--threads', '2', '--queue-depth', '32', image, mnt]);
  const ready = await exp.event('ready');
  t.is(ready.level, 'info');
  t.is(ready.mountpoint, mnt);
  t.is(ready.image, image);
  t.is(ready.size, 3 * MiB + 4096);
  t.is(ready.writable, true);
  t.is(ready.growable, false);
  t.is(ready.transport, transportFor(ioUring));
  t.is(ready.threads, 2);
  if (ready.transport === 'io_uring') {
    t.is(ready.ringQueues, possibleCpus(), 'one ring queue per possible CPU');
    t.is(ready.queueDepth, 32);
  } else {
    t.is(typeof ready.ringQueues, 'number');
    t.is(ready.ringQueues, 0, 'no ring queues on the legacy transport');
  }
  await stopExport(t, exp);
  t.true(exp.lines.length >= 2);
  for (const line of exp.lines) {
    t.falsy(line.raw, `every stderr line is JSON: ${line.raw}`);
    t.is(typeof line.level, 'string');
    t.is(typeof line.message, 'string');
    t.false(Number.isNaN(Date.parse(line.timestamp)), `timestamp ${line.timestamp}`);
  }
});

test.serial('--threads defaults to the number of CPUs; relative paths are reported absolute', async (t) => {
  const dir = tmpDir(t);
  makeImage(dir, 'disk.img', MiB);
  makeMountpoint(dir);
  const exp = startCli(t, ['--io-uring', 'off', 'disk.img', 'mnt'], { cwd: dir });
  const ready = await exp.event('ready');
  t.is(ready.threads, availableParallelism());
  t.is(ready.image, join(dir, 'disk.img'));
  t.is(ready.mountpoint, join(dir, 'mnt'));
  await stopExport(t, exp);
});

test.serial('--threads N on the legacy transport: one /dev/fuse descriptor per I/O thread, and it serves', async (t) => {
  for (const threads of [1, 3]) {
    const data = pattern(MiB, 41 + threads);
    const { mnt, exp } = await exported(t, { ioUring: 'off', threads, size: MiB, writable: true, extents: [[0, data]] });
    t.is(exp.ready.threads, threads);
    const fuseFds = readdirSync(`/proc/${exp.pid}/fd`).filter((fd) => {
      try {
        return readlinkSync(`/proc/${exp.pid}/fd/${fd}`) === '/dev/fuse';
      } catch {
        return false;
      }
    });
    t.is(fuseFds.length, threads, `${threads} thread(s): ${fuseFds.length} /dev/fuse descriptors`);
    const q = await qemuIo(mnt, ['write -P 0x2f 0 256k', 'read -P 0x2f 0 256k'], { cache: 'none' });
    t.true(q.ok, q.out);
    assertBytes(t, await readVia(mnt, 256 * KiB, 4096), data.subarray(256 * KiB, 256 * KiB + 4096));
    await stopExport(t, exp);
  }
});

eachTransport(test, '--pidfile is written at ready and removed at exit; SIGTERM stops with reason signal and counters', async (t, ioUring) => {
  const data = pattern(MiB, 40);
  const dir = tmpDir(t);
  const pidfile = join(dir, 'export.pid');
  const { mnt, exp } = await exported(t, { ioUring, size: MiB, writable: true, pidfile, extents: [[0, data]] });
  // (That it exists before the ready line is written is the next test's business.)
  await waitUntil(() => existsSync(pidfile), { timeout: 2000, what: 'the pidfile' });
  t.is(readFileSync(pidfile, 'utf8').trim(), String(exp.pid));
  assertBytes(t, await readVia(mnt, 0, 64 * KiB), data.subarray(0, 64 * KiB));
  t.deepEqual(await writeVia(mnt, 0, Buffer.alloc(4096, 1)), { ok: 4096 });

  const stopped = await stopExport(t, exp, 'SIGTERM');
  t.is(stopped.level, 'info');
  t.is(stopped.reason, 'signal');
  for (const counter of ['legacyRequests', 'ringRequests', 'bytesRead', 'bytesWritten', 'errors']) {
    t.true(Number.isInteger(stopped[counter]), `${counter} is a count: ${stopped[counter]}`);
  }
  t.true(stopped[requestCounter(ioUring)] > 0, 'requests were counted on the transport');
  t.true(stopped.bytesRead >= 64 * KiB, `bytesRead ${stopped.bytesRead}`);
  t.true(stopped.bytesWritten >= 4096, `bytesWritten ${stopped.bytesWritten}`);
  t.is(stopped.errors, 0);
  t.false(existsSync(pidfile), 'the pidfile is removed at exit');
});

test.serial('--pidfile is in place before the ready line is written (a script reading "ready" finds it)', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  const pidfile = join(dir, 'export.pid');
  const trace = join(dir, 'syscalls');
  // The exporter's own syscalls, in the order its main thread made them.
  const traced = startChild(t, [
    'strace', '-f', '-qq', '-e', 'trace=rename,renameat,renameat2,write', '-e', 'signal=none', '-s', '200', '-o', trace,
    process.execPath, CLI, '--log-format', 'json', '--io-uring', 'off', '--pidfile', pidfile, image, mnt,
  ]);
  await waitUntil(() => existsSync(pidfile), { timeout: 20_000, what: 'the pidfile' });
  process.kill(Number(readFileSync(pidfile, 'utf8')), 'SIGTERM');
  await traced.wait();
  assertUnmounted(t, mnt);
  const calls = readFileSync(trace, 'utf8').split('\n');
  const renamed = calls.findIndex((l) => /rename/.test(l) && l.includes(`"${pidfile}"`) && / = 0$/.test(l));
  const ready = calls.findIndex((l) => /write\(2, /.test(l) && l.includes('\\"event\\":\\"ready\\"'));
  t.true(renamed >= 0, 'the pidfile is put in place');
  t.true(ready >= 0, 'the ready line is written');
  t.true(renamed < ready, `pidfile at syscall ${renamed}, ready line at syscall ${ready}: the pidfile must come first`);
});

eachTransport(test, 'SIGINT stops cleanly: exit 0, reason signal, nothing mounted', async (t, ioUring) => {
  const { mnt, image, exp } = await exported(t, { ioUring, size: MiB, writable: true });
  t.deepEqual(await writeVia(mnt, 8192, Buffer.from('before SIGINT')), { ok: 13 });
  const stopped = await stopExport(t, exp, 'SIGINT');
  t.is(stopped.reason, 'signal');
  t.true(stopped.bytesWritten >= 13);
  assertBytes(t, readFile(image, 8192, 13), Buffer.from('before SIGINT'));
});

for (const command of [['umount'], ['fusermount3', '-u']]) {
  eachTransport(test, `an external \`${command.join(' ')}\` ends the export: exit 0, reason unmounted, pidfile removed`, async (t, ioUring) => {
    const dir = tmpDir(t);
    const pidfile = join(dir, 'export.pid');
    const { mnt, exp } = await exported(t, { ioUring, size: MiB, pidfile });
    await readVia(mnt, 0, 4096);
    await check([...command, mnt], { timeout: 20_000 });
    const { code } = await exp.wait();
    t.is(code, 0, exp.stderr());
    const stopped = exp.lines.find((l) => l.event === 'stopped');
    t.is(stopped?.reason, 'unmounted');
    // Passthrough (the passthrough pass) carries the read in the kernel: the export counts none.
    t.true(stopped?.passthrough ? stopped.bytesRead === 0 : stopped?.bytesRead >= 4096, `bytesRead ${stopped?.bytesRead}`);
    t.false(existsSync(pidfile));
    assertUnmounted(t, mnt);
  });
}

eachTransport(test, 'SIGTERM while another process holds the file open still unmounts and exits 0', async (t, ioUring) => {
  const { mnt, exp } = await exported(t, { ioUring, size: MiB, writable: true });
  const holder = startChild(t, [
    PYTHON,
    '-c',
    `import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
print('open', flush=True)
time.sleep(3)
try:
    os.pread(fd, 16, 0)
    print('read ok', flush=True)
except OSError as e:
    print('read failed', e.errno, flush=True)`,
    mnt,
  ]);
  await holder.waitFor(/open/);
  const stopped = await stopExport(t, exp);
  t.is(stopped.reason, 'signal');
  await holder.wait();
  t.regex(holder.output(), /read failed/, 'the holder cannot use the export any more');
});

eachTransport(test, 'acknowledged writes survive a SIGTERM in the middle of a write load', async (t, ioUring) => {
  const block = 4096;
  const count = 4096;
  const { mnt, image, exp } = await exported(t, { ioUring, size: block * count, writable: true });
  const writer = startChild(t, [PYTHON, FSOP, 'acked_writes', mnt, block, count]);
  await writer.waitFor(/"acked": 100\b/, 30_000);
  const stopped = await stopExport(t, exp);
  t.is(stopped.reason, 'signal');
  await writer.wait();
  const acked = ackedBlocks(writer.output());
  t.true(acked.length > 100, `${acked.length} writes acknowledged`);
  const lost = lostBlocks(image, writer.output(), block, count);
  t.deepEqual(lost, [], 'every acknowledged block is in the image');
});

/** Test-only fault knob of the core: the transport counts as broken after this many requests. */
const HALT_KNOB = 'FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS';

eachTransport(test, 'a fatal transport error halts: halted line with the reason, exit 2, nothing mounted', async (t, ioUring) => {
  const { mnt, exp } = await exported(t, { ioUring, size: MiB, writable: true, env: { [HALT_KNOB]: '40' } });
  // Requests until the injected fault: every one is answered (data or an error), none hangs.
  let failed;
  for (let i = 0; i < 100 && !failed; i++) {
    const answer = await fsop('read', [mnt, i * 4096, 4096]);
    if (answer.errno) failed = answer.errno;
  }
  t.truthy(failed, 'requests fail once the export has halted');
  const { code } = await exp.wait();
  t.is(code, 2, `exit status 2 after a halt:\n${exp.stderr()}`);
  const halted = exp.lines.find((l) => l.event === 'halted');
  t.is(halted?.level, 'error');
  t.regex(halted?.reason ?? '', /injected/, 'the halted line carries the reason');
  const stopped = exp.lines.find((l) => l.event === 'stopped');
  t.is(stopped?.reason, 'halted');
  t.true(stopped?.[requestCounter(ioUring)] > 0);
  assertUnmounted(t, mnt);
  t.is((await fsop('stat', [mnt])).ok?.size, 0, 'the path is the plain mountpoint file again');
});

test.serial('--log-level error: no info lines, yet the export serves and stops cleanly', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB, [[0, Buffer.from('quiet')]]);
  const mnt = makeMountpoint(dir);
  const pidfile = join(dir, 'pid');
  const exp = startCli(t, ['--io-uring', 'off', '--log-level', 'error', '--pidfile', pidfile, image, mnt]);
  await waitUntil(() => existsSync(pidfile), { what: 'the pidfile' });
  assertBytes(t, await readVia(mnt, 0, 5), Buffer.from('quiet'));
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.deepEqual(
    exp.lines.filter((l) => l.level !== 'error'),
    [],
    'only error lines',
  );
  assertUnmounted(t, mnt);
});

test.serial('--log-format pretty prints readable lines, not JSON', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const missing = join(dir, 'missing');
  const result = await runCli(['--log-format', 'pretty', '--io-uring', 'off', image, missing], { json: false });
  t.is(result.code, 1);
  t.regex(result.stderr, /Failed to stat/);
  t.true(result.lines.every((l) => l.raw !== undefined), `no JSON lines:\n${result.stderr}`);
});

test.serial('a set-up failure is logged as an error line in JSON and exits 1', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const result = await runCli(['--io-uring', 'off', image, dir]);
  t.is(result.code, 1);
  const error = result.lines.find((l) => l.level === 'error');
  t.truthy(error, result.stderr);
  t.regex(errorText(result), /is not a regular file/);
  t.false(Number.isNaN(Date.parse(error!.timestamp)));
  const answer = await fsop('stat', [dir]);
  t.truthy(answer.ok, 'the directory is untouched');
});
