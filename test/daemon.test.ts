// fuse-export-storage-daemon as a script written for qemu-storage-daemon
// drives it: qsd's command line, QMP over its monitor socket (add, delete,
// query, resize, and qsd's refusals), many exports in one daemon, the
// service manager's readiness, metrics, bad QMP clients. Every export is
// mounted for real and read and written through.
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import {
  assertBytes,
  assertUnmounted,
  eachTransport,
  fio,
  isMounted,
  KiB,
  makeImage,
  makeMountpoint,
  MiB,
  pattern,
  readFile,
  readVia,
  run,
  sleep,
  tmpDir,
  waitUntil,
  writeVia,
  type IoUring,
} from './helpers/index.js';
import { DAEMON, qmpClient, qmpSocket, startDaemon, stopDaemon } from './helpers/daemon.js';
import { startNbdkit } from './helpers/nbd.js';
import { StorageDaemon } from 'fuse-export';
import { QmpCommandError, QmpTestClient } from './helpers/qmp.mjs';

const SIZE = 16 * MiB;

/** `io-uring=` for an export on `ioUring`'s transport. */
const transportKey = (ioUring: IoUring) => `io-uring=${ioUring}`;

/** Rejects with the QMP error `execute` gets, as { class, desc }. */
async function refused(client: QmpTestClient, command: string, args: Record<string, unknown>) {
  const error = await client.execute(command, args).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof QmpCommandError)) throw new Error(`${command} was not refused`);
  return { class: error.class, desc: error.desc };
}

eachTransport(test, "qsd's own example runs unchanged: the image exported onto itself, written and read through, SIGTERM drains and unmounts", async (t, ioUring) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', SIZE, [[0, pattern(64 * KiB, 1)]]);
  // docs/tools/qemu-storage-daemon.rst: "Export a qcow2 image file disk.qcow2 as a raw image via FUSE ... on top of the file".
  const daemon = await startDaemon(t, [
    '--blockdev', `driver=file,node-name=file,filename=${image}`,
    '--blockdev', 'driver=raw,node-name=disk,file=file',
    '--export', `type=fuse,id=exp0,node-name=disk,mountpoint=${image},writable=on,${transportKey(ioUring)}`,
  ]);
  t.true(isMounted(image), 'mounted over the image file itself');
  assertBytes(t, await readVia(image, 0, 64 * KiB), pattern(64 * KiB, 1), 'the image reads through the export');
  const data = pattern(8 * KiB, 2);
  t.deepEqual(await writeVia(image, 1 * MiB, data), { ok: data.length });
  await stopDaemon(t, daemon, [image]);
  assertBytes(t, readFile(image, 1 * MiB, data.length), data, 'the write is in the image');
});

