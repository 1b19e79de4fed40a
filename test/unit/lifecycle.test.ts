// The life cycle against a fake core: states, references, drain, halt,
// double stop, start failures, and the stop policy (one deadline, one
// abort, every give-up a warning). No kernel involved.
import test, { type ExecutionContext } from 'ava';
import { FuseExport, SetupError, type ExportOptions, type ExportWarning, type ExportState, type StoppedEvent } from 'fuse-export';
import { fakeCore, scratch, type FakeCore } from '../helpers/fake-core.js';

/** The warnings an export emits, from now on. */
function warningsOf(exp: FuseExport): ExportWarning[] {
  const warnings: ExportWarning[] = [];
  exp.on('warning', (w) => warnings.push(w));
  return warnings;
}

/** How the fake core behaves: see FakeCore. */
type Behaviour = Partial<Pick<FakeCore, 'inFlight' | 'busy' | 'abortError' | 'threadsLeft'>>;

/** A fake core that behaves so, an export started on it, and the export's warnings. */
async function startFake(t: ExecutionContext, behaviour: Behaviour = {}, options: Partial<ExportOptions> = {}) {
  const core = Object.assign(fakeCore(), behaviour);
  const exp = await FuseExport.start({ ...scratch(t), ...options }, {}, core);
  return { core, exp, warnings: warningsOf(exp) };
}

const tick = (ms = 10): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('a stop drains, unmounts and releases, in that order', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const states: ExportState[] = [];
  exp.on('state', ({ to }) => states.push(to));
  t.is(exp.state, 'serving');
  const warnings = warningsOf(exp);
  const stopped = await exp.stop();
  t.deepEqual(core.calls, ['start', 'pause', 'unmount', 'stop']);
  t.deepEqual(warnings, [], 'a clean stop warns of nothing');
  t.deepEqual(states, ['draining', 'stopped']);
  t.is(stopped.reason, 'api');
  t.is(stopped.legacyRequests, 7);
  t.is(stopped.abandoned, 0);
});

test('stop twice is safe and tears down once', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const [a, b] = await Promise.all([exp.stop(), exp.stop('signal')]);
  t.is(a, b);
  t.is(core.calls.filter((c) => c === 'stop').length, 1);
  t.deepEqual(await exp.stop(), a);
});

test('the drain waits for in-flight requests before unmounting', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start({ ...scratch(t), shutdownTimeout: 5000 }, {}, core);
  core.inFlight = 3;
  const stopping = exp.stop();
  await tick(50);
  t.false(core.calls.includes('unmount'));
  t.is(exp.state, 'draining');
  core.inFlight = 0;
  const stopped = await stopping;
  t.is(stopped.abandoned, 0);
  t.false(core.calls.includes('abort'));
});

test('a drain past the shutdown timeout aborts the connection and says so', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const warnings: ExportWarning[] = [];
  exp.on('warning', (w) => warnings.push(w));
  core.inFlight = 2;
  const stopped = await exp.stop();
  t.is(stopped.abandoned, 2);
  t.true(core.calls.indexOf('abort') < core.calls.indexOf('unmount'));
  t.is(warnings[0].event, 'drain-timeout');
});

test('the export is released only when the last reference is dropped', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const release = exp.ref('backup');
  t.deepEqual(exp.holders().sort(), ['backup', 'connection', 'owner']);
  const stopping = exp.stop();
  await tick(30);
  t.true(core.calls.includes('unmount'));
  t.false(core.calls.includes('stop'), 'memory stays while a holder remains');
  release();
  release();
  await stopping;
  t.true(core.calls.includes('stop'));
  t.throws(() => exp.ref('late'));
});

test('a halt from the core reports its reason, unmounts and stops', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const halted = new Promise<{ reason: string }>((r) => exp.once('halted', r));
  const stopped = new Promise<StoppedEvent>((r) => exp.once('stopped', r));
  core.emit({ kind: 'halted', reason: 'COMMIT_AND_FETCH failed: EIO' });
  t.deepEqual(await halted, { reason: 'COMMIT_AND_FETCH failed: EIO' });
  t.is(exp.state, 'halted');
  const event = await stopped;
  t.is(event.reason, 'halted');
  t.true(core.calls.includes('unmount'));
  t.is(exp.state, 'stopped');
});

