// The Node API: FuseExport.start(), info, transport, stats(), stop() (twice),
// the 'stopped' event, set-up errors. I/O on the mount goes through child
// processes, never through this process that also serves the export.
import test from 'ava';
import { join } from 'node:path';
import type { ExportOptions, ExportStats, StoppedEvent } from 'fuse-export';
import {
  assertBytes,
  assertUnmounted,
  check,
  eachTransport,
  fsop,
  fsopOk,
  FuseExport,
  KiB,
  makeImage,
  makeMountpoint,
  MiB,
  mountOn,
  pattern,
  readFile,
  readVia,
  requestCounter,
  startApi,
  tmpDir,
  transportFor,
  within,
  writeVia,
} from './helpers/index.js';

const COUNTERS: (keyof ExportStats)[] = ['legacyRequests', 'ringRequests', 'bytesRead', 'bytesWritten', 'errors', 'inFlight'];

eachTransport(test, 'start, info, stats that move with I/O, stop (twice) and the stopped event', async (t, ioUring) => {
  const dir = tmpDir(t);
  const data = pattern(2 * MiB, 50);
  const image = makeImage(dir, 'disk.img', 2 * MiB, [[0, data]]);
  const mnt = makeMountpoint(dir);
  const exp = await startApi(t, { image, mountpoint: mnt, writable: true, ioUring, threads: 2 });

  t.is(exp.transport, transportFor(ioUring));
  t.is(exp.info.mountpoint, mnt);
  t.is(exp.info.image, image);
  t.is(exp.info.size, 2 * MiB);
  t.is(exp.info.writable, true);
  t.is(exp.info.growable, false);
  t.is(exp.info.threads, 2);
  t.truthy(mountOn(mnt), 'mounted');

  const before = exp.stats();
  for (const counter of COUNTERS) t.true(Number.isInteger(before[counter]), `${counter}: ${before[counter]}`);
  assertBytes(t, await readVia(mnt, 0, 256 * KiB), data.subarray(0, 256 * KiB));
  t.deepEqual(await writeVia(mnt, MiB, Buffer.alloc(64 * KiB, 0x77)), { ok: 64 * KiB });
  const after = exp.stats();
  t.true(after.bytesRead - before.bytesRead >= 256 * KiB, `bytesRead ${before.bytesRead} -> ${after.bytesRead}`);
  t.true(after.bytesWritten - before.bytesWritten >= 64 * KiB, `bytesWritten ${before.bytesWritten} -> ${after.bytesWritten}`);
  const counter = requestCounter(ioUring);
  t.true(after[counter] > before[counter], `${counter} ${before[counter]} -> ${after[counter]}`);
  t.is(after.errors, 0);
  t.is(after.inFlight, 0, 'nothing in flight when idle');

  const events: StoppedEvent[] = [];
  exp.on('stopped', (event) => events.push(event));
  const [first, second] = await within(Promise.all([exp.stop(), exp.stop()]), 20_000, 'stop()');
  t.is(first.reason, 'api');
  t.deepEqual(second, first, 'both calls get the same result');
  const third = await within(exp.stop(), 5_000, 'a stop() after the stop');
  t.deepEqual(third, first, 'stop() after the stop is safe');
  t.is(events.length, 1, "one 'stopped' event");
  t.is(events[0].reason, 'api');
  t.true(events[0].bytesWritten >= after.bytesWritten);
  assertUnmounted(t, mnt);
  const last = exp.stats();
  t.true(last.bytesRead >= after.bytesRead, 'stats() after stop keeps the last values');
  assertBytes(t, readFile(image, MiB, 64 * KiB), Buffer.alloc(64 * KiB, 0x77), 'the write is in the image');
});

eachTransport(test, "unmounted from outside: 'stopped' with reason 'unmounted'", async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  const exp = await startApi(t, { image, mountpoint: mnt, ioUring });
  const stopped = new Promise<StoppedEvent>((resolve) => exp.once('stopped', resolve));
  await check(['umount', mnt], { timeout: 20_000 });
  const event = await within(stopped, 20_000, "the 'stopped' event");
  t.is(event.reason, 'unmounted');
  assertUnmounted(t, mnt);
  t.is((await within(exp.stop(), 5_000, 'stop() after the unmount')).reason, 'unmounted');
});