eachTransport(test, 'QMP: blockdev-add and block-export-add mount for real; query, block_resize, and qsd\'s refusals; block-export-del unmounts before BLOCK_EXPORT_DELETED', async (t, ioUring) => {
  const dir = tmpDir(t);
  const qmp = qmpSocket(dir);
  const daemon = await startDaemon(t, qmp.args);
  const client = await qmpClient(t, qmp.path);
  const image = makeImage(dir, 'a.img', SIZE, [[0, pattern(4 * KiB, 3)]]);
  const mnt = makeMountpoint(dir, 'a');
  t.deepEqual(await client.execute('blockdev-add', { driver: 'file', 'node-name': 'a', filename: image }), {});
  const exportArgs = { type: 'fuse', id: 'ea', 'node-name': 'a', mountpoint: mnt, writable: true, 'io-uring': ioUring };
  t.deepEqual(await client.execute('block-export-add', exportArgs), {});
  t.true(isMounted(mnt));
  assertBytes(t, await readVia(mnt, 0, 4 * KiB), pattern(4 * KiB, 3));
  t.deepEqual(await client.execute('query-block-exports'), [{ type: 'fuse', id: 'ea', 'node-name': 'a', 'shutting-down': false }]);

  // qsd's refusals, each naming what is wrong.
  mkdirSync(join(dir, 'adir'));
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['block-export-add', { ...exportArgs, id: 'eb', mountpoint: join(dir, 'missing') }, /missing/],
    ['block-export-add', { ...exportArgs, id: 'eb', mountpoint: join(dir, 'adir') }, /not a regular file/],
    ['block-export-add', { ...exportArgs, id: 'eb' }, /already the mountpoint of export 'ea'/],
    ['block-export-add', { ...exportArgs, mountpoint: makeMountpoint(dir, 'b') }, /'ea' is already in use/],
    ['block-export-add', { ...exportArgs, id: 'eb', 'node-name': 'nope', mountpoint: makeMountpoint(dir, 'c') }, /nope/],
    ['blockdev-del', { 'node-name': 'a' }, /busy.*'ea'/],
    ['block-export-del', { id: 'nope' }, /'nope' is not found/],
    ['block_resize', { 'node-name': 'a', size: 'big' }, /Invalid parameter type for 'size', expected: integer/],
    ['blockdev-add', { driver: 'file', filename: image }, /node-name/],
  ];
  for (const [command, args, message] of cases) {
    const error = await refused(client, command, args);
    t.is(error.class, 'GenericError', command);
    t.regex(error.desc, message, `${command} ${JSON.stringify(args)}`);
  }

  t.deepEqual(await client.execute('block_resize', { 'node-name': 'a', size: 2 * SIZE }), {});
  t.is(statSync(image).size, 2 * SIZE, 'the image grew');
  await waitUntil(() => statSync(mnt).size === 2 * SIZE, { timeout: 3000, what: 'the file to show the new size' });

  const deleted = client.waitEvent('BLOCK_EXPORT_DELETED', 20_000);
  t.deepEqual(await client.execute('block-export-del', { id: 'ea' }), {});
  const event = await deleted;
  t.deepEqual(event.data, { id: 'ea' });
  assertUnmounted(t, mnt, 'unmounted before BLOCK_EXPORT_DELETED');
  t.deepEqual(await client.execute('query-block-exports'), []);
  t.deepEqual(await client.execute('blockdev-del', { 'node-name': 'a' }), {});
  await stopDaemon(t, daemon, []);
});

/**
 * The daemon's threads by name, numbers dropped, but io_uring's kernel
 * workers (`iou-wrk-`, which come and go with the load).
 */
