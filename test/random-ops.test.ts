// A random operation load through the mounted file, checked against a model
// after every step (fsop.py random_ops), with fixed seeds: raw and qcow2 (an
// overlay over a base with data), on both transports. Afterwards the image
// itself must hold what the model holds.
import test, { type ExecutionContext } from 'ava';
import { ackedBlocks, lostBlocks } from './helpers/durability.js';
import {
  eachTransport,
  exportImage,
  forceUnmountUnder,
  FSOP,
  fsop,
  makeImage,
  makeMountpoint,
  makeQcow2,
  MiB,
  pattern,
  PYTHON,
  qemuCheck,
  qemuWrite,
  run,
  startChild,
  stopExport,
  tmpDir,
  toRaw,
} from './helpers/index.js';

const STEPS = 2000;
const LIMIT = 16 * MiB;

/** Runs the load; returns the counts of each operation. */
async function randomOps(t: ExecutionContext, mnt: string, seed: number, shrink: string, align = 1) {
  const answer = await fsop('random_ops', [mnt, seed, STEPS, shrink, LIMIT, align], { timeout: 240_000 });
  t.truthy(answer.ok, `seed ${seed}: ${answer.errno} ${answer.message}`);
  return answer.ok as Record<string, number>;
}

eachTransport(test, `raw: ${STEPS} random writes, reads, holes, zeroes, truncates and fsyncs match the model`, async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', 4 * MiB, [[0, pattern(4 * MiB, 5)]]);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true, growable: true });
  const counts = await randomOps(t, mnt, 11, 'ok');
  t.true(counts.write! > 500 && counts.truncate! > 50, JSON.stringify(counts));
  // The same file seen directly: the model's final state is what the export wrote.
  const copy = `${dir}/seen.raw`;
  t.is((await run(['cp', mnt, copy])).code, 0);
  const stopped = await stopExport(t, exp);
  t.is(stopped.errors, 0);
  t.is((await run(['cmp', image, copy])).code, 0, 'the image holds what the export served');
});

for (const [place, under] of [['', undefined], [' on tmpfs (copies on the I/O thread)', '/dev/shm']] as const) {
  eachTransport(test, `qcow2 overlay${place}: ${STEPS} random operations match the model; qemu-img check clean`, async (t, ioUring) => {
    const dir = tmpDir(t, { under });
    const base = await makeQcow2(dir, 'base.qcow2', 4 * MiB);
    await qemuWrite(base, ['write -P 0x5a 0 1M', 'write -P 0x6b 2M 1536k', 'write -c -P 0x7c 3840k 64k']);
    const top = await makeQcow2(dir, 'top.qcow2', 4 * MiB, { backing: 'base.qcow2' });
    await qemuWrite(top, ['write -P 0x11 512k 1M']);
    const mnt = makeMountpoint(dir);
    const exp = await exportImage(t, { image: top, mountpoint: mnt, ioUring, writable: true, growable: true });
    // qcow2 sizes are whole 512-byte sectors; shrinking is not offered.
    const counts = await randomOps(t, mnt, 12, 'EOPNOTSUPP', 512);
    t.true(counts.write! > 500 && counts.punch! > 100, JSON.stringify(counts));
    const copy = `${dir}/seen.raw`;
    t.is((await run(['cp', mnt, copy])).code, 0);
    const stopped = await stopExport(t, exp);
    t.is(stopped.errors, 0);
    const checked = await qemuCheck(top);
    t.is(checked.code, 0, checked.out);
    const raw = await toRaw(top, dir);
    t.is((await run(['cmp', raw, copy])).code, 0, 'qemu-img sees what the export served');
  });
}

eachTransport(test, 'qcow2: acknowledged fsyncs survive kill -9 of the exporter', async (t, ioUring) => {
  const dir = tmpDir(t);
  const block = 4096;
  const count = 2048;
  const image = await makeQcow2(dir, 'crash.qcow2', block * count);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, writable: true });
  const writer = startChild(t, [PYTHON, FSOP, 'acked_writes', mnt, block, count]);
  await writer.waitFor(/"acked": 300\b/, 60_000);
  exp.signal('SIGKILL');
  await exp.wait();
  forceUnmountUnder(dir);
  await writer.wait();
  const acked = ackedBlocks(writer.output());
  t.true(acked.length > 300, `${acked.length} writes acknowledged`);
  const checked = await qemuCheck(image);
  t.is(checked.code, 0, checked.out);
  const raw = await toRaw(image, dir);
  t.deepEqual(lostBlocks(raw, writer.output(), block, count), [], 'every acknowledged block is in the image');
});