test.serial('set-up errors reject with the contract messages and leave nothing mounted', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB, [[0, Buffer.from('first')]]);
  const mnt = makeMountpoint(dir);
  const start = (options: Partial<ExportOptions>) => within(FuseExport.start({ ioUring: 'off', image, mountpoint: mnt, ...options }), 20_000, 'start()');

  const missing = join(dir, 'missing');
  await t.throwsAsync(start({ mountpoint: missing }), { message: new RegExp(`Failed to stat ${missing}`) });
  await t.throwsAsync(start({ mountpoint: dir }), { message: /is not a regular file/ });
  await t.throwsAsync(start({ image: join(dir, 'nope.img') }), { message: /nope\.img/ });
  await t.throwsAsync(start({ growable: true }), { message: /--writable|writable/ });
  await t.throwsAsync(start({ threads: 0 }), { message: /threads/ });
  await t.throwsAsync(start({ pollMaxUs: -1 }), { message: /poll-max-us/ });
  assertUnmounted(t, mnt);

  // A second export on a mountpoint this process already exports: refused
  // before anything touches the path (a stat would deadlock on our own mount).
  const first = await startApi(t, { image, mountpoint: mnt });
  await t.throwsAsync(start({}), { message: new RegExp(`There already is a FUSE export on ${mnt}`) });
  assertBytes(t, await readVia(mnt, 0, 5), Buffer.from('first'), 'the first export still serves');
  await within(first.stop(), 20_000, 'stop()');
  assertUnmounted(t, mnt);

  // Once stopped, the mountpoint can be exported again.
  const again = await startApi(t, { image, mountpoint: mnt });
  assertBytes(t, await readVia(mnt, 0, 5), Buffer.from('first'));
  await within(again.stop(), 20_000, 'stop()');
  assertUnmounted(t, mnt);
});

eachTransport(test, "a halt reaches the API: 'halted' with the reason, then 'stopped' with reason 'halted'", async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', MiB);
  const mnt = makeMountpoint(dir);
  // The core reads its test-only fault knobs from the environment at start.
  process.env.FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS = '30';
  let exp: Awaited<ReturnType<typeof startApi>>;
  try {
    exp = await startApi(t, { image, mountpoint: mnt, ioUring });
  } finally {
    delete process.env.FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS;
  }
  const halted = new Promise<{ reason: string }>((resolve) => exp.once('halted', resolve));
  const stopped = new Promise<StoppedEvent>((resolve) => exp.once('stopped', resolve));
  for (let i = 0; i < 100; i++) {
    if ((await fsop('read', [mnt, 0, 4096])).errno) break;
  }
  const { reason } = await within(halted, 20_000, "the 'halted' event");
  t.regex(reason, /injected/);
  t.is((await within(stopped, 20_000, "the 'stopped' event")).reason, 'halted');
  assertUnmounted(t, mnt);
});

eachTransport(test, 'INIT negotiates 1 MiB transfers: a 4 MiB direct write or read is a handful of requests', async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 8 * MiB);
  const mnt = makeMountpoint(dir);
  const exp = await startApi(t, { image, mountpoint: mnt, ioUring, writable: true });
  const requests = () => {
    const s = exp.stats();
    return s.legacyRequests + s.ringRequests;
  };
  const data = pattern(4 * MiB, 51);
  let before = requests();
  const bytesBefore = exp.stats().bytesWritten;
  t.deepEqual(await writeVia(mnt, 0, data, { how: 'direct' }), { ok: 4 * MiB });
  let used = requests() - before;
  t.is(exp.stats().bytesWritten - bytesBefore, 4 * MiB);
  // 4 WRITEs of 1 MiB, plus OPEN, FLUSH, RELEASE and maybe a GETATTR; 128 KiB writes would need 32.
  t.log(`${used} requests for a 4 MiB O_DIRECT write`);
  t.true(used <= 10, `${used} requests for a 4 MiB O_DIRECT write`);
  before = requests();
  const back = Buffer.from(await fsopOk('read', [mnt, 0, 4 * MiB, 'rdirect']), 'hex');
  used = requests() - before;
  t.true(used <= 10, `${used} requests for a 4 MiB O_DIRECT read`);
  assertBytes(t, back, data);
});