function threadNames(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`)
    .map((task) => readFileSync(`/proc/${pid}/task/${task}/comm`, 'utf8').trim().replace(/\d+$/, ''))
    .filter((name) => !name.startsWith('iou-wrk-'))
    .sort();
}

eachTransport(test, '64 exports in one daemon on one iothread: fio crc32c verify on 8 while 8 others are deleted and added again, no thread started', async (t, ioUring) => {
  const dir = tmpDir(t);
  const qmp = qmpSocket(dir);
  const count = 64;
  const args: string[] = ['--object', 'iothread,id=io0', ...qmp.args];
  const mountpoints: string[] = [];
  for (let i = 0; i < count; i++) {
    const image = makeImage(dir, `d${i}.img`, 8 * MiB, []);
    const mnt = makeMountpoint(dir, `m${i}`);
    mountpoints.push(mnt);
    args.push('--blockdev', `driver=file,node-name=n${i},filename=${image}`);
    args.push('--export', `type=fuse,id=e${i},node-name=n${i},mountpoint=${mnt},writable=on,iothread=io0,${transportKey(ioUring)}`);
  }
  const daemon = await startDaemon(t, args);
  const client = await qmpClient(t, qmp.path);
  t.is((await client.execute('query-block-exports') as unknown[]).length, count);
  const threads = threadNames(daemon.pid);
  t.is(threads.filter((name) => name.startsWith('iothread-io0')).length, 1, `one I/O thread serves all ${count}: ${threads}`);
  t.false(threads.some((name) => name.startsWith('fuse-export-io')), 'no default set: every export names io0');
  const verify = Promise.all(
    mountpoints.slice(0, 8).map((mnt) =>
      fio(['--name=verify', `--filename=${mnt}`, '--ioengine=io_uring', '--direct=1', '--bs=4k', '--rw=randwrite', '--size=8M',
        '--iodepth=8', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1'], { timeout: 120_000 }),
    ),
  );
  for (let i = count - 8; i < count; i++) {
    const deleted = client.waitEvent('BLOCK_EXPORT_DELETED', 20_000, (e) => e.data?.['id'] === `e${i}`);
    await client.execute('block-export-del', { id: `e${i}` });
    await deleted;
    assertUnmounted(t, mountpoints[i]!);
    await client.execute('block-export-add', { type: 'fuse', id: `e${i}`, 'node-name': `n${i}`, mountpoint: mountpoints[i], writable: true, iothread: 'io0', 'io-uring': ioUring });
    t.true(isMounted(mountpoints[i]!));
  }
  for (const result of await verify) {
    t.is(result.code, 0, `${result.stdout}${result.stderr}`);
    t.notRegex(result.stdout + result.stderr, /verify: bad|crc32c: verify failed/);
  }
  t.deepEqual(threadNames(daemon.pid), threads, 'deleting and adding exports started no thread');
  await stopDaemon(t, daemon, mountpoints);
});

test.serial('systemd: READY=1 to NOTIFY_SOCKET once the command line\'s exports serve, STOPPING=1 at SIGTERM; --pidfile', async (t) => {
  const dir = tmpDir(t);
  const socket = join(dir, 'notify.sock');
  // Node's datagram sockets are UDP only: a Python listener records what arrives.
  const listener = spawn('python3', ['-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    print(s.recv(4096).decode(), flush=True)
`, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => listener.kill());
  let heard = '';
  listener.stdout.setEncoding('utf8').on('data', (d: string) => (heard += d));
  await waitUntil(() => heard.includes('bound'), { what: 'the listener' });
  const image = makeImage(dir, 'disk.img', SIZE, []);
  const mnt = makeMountpoint(dir);
  const pidfile = join(dir, 'daemon.pid');
  const daemon = await startDaemon(t, [
    '--blockdev', `driver=file,node-name=disk,filename=${image}`,
    '--export', `type=fuse,id=exp0,node-name=disk,mountpoint=${mnt}`,
    '--pidfile', pidfile,
  ], { env: { NOTIFY_SOCKET: socket } });
  await waitUntil(() => heard.includes('READY=1'), { what: 'READY=1' });
  t.true(isMounted(mnt), 'READY=1 came once the export served');
  t.is(readFileSync(pidfile, 'utf8').trim(), String(daemon.pid));
  await stopDaemon(t, daemon, [mnt]);
  await waitUntil(() => heard.includes('STOPPING=1'), { what: 'STOPPING=1' });
  t.throws(() => statSync(pidfile), undefined, 'the pidfile is removed');
});

/** The Prometheus text at `path` (a Unix socket). */
function scrape(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ socketPath: path, path: '/metrics' }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (d: string) => (body += d));
      response.on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });
}

