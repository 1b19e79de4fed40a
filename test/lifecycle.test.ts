// The life of an export, end to end: a killed exporter's dead mount, SIGTERM
// under load, a signal during start, two signals, two exports in one
// process, and the stats events. (A halt: cli.test.ts.)
import test from 'ava';
import { existsSync } from 'node:fs';
import {
  assertBytes,
  assertUnmounted,
  exported,
  exportImage,
  fio,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  readVia,
  run,
  startApi,
  startCli,
  tmpDir,
  waitUntil,
  writeVia,
  mountOn,
  eachTransport,
} from './helpers/index.js';

function fioLoad(file: string, seconds: number) {
  return fio(
    ['--name=load', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--size=16M', '--numjobs=2',
      '--offset_increment=16M', '--iodepth=16', '--ioengine=io_uring', '--direct=1', '--time_based',
      `--runtime=${seconds}`],
    { timeout: 60_000 },
  );
}

eachTransport(test, 'kill -9, then a restart on the same mountpoint recovers the dead mount', async (t, ioUring) => {
  const data = pattern(256 * 1024, 5);
  const { exp, mnt, image } = await exported(t, { ioUring, writable: true, size: 8 * MiB });
  await writeVia(mnt, 0, data);
  exp.signal('SIGKILL');
  await exp.wait();
  const dead = await run(['stat', mnt], { timeout: 10_000 });
  t.regex(dead.stderr, /Transport endpoint is not connected|Software caused connection abort/);

  const again = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  const warning = again.lines.find((l) => l.event === 'dead-mount');
  t.truthy(warning, 'the dead mount is reported');
  t.regex(warning!.message, /dead FUSE mount/);
  assertBytes(t, await readVia(mnt, 0, data.length), data, 'acknowledged data is there after the crash');
  t.is(mountOn(mnt)?.fsType, 'fuse.fuse-export');
});

eachTransport(test, 'SIGTERM while fio writes: exit 0 within the timeout, nothing left mounted', async (t, ioUring) => {
  const { exp, mnt } = await exported(t, { ioUring, writable: true, size: 32 * MiB, args: ['--shutdown-timeout', '5'] });
  const load = fioLoad(mnt, 10);
  await new Promise((r) => setTimeout(r, 1500));
  const signalled = Date.now();
  exp.signal('SIGTERM');
  const { code } = await exp.wait(15_000);
  t.is(code, 0, exp.stderr());
  t.true(Date.now() - signalled < 7000, 'the stop honours --shutdown-timeout');
  const stopped = exp.lines.find((l) => l.event === 'stopped');
  t.is(stopped?.reason, 'signal');
  t.true(stopped?.bytesWritten > 0);
  // fio still holds the file: it sees errors now, but must not hang.
  t.false((await load).timedOut);
  assertUnmounted(t, mnt);
});

test.serial('a signal during start stops the export as soon as it is up', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 4 * MiB);
  const mnt = makeMountpoint(dir);
  const exp = startCli(t, [image, mnt]);
  // Mounted but (most likely) not yet ready: INIT is still on its way.
  await waitUntil(() => mountOn(mnt) !== undefined, { interval: 1, what: 'the mount' });
  exp.signal('SIGTERM');
  const { code } = await exp.wait();
  t.is(code, 0, exp.stderr());
  assertUnmounted(t, mnt);
});

test.serial('a second signal aborts instead of waiting for the drain', async (t) => {
  const { exp, mnt } = await exported(t, { writable: true, args: ['--shutdown-timeout', '60'] });
  exp.signal('SIGTERM');
  exp.signal('SIGTERM');
  const { code } = await exp.wait(15_000);
  t.is(code, 0, exp.stderr());
  assertUnmounted(t, mnt);
});

test.serial('two exports in one process, each with its own mountpoint and life', async (t) => {
  const dir = tmpDir(t);
  const a = { image: makeImage(dir, 'a.img', 4 * MiB), mountpoint: makeMountpoint(dir, 'a') };
  const b = { image: makeImage(dir, 'b.img', 8 * MiB), mountpoint: makeMountpoint(dir, 'b') };
  const first = await startApi(t, { ...a, writable: true });
  const second = await startApi(t, { ...b, writable: true });
  await writeVia(a.mountpoint, 0, pattern(4096, 1));
  await writeVia(b.mountpoint, 0, pattern(4096, 2));
  const stopped = await first.stop();
  t.is(stopped.reason, 'api');
  assertUnmounted(t, a.mountpoint);
  t.is(second.state, 'serving');
  assertBytes(t, await readVia(b.mountpoint, 0, 4096), pattern(4096, 2), 'the other export goes on');
  t.true(second.stats().bytesRead >= 4096);
  await second.stop();
  await second.stop();
  assertUnmounted(t, b.mountpoint);
});

test.serial('--stats-interval logs counters as stats events', async (t) => {
  const { exp, mnt } = await exported(t, { writable: true, args: ['--stats-interval', '0.2'] });
  await writeVia(mnt, 0, pattern(MiB, 4));
  await waitUntil(() => exp.lines.filter((l) => l.event === 'stats').length >= 2, { what: 'stats events' });
  const stats = exp.lines.filter((l) => l.event === 'stats');
  for (const line of stats) {
    for (const field of ['iops', 'readBytesPerSecond', 'writeBytesPerSecond', 'inFlight', 'requests', 'errors']) {
      t.is(typeof line[field], 'number', field);
    }
  }
  t.true(stats.at(-1)!.requests > 0);
});

test.serial('--quiet keeps info lines out, warnings and errors in', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 4 * MiB);
  const mnt = makeMountpoint(dir);
  const pidfile = `${dir}/pid`;
  const exp = startCli(t, ['--quiet', '--pidfile', pidfile, '--allow-other', 'on', image, mnt]);
  await waitUntil(() => existsSync(pidfile), { what: 'the pidfile' });
  exp.signal('SIGTERM');
  t.is((await exp.wait()).code, 0);
  t.deepEqual(exp.lines, [], 'nothing but warnings and errors, and there were none');
  const noisy = startCli(t, ['--quiet', image, mnt.replace(/mnt$/, 'missing')]);
  t.is((await noisy.wait()).code, 1);
  t.is(noisy.lines.at(-1)?.level, 'error');
});