test('halt() from the API goes through the core and stops', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const event = await exp.halt('operator said so');
  t.is(event.reason, 'halted');
  t.true(core.calls.includes('halt:operator said so'));
});

test('an unmount from outside is a clean stop', async (t) => {
  const core = fakeCore();
  const exp = await FuseExport.start(scratch(t), {}, core);
  const stopped = new Promise<StoppedEvent>((r) => exp.once('stopped', r));
  core.emit({ kind: 'disconnected' });
  t.is((await stopped).reason, 'unmounted');
  t.is(exp.state, 'stopped');
});

test('a mountpoint already exported by this process is refused', async (t) => {
  const core = fakeCore();
  const options = scratch(t);
  const exp = await FuseExport.start(options, {}, core);
  const error = await t.throwsAsync(FuseExport.start(options, {}, fakeCore()), { instanceOf: SetupError });
  t.regex(error!.message, /There already is a FUSE export on /);
  await exp.stop();
  const again = await FuseExport.start(options, {}, fakeCore());
  await again.stop();
});

test('a failed start leaves the mountpoint free', async (t) => {
  const options = scratch(t);
  await t.throwsAsync(FuseExport.start(options, {}, fakeCore({ failStart: 'Failed to mount: EPERM' })), {
    instanceOf: SetupError,
    message: 'Failed to mount: EPERM',
  });
  const exp = await FuseExport.start(options, {}, fakeCore());
  await exp.stop();
});

test('bad options are refused before anything is touched', async (t) => {
  const core = fakeCore();
  const options = scratch(t);
  await t.throwsAsync(FuseExport.start({ ...options, threads: 0 }, {}, core), { message: /threads must be a whole number/ });
  await t.throwsAsync(FuseExport.start({ ...options, growable: true }, {}, core), { message: /--growable needs --writable/ });
  // JavaScript callers get no type check: the value is checked at run time too.
  // @ts-expect-error -- not a Switch, on purpose
  await t.throwsAsync(FuseExport.start({ ...options, ioUring: 'maybe' }, {}, core), { message: /io-uring must be one of/ });
  t.deepEqual(core.calls, []);
});

test('set-up warnings reach onWarning before start() resolves, or come as events right after', async (t) => {
  const core = fakeCore();
  const original = core.startExport;
  core.startExport = async (...args) => {
    const handle = await original.apply(core, args);
    return { ...handle, info: () => ({ ...handle.info(), warnings: ['allow_other is not permitted'] }) };
  };
  const seen: string[] = [];
  const exp = await FuseExport.start(scratch(t), { onWarning: (w) => seen.push(w.message) }, core);
  t.deepEqual(seen, ['allow_other is not permitted']);
  await exp.stop();

  const later = await FuseExport.start(scratch(t), {}, core);
  const warning = await new Promise<ExportWarning>((r) => later.once('warning', r));
  t.is(warning.message, 'allow_other is not permitted');
  await later.stop();
});

test('the connection reference is dropped when the connection really ends, not at the unmount', async (t) => {
  // Someone holds the file: the lazy unmount does not end the connection.
  const { core, exp } = await startFake(t, { busy: true }, { shutdownTimeout: 5000 });
  const stopping = exp.stop();
  await tick(50);
  t.true(core.calls.includes('unmount'));
  t.true(exp.holders().includes('connection'), 'still connected after the lazy unmount');
  t.false(core.calls.includes('stop'));
  core.emit({ kind: 'disconnected' });
  await tick(10);
  t.false(exp.holders().includes('connection'), "dropped on 'disconnected'");
  await stopping;
  t.deepEqual(core.calls, ['start', 'pause', 'unmount', 'stop']);
});