test.serial('--metrics: per-export requests, bytes, errors, in-flight, transport and latency histograms, scraped and parsed', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', SIZE, []);
  const mnt = makeMountpoint(dir);
  const metrics = join(dir, 'metrics.sock');
  const daemon = await startDaemon(t, [
    '--blockdev', `driver=file,node-name=disk,filename=${image}`,
    '--export', `type=fuse,id=exp0,node-name=disk,mountpoint=${mnt},writable=on`,
    '--metrics', `unix:${metrics}`,
  ]);
  for (let i = 0; i < 10; i++) await writeVia(mnt, i * 4 * KiB, pattern(4 * KiB, i));
  await readVia(mnt, 0, 64 * KiB);
  const text = await scrape(metrics);
  const value = (line: string) => Number(text.split('\n').find((l) => l.startsWith(line))?.split(' ').at(-1));
  const labels = '{export="exp0",node="disk"}';
  t.true(value(`fuse_export_requests_total${labels}`) >= 11, text);
  t.is(value(`fuse_export_written_bytes_total${labels}`), 40 * KiB);
  t.true(value(`fuse_export_read_bytes_total${labels}`) >= 64 * KiB);
  t.is(value(`fuse_export_errors_total${labels}`), 0);
  t.regex(text, /^fuse_export_transport_info\{export="exp0",node="disk",transport="(legacy|io_uring)"\} 1$/m);
  const buckets = text
    .split('\n')
    .filter((l) => l.startsWith('fuse_export_image_latency_seconds_bucket{export="exp0",node="disk",op="write"'))
    .map((l) => Number(l.split(' ').at(-1)));
  t.true(buckets.length > 2, 'a bucket per bound and +Inf');
  t.deepEqual(buckets, [...buckets].sort((a, b) => a - b), 'buckets are cumulative');
  t.is(buckets.at(-1), value('fuse_export_image_latency_seconds_count{export="exp0",node="disk",op="write"}'));
  t.true(buckets.at(-1)! >= 10, 'every write was timed');
  await stopDaemon(t, daemon, [mnt]);
});

test.serial('bad QMP clients: malformed JSON, unknown commands, wrong types, a client gone mid-command; the daemon answers or drops that client and serves the others', async (t) => {
  const dir = tmpDir(t);
  const qmp = qmpSocket(dir);
  const image = makeImage(dir, 'disk.img', SIZE, []);
  const mnt = makeMountpoint(dir);
  const daemon = await startDaemon(t, [
    '--blockdev', `driver=file,node-name=disk,filename=${image}`,
    '--export', `type=fuse,id=exp0,node-name=disk,mountpoint=${mnt},writable=on`,
    ...qmp.args,
  ]);
  const bad = await qmpClient(t, qmp.path);
  // One command cut in two writes, then junk: an answer each, in order.
  bad.sendRaw('{"execute": "query-block-exports"');
  bad.sendRaw('}\n');
  t.true(Array.isArray((await bad.nextReply()).return), 'a command split across writes is answered');
  bad.sendRaw('{oops}\n');
  t.regex(JSON.stringify((await bad.nextReply()).error), /JSON parse error/);
  const afterJunk = await bad.execute('query-version') as { package: string };
  t.regex(afterJunk.package, /fuse-export-storage-daemon/, 'still answered after malformed JSON');
  t.is((await refused(bad, 'no-such-command', {})).class, 'CommandNotFound');
  t.regex((await refused(bad, 'block-export-del', { id: 7 })).desc, /Invalid parameter type for 'id'/);
  t.regex((await refused(bad, 'blockdev-del', { 'node-name': 'disk', extra: 1 })).desc, /'extra' is unexpected/);

  // A client that asks for an export and is gone before the answer.
  const { client: gone } = await QmpTestClient.connect(qmp.path);
  await gone.negotiate();
  const second = makeMountpoint(dir, 'second');
  gone.sendRaw(JSON.stringify({ execute: 'blockdev-add', arguments: { driver: 'file', 'node-name': 'other', filename: makeImage(dir, 'other.img', SIZE, []) } }));
  gone.sendRaw(JSON.stringify({ execute: 'block-export-add', arguments: { type: 'fuse', id: 'e2', 'node-name': 'other', mountpoint: second } }));
  await gone.close();
  const good = await qmpClient(t, qmp.path);
  await sleep(500);
  const exports = (await good.execute('query-block-exports')) as { id: string }[];
  t.true(exports.some((e) => e.id === 'exp0'), 'the other exports still serve');
  assertBytes(t, await readVia(mnt, 0, 4 * KiB), Buffer.alloc(4 * KiB), 'and read');
  await stopDaemon(t, daemon, [mnt, second]);
});

