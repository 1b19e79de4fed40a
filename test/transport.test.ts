// The FUSE-over-io_uring transport: the kernel's switch, the choice `auto`
// makes, REGISTER failures, ring queues over fewer threads, shallow queues,
// and an unmount from outside under load.
import test from 'ava';
import {
  assertUnmounted,
  exported,
  fio,
  MiB,
  pattern,
  readFile,
  readVia,
  run,
  runCli,
  makeImage,
  makeMountpoint,
  tmpDir,
  writeVia,
  assertBytes,
  kernelHasUring,
  setUring,
} from './helpers/index.js';

const uringTest = kernelHasUring ? test.serial : test.serial.skip;

/** fio with crc32c verification: 2 jobs at iodepth 16, each its own range. */
function fioVerify(file: string, { seconds = 3, size = '8M' } = {}) {
  return fio(
    [
      '--name=verify', `--filename=${file}`, '--rw=randwrite', '--bs=4k', `--size=${size}`,
      `--offset_increment=${size}`, '--numjobs=2', '--iodepth=16', '--ioengine=io_uring', '--direct=1',
      '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', `--runtime=${seconds}`, '--group_reporting',
    ],
    { timeout: 120_000 },
  );
}

uringTest('--io-uring auto with the switch off serves over /dev/fuse and says why', async (t) => {
  setUring(t, 'N');
  const { exp } = await exported(t, { ioUring: 'auto', writable: true });
  t.is(exp.ready.transport, 'legacy');
  const transport = exp.lines.find((l) => l.event === 'transport');
  t.regex(transport?.reason, /switched off/);
});

uringTest('--io-uring auto with the switch on serves over the ring: every request but INIT', async (t) => {
  setUring(t, 'Y');
  const data = pattern(MiB, 3);
  const { exp, mnt, image } = await exported(t, { ioUring: 'auto', writable: true, size: 8 * MiB });
  t.is(exp.ready.transport, 'io_uring');
  t.is(exp.ready.ringQueues, 2);
  t.is(exp.ready.queueDepth, 64);
  await writeVia(mnt, MiB, data);
  assertBytes(t, await readVia(mnt, MiB, MiB), data);
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  const stopped = exp.lines.find((l) => l.event === 'stopped')!;
  t.true(stopped.ringRequests > 10, `ringRequests ${stopped.ringRequests}`);
  t.true(stopped.legacyRequests <= 3, `legacyRequests ${stopped.legacyRequests}: only INIT and the like`);
  assertBytes(t, readFile(image, MiB, MiB), data, 'the image holds the bytes');
});

uringTest('a refused REGISTER: `on` fails at start, `auto` falls back to /dev/fuse with a warning', async (t) => {
  setUring(t, 'Y');
  const env = { FUSE_EXPORT_TEST_RING_PAYLOAD_BYTES: '4096' };
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 4 * MiB);
  const mnt = makeMountpoint(dir);
  const on = await run([process.execPath, 'dist/cli/main.js', '--log-format', 'json', '--io-uring', 'on', image, mnt], { env });
  t.is(on.code, 1);
  t.regex(on.stderr, /REGISTER of ring queue \d+ failed: Invalid argument/);
  assertUnmounted(t, mnt);

  const { exp, mnt: mnt2 } = await exported(t, { ioUring: 'auto', writable: true, env });
  t.is(exp.ready.transport, 'legacy');
  t.truthy(exp.lines.find((l) => l.level === 'warn' && /REGISTER/.test(l.message)), 'the fallback is a warning');
  const data = pattern(64 * 1024, 9);
  await writeVia(mnt2, 0, data);
  assertBytes(t, await readVia(mnt2, 0, data.length), data);
});

uringTest('--threads 1 serves both ring queues, and fio verifies', async (t) => {
  setUring(t, 'Y');
  const { exp, mnt } = await exported(t, { ioUring: 'on', writable: true, threads: 1, size: 32 * MiB });
  t.is(exp.ready.threads, 1);
  t.is(exp.ready.ringQueues, 2);
  // Callers on both CPUs: the kernel routes each to its own CPU's queue.
  const fio = await fioVerify(mnt);
  t.is(fio.code, 0, fio.stdout + fio.stderr);
  t.regex(fio.stdout, /err= 0/);
});

uringTest('--queue-depth 1 still serves 2 jobs at iodepth 16', async (t) => {
  setUring(t, 'Y');
  const { exp, mnt } = await exported(t, { ioUring: 'on', writable: true, queueDepth: 1, size: 32 * MiB });
  t.is(exp.ready.queueDepth, 1);
  const fio = await fioVerify(mnt, { seconds: 2 });
  t.is(fio.code, 0, fio.stdout + fio.stderr);
});

for (const ioUring of ['on', 'off'] as const) {
  uringTest(`--poll-max-us 250 (threads busy-poll) serves iodepth 16 and iodepth 1 (--io-uring ${ioUring})`, async (t) => {
    setUring(t, 'Y');
    const { mnt } = await exported(t, { ioUring, writable: true, pollMaxUs: 250, size: 32 * MiB });
    const deep = await fioVerify(mnt, { seconds: 2 });
    t.is(deep.code, 0, deep.stdout + deep.stderr);
    const shallow = await fio(
      ['--name=shallow', `--filename=${mnt}`, '--rw=randwrite', '--bs=4k', '--size=8M', '--iodepth=1',
        '--ioengine=io_uring', '--direct=1', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1'],
      { timeout: 120_000 },
    );
    t.is(shallow.code, 0, shallow.stdout + shallow.stderr);
    t.regex(shallow.stdout, /err= 0/);
  });
}

uringTest('an unmount from outside while fio runs ends the export cleanly', async (t) => {
  setUring(t, 'Y');
  const { exp, mnt } = await exported(t, { ioUring: 'on', writable: true, size: 32 * MiB });
  const load = fio(
    ['--name=load', `--filename=${mnt}`, '--rw=randrw', '--bs=4k', '--size=32M', '--numjobs=2',
      '--iodepth=16', '--ioengine=io_uring', '--direct=1', '--time_based', '--runtime=5'],
    { timeout: 60_000 },
  );
  await new Promise((r) => setTimeout(r, 1500));
  const umount = await run(['umount', mnt], { timeout: 20_000 });
  // Busy while fio holds the file: a lazy unmount is what such a user does.
  if (umount.code !== 0) t.is((await run(['umount', '-l', mnt], { timeout: 20_000 })).code, 0);
  const result = await load;
  t.false(result.timedOut, 'fio is not left hanging');
  const { code } = await exp.wait(30_000);
  t.is(code, 0, exp.stderr());
  t.is(exp.lines.find((l) => l.event === 'stopped')?.reason, 'unmounted');
  assertUnmounted(t, mnt);
});