test('a connection that does not end by the deadline: connection-busy, one abort, then the stop finishes', async (t) => {
  const { core, exp, warnings } = await startFake(t, { busy: true });
  const started = Date.now();
  await exp.stop();
  const took = Date.now() - started;
  t.true(took >= 190 && took < 1500, `stop took ${took} ms for a 200 ms shutdown timeout`);
  t.deepEqual(core.calls, ['start', 'pause', 'unmount', 'abort', 'stop']);
  t.deepEqual(warnings.map((w) => w.event), ['connection-busy']);
  t.regex(warnings[0]!.message, /still open somewhere/);
});

test('abort is called at most once: the drain timeout, a busy connection and a second signal share one', async (t) => {
  // A refused abort: no 'disconnected' ever comes, so every rule would want to abort again.
  const { core, exp, warnings } = await startFake(t, { inFlight: 2, busy: true, abortError: 'refused' });
  const stopped = await exp.stop();
  exp.abort();
  t.is(core.calls.filter((c) => c === 'abort').length, 1);
  t.is(stopped.abandoned, 2);
  t.deepEqual(warnings.map((w) => w.event), ['drain-timeout', 'abort-failed']);

  const { core: again, exp: second } = await startFake(t, { busy: true, abortError: 'refused' });
  second.abort(); // a second signal before the stop, and a third
  second.abort();
  await second.stop();
  t.is(again.calls.filter((c) => c === 'abort').length, 1);
});

test('a failed abort is reported with the core message and the stop still finishes', async (t) => {
  const abortError = 'Failed to abort the FUSE connection through /sys/fs/fuse/connections/42/abort: No such file';
  const { core, exp, warnings } = await startFake(t, { inFlight: 1, busy: true, abortError });
  const started = Date.now();
  const stopped = await exp.stop();
  t.true(Date.now() - started < 1500, 'within about the shutdown timeout');
  t.deepEqual(warnings.map((w) => w.event), ['drain-timeout', 'abort-failed']);
  t.is(warnings[1]!.message, abortError);
  t.is(stopped.reason, 'api');
  t.is(exp.state, 'stopped');
  t.is(core.calls.filter((c) => c === 'abort').length, 1);
  t.true(core.calls.includes('stop'));
});

test('a reference never released: the stop resolves after about the shutdown timeout, naming the holder', async (t) => {
  const { core, exp, warnings } = await startFake(t);
  exp.ref('backup-job');
  const started = Date.now();
  const stopped = await exp.stop();
  const took = Date.now() - started;
  t.true(took >= 190 && took < 1500, `stop took ${took} ms for a 200 ms shutdown timeout`);
  t.is(stopped.reason, 'api');
  t.deepEqual(warnings.map((w) => w.event), ['references-held']);
  t.regex(warnings[0]!.message, /still held by backup-job/);
  t.deepEqual(warnings[0]!.holders, ['backup-job']);
  t.false(core.calls.includes('abort'), 'a reference is no reason to abort');
  t.deepEqual(core.calls.slice(-2), ['unmount', 'stop']);
  t.throws(() => exp.ref('late'), { message: /already stopped/ }, 'no new reference once stopped');
});

test('the I/O threads get the time left until the deadline, at least 1000 ms; threads left are reported', async (t) => {
  const { core, exp } = await startFake(t, {}, { shutdownTimeout: 5000 });
  await exp.stop();
  t.true(core.stopWaits[0]! > 4000 && core.stopWaits[0]! <= 5000, `waitMs ${core.stopWaits[0]}`);

  const { core: late, exp: short, warnings } = await startFake(t, { threadsLeft: 2 });
  short.ref('slow');
  await short.stop(); // the deadline passes waiting for 'slow'
  t.is(late.stopWaits[0], 1000, 'at least 1000 ms even past the deadline');
  t.deepEqual(warnings.map((w) => w.event), ['references-held', 'threads-left']);
  t.is(warnings[1]!.threads, 2);
  t.regex(warnings[1]!.message, /2 I\/O thread\(s\) still running/);
});