test.serial('command line refusals exit 1 naming the option and the key; --daemonize returns once the exports serve', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', SIZE, []);
  const mnt = makeMountpoint(dir);
  const badKey = await run([process.execPath, DAEMON, '--blockdev', `driver=file,node-name=disk,filename=${image},foo=1`]);
  t.is(badKey.code, 1);
  t.regex(badKey.stderr, /--blockdev.*"foo"/);
  const nbdExport = await run([process.execPath, DAEMON, '--export', 'type=nbd,id=x,node-name=disk']);
  t.is(nbdExport.code, 1);
  t.regex(nbdExport.stderr, /nbd/);
  const pidfile = join(dir, 'daemon.pid');
  const started = await run([process.execPath, DAEMON, '--daemonize', '--pidfile', pidfile,
    '--blockdev', `driver=file,node-name=disk,filename=${image}`,
    '--export', `type=fuse,id=exp0,node-name=disk,mountpoint=${mnt}`]);
  t.is(started.code, 0, started.stderr);
  t.true(isMounted(mnt), 'serving when the parent returned');
  const pid = Number(readFileSync(pidfile, 'utf8'));
  process.kill(pid, 'SIGTERM');
  await waitUntil(() => !isMounted(mnt), { timeout: 20_000, what: 'the daemonized export to unmount' });
  await waitUntil(() => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  }, { what: 'the daemon to exit' });
  t.pass();
});

test.serial('the Node API: a StorageDaemon adds, lists, resizes and removes exports on real mounts', async (t) => {
  const dir = tmpDir(t);
  const image = makeImage(dir, 'disk.img', SIZE, [[0, pattern(4 * KiB, 9)]]);
  const mnt = makeMountpoint(dir);
  const daemon = new StorageDaemon({ defaultThreads: 1 });
  t.teardown(() => daemon.shutdown());
  daemon.addBlockdev({ driver: 'file', 'node-name': 'disk', filename: image });
  const exp = await daemon.addExport({ type: 'fuse', id: 'exp0', 'node-name': 'disk', mountpoint: mnt, writable: true });
  t.is(exp.info.size, SIZE);
  t.deepEqual(daemon.list(), [{ type: 'fuse', id: 'exp0', 'node-name': 'disk', 'shutting-down': false }]);
  assertBytes(t, await readVia(mnt, 0, 4 * KiB), pattern(4 * KiB, 9));
  await daemon.resize('disk', 2 * SIZE);
  await waitUntil(() => statSync(mnt).size === 2 * SIZE, { timeout: 3000, what: 'the new size' });
  const deleted = new Promise((resolve) => daemon.once('exportDeleted', resolve));
  const stopped = await daemon.removeExport('exp0');
  t.is(stopped.reason, 'api');
  await deleted;
  assertUnmounted(t, mnt);
  t.deepEqual(daemon.list(), []);
});

/**
 * Connections open at the server listening on the Unix socket `path`: its
 * accepted sockets carry the path too, connected (state 03).
 */
function connectionsTo(path: string): number {
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[7] === path && fields[5] === '03').length;
}

test.serial('an NBD export deleted from the shared threads leaves no connection behind on them', async (t) => {
  const dir = tmpDir(t);
  // memory offers multi-conn: a connection for each of the 2 threads.
  const server = await startNbdkit(t, dir, { plugin: ['memory', '8M'] });
  const daemon = new StorageDaemon({ defaultThreads: 2 });
  t.teardown(() => daemon.shutdown());
  const mnt = makeMountpoint(dir);
  for (const round of [1, 2]) {
    const exp = await daemon.addImageExport('nbd', { image: server.uri, mountpoint: mnt, writable: true });
    t.is(exp.info.backend, 'nbd');
    await writeVia(mnt, 0, pattern(4 * KiB, round));
    assertBytes(t, await readVia(mnt, 0, 4 * KiB), pattern(4 * KiB, round));
    t.true(connectionsTo(server.address) >= 2, 'a connection for each thread');
    await daemon.removeExport('nbd');
    await waitUntil(() => connectionsTo(server.address) === 0, {
      timeout: 5000,
      what: `round ${round}: every connection closed once deleted`,
    });
  }
});
