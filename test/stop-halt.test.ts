// A stop or a halt never keeps a caller waiting: what needs no image I/O is
// answered during a drain, what was held fails once unmounted, and a halted
// export answers everything with EIO at once, on both transports.
import test from 'ava';
import { assertAnsweredAtOnce, eachTransport, exported, holdOpen, isMounted, MiB, readThrough, run, waitUntil } from './helpers/index.js';

/** Test-only fault knob of the core: the transport counts as broken after this many requests. */
const HALT_KNOB = 'FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS';
/** What "at once" means for a caller. */
const PROMPT_MS = 1000;


eachTransport(test, 'a halt answers at once: a reader that keeps reading gets EIO within 1 s per call, and the export exits 2 once it closes', async (t, ioUring) => {
  const { mnt, exp } = await exported(t, { ioUring, size: 4 * MiB, env: { [HALT_KNOB]: '60' } });
  const reader = readThrough(t, mnt, 3);
  await reader.failing();
  await exp.event('halted');
  const reads = await reader.done();
  const closed = Date.now();
  assertAnsweredAtOnce(t, reads, PROMPT_MS);
  t.true(reads.errnos.EIO > 10, `reads through the halt get EIO: ${JSON.stringify(reads.errnos)}`);
  t.is((await exp.wait()).code, 2);
  t.true(Date.now() - closed < 3000, `the stop ended ${Date.now() - closed} ms after the reader closed the file`);
  t.deepEqual(exp.lines.filter((l) => l.event === 'connection-busy' || l.event === 'drain-timeout'), [], 'the stop waited for no deadline');
});

eachTransport(test, 'a stop never holds a caller: df right after SIGTERM, then statfs, fsync and close of a file held open across the unmount answer within 1 s', async (t, ioUring) => {
  const size = 4 * MiB;
  const { mnt, exp } = await exported(t, { ioUring, size, writable: true });
  const df = await run(['df', '-B1', '--output=size', mnt]);
  t.is(df.stdout.trim().split('\n').at(-1)!.trim(), String(size), `df sees the image:\n${df.stdout}${df.stderr}`);
  const holder = await holdOpen(t, mnt, ['statfs', 'read', 'fsync', 'close']);

  exp.signal('SIGTERM');
  for (let i = 0; i < 5; i++) {
    const started = Date.now();
    const answer = await run(['df', mnt], { timeout: 15_000 });
    t.true(Date.now() - started < PROMPT_MS, `df ${i} during the stop took ${Date.now() - started} ms`);
    t.is(answer.code, 0, answer.stderr);
  }
  await waitUntil(() => !isMounted(mnt), { what: 'the lazy unmount' });
  const held = await holder.release();
  const closed = Date.now();
  t.log(JSON.stringify(held));
  for (const [call, , ms] of held) t.true(ms < PROMPT_MS, `${call} on the held file took ${ms} ms`);
  t.deepEqual(
    held.map(([call, errno]) => [call, errno]),
    [
      ['statfs', null],
      ['read', 'EIO'],
      ['fsync', null],
      ['close', null],
    ],
    'statfs answered, a read after the unmount fails at once, fsync made durable what was acknowledged, close (FLUSH) succeeds',
  );
  t.is((await exp.wait()).code, 0);
  t.true(Date.now() - closed < 3000, `the stop ended ${Date.now() - closed} ms after the file was closed`);
  t.deepEqual(exp.lines.filter((l) => l.event === 'connection-busy' || l.event === 'drain-timeout'), [], 'the stop waited for no deadline');
});
