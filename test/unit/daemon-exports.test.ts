// The daemon's image exports (the CLI's one export) against a fake core:
// listed under their id, refused on a used id or mountpoint, forgotten once
// stopped, their warnings named. No kernel involved.
import test, { type ExecutionContext } from 'ava';
import { relative } from 'node:path';
import { DaemonConfigError, StorageDaemon, type IoThreadSet } from 'fuse-export';
import type { NativeOptions } from '../../ts/native.js';
import { fakeCore, scratch, type FakeCore } from '../helpers/fake-core.js';

/** A daemon on a fake core that keeps the options and threads each export was started with, stopped after the test. */
function fakeDaemon(t: ExecutionContext, defaultThreads = 3) {
  const core = fakeCore();
  const started: { options: NativeOptions; ioThreads?: IoThreadSet[] }[] = [];
  const startExport: FakeCore['startExport'] = core.startExport;
  core.startExport = (options, onEvent, ioThreads) => {
    started.push({ options, ioThreads });
    return startExport(options, onEvent, ioThreads);
  };
  const daemon = new StorageDaemon({ defaultThreads, core, iothreads: [{ id: 'io0' }, { id: 'io1' }] });
  t.teardown(() => daemon.shutdown());
  return { core, daemon, started };
}

/** The daemon's next `exportDeleted`. */
const deleted = (daemon: StorageDaemon) => new Promise((resolve) => daemon.once('exportDeleted', resolve));

test('an image export is listed and counted under its id, its image standing for the node', async (t) => {
  const { daemon } = fakeDaemon(t);
  await daemon.addImageExport('cli', scratch(t));
  t.deepEqual(daemon.list(), [{ type: 'fuse', id: 'cli', 'node-name': 'fake.img', 'shutting-down': false }]);
  t.like(daemon.counters(), [{ id: 'cli', nodeName: 'fake.img', transport: 'legacy', legacyRequests: 7 }]);
  t.is(daemon.exportOf('fake.img'), undefined, 'an image is no node');
});

test("exports share the daemon's threads: the default set, one thread per iothread, each started once and ended by shutdown", async (t) => {
  const { core, daemon, started } = fakeDaemon(t, 5);
  await daemon.addImageExport('a', scratch(t));
  await daemon.addImageExport('b', scratch(t));
  const options = scratch(t);
  daemon.addBlockdev({ driver: 'file', 'node-name': 'disk', filename: options.image });
  await daemon.addExport({ type: 'fuse', id: 'c', 'node-name': 'disk', mountpoint: options.mountpoint, iothread: ['io1', 'io0'] });
  const second = scratch(t);
  daemon.addBlockdev({ driver: 'file', 'node-name': 'disk2', filename: second.image });
  await daemon.addExport({ type: 'fuse', id: 'd', 'node-name': 'disk2', mountpoint: second.mountpoint, iothread: 'io1' });
  t.deepEqual(core.calls.filter((call) => call.startsWith('threads:')), [
    'threads:fuse-export-iox5',
    'threads:iothread-io1-x1',
    'threads:iothread-io0-x1',
  ]);
  const [a, b, c, d] = started.map((start) => start.ioThreads ?? []);
  t.is(a?.length, 1);
  t.is(a?.[0], b?.[0], 'the image exports share the default set');
  t.is(c?.length, 2);
  t.is(d?.[0], c?.[0], "iothread io1's thread serves both of its exports");
  await daemon.shutdown();
  t.deepEqual(core.calls.filter((call) => call.startsWith('close:')).sort(), [
    'close:fuse-export-io',
    'close:iothread-io0-',
    'close:iothread-io1-',
  ]);
});

test('an id already in use is refused, and nothing is started', async (t) => {
  const { core, daemon } = fakeDaemon(t);
  await daemon.addImageExport('cli', scratch(t));
  await t.throwsAsync(daemon.addImageExport('cli', scratch(t)), {
    instanceOf: DaemonConfigError,
    message: "Block export id 'cli' is already in use",
  });
  t.deepEqual(core.calls, ['threads:fuse-export-iox3', 'start']);
});

test('a mountpoint already exported is refused, by a node export or an image export, relative or not', async (t) => {
  const { core, daemon } = fakeDaemon(t);
  const options = scratch(t);
  daemon.addBlockdev({ driver: 'file', 'node-name': 'disk', filename: options.image });
  await daemon.addExport({ type: 'fuse', id: 'exp0', 'node-name': 'disk', mountpoint: options.mountpoint });
  const used = `'${options.mountpoint}' is already the mountpoint of export 'exp0'`;
  await t.throwsAsync(daemon.addImageExport('cli', options), { instanceOf: DaemonConfigError, message: used });
  const mountpoint = relative(process.cwd(), options.mountpoint);
  await t.throwsAsync(daemon.addImageExport('cli', { ...options, mountpoint }), {
    instanceOf: DaemonConfigError,
    message: `'${mountpoint}' is already the mountpoint of export 'exp0'`,
  });
  t.deepEqual(core.calls, ['threads:fuse-export-iox3', 'start']);
});

test('a removed image export is forgotten, with the reason given', async (t) => {
  const { daemon } = fakeDaemon(t);
  await daemon.addImageExport('cli', scratch(t));
  const gone = deleted(daemon);
  const stopped = await daemon.removeExport('cli', 'signal');
  t.is(stopped.reason, 'signal');
  t.like(await gone, { id: 'cli', stopped: { reason: 'signal' } });
  t.deepEqual(daemon.list(), []);
});

test('an image export that stops by itself is forgotten, and its id free again', async (t) => {
  const { core, daemon } = fakeDaemon(t);
  const options = scratch(t);
  await daemon.addImageExport('cli', options);
  const gone = deleted(daemon);
  // Unmounted from outside: the kernel connection ends.
  core.emit({ kind: 'disconnected' });
  t.like(await gone, { id: 'cli', stopped: { reason: 'unmounted' } });
  t.deepEqual(daemon.list(), []);
  await daemon.addImageExport('cli', options);
  t.is(daemon.list().length, 1);
});

test("shutdown stops every export with the reason given; an image export's warnings carry its id", async (t) => {
  const { core, daemon } = fakeDaemon(t);
  const exp = await daemon.addImageExport('cli', scratch(t));
  const warnings: unknown[] = [];
  daemon.on('warning', (warning) => warnings.push(warning));
  core.emit({ kind: 'warning', reason: 'slow server', name: 'nbd-slow' });
  const stopped = new Promise((resolve) => exp.once('stopped', resolve));
  await daemon.shutdown('pidfile');
  t.like(await stopped, { reason: 'pidfile' });
  t.deepEqual(warnings, [{ message: 'slow server', event: 'nbd-slow', id: 'cli' }]);
  t.deepEqual(daemon.list(), []);
});
