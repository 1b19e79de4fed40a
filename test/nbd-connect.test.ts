// How an NBD export gets connected: TLS (nbds://, with a pre-shared key)
// against a server that requires it, and the message a machine without
// libnbd gets.
import test from 'ava';
import { readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  assertBytes,
  assertUnmounted,
  CLI,
  errorText,
  exportImage,
  makeMountpoint,
  MiB,
  parseLines,
  pattern,
  readVia,
  run,
  runCli,
  stopExport,
  tmpDir,
  writeVia,
} from './helpers/index.js';
import { startNbdkit } from './helpers/nbd.js';

/** A PSK file (username:hex key) as nbdkit and libnbd read it. */
function pskFile(dir: string): string {
  const path = join(dir, 'keys.psk');
  writeFileSync(path, `alice:${pattern(32, 7).toString('hex')}\n`, { mode: 0o600 });
  return path;
}

test.serial('nbds:// with a pre-shared key: data goes over TLS; plain nbd:// is refused by that server', async (t) => {
  const dir = tmpDir(t);
  const psk = pskFile(dir);
  const port = 40_000 + (process.pid % 10_000);
  await startNbdkit(t, dir, { plugin: ['memory', '8M'], tcpPort: port, tlsPsk: psk });
  const address = `127.0.0.1:${port}`;

  const plain = await runCli([`nbd://${address}/`, makeMountpoint(dir, 'plain')], { timeout: 30_000 });
  t.is(plain.code, 1, plain.stderr);
  t.true(errorText(plain).includes(address), errorText(plain));

  const uri = `nbds://alice@${address}/?tls-psk-file=${psk}`;
  const mnt = makeMountpoint(dir);
  const data = pattern(64 * 1024, 3);
  const first = await exportImage(t, { image: uri, mountpoint: mnt, writable: true });
  t.is(first.ready.backend, 'nbd');
  t.is(first.ready.size, 8 * MiB);
  t.false(first.ready.image.includes('keys.psk'), `the key file is not shown: ${first.ready.image}`);
  t.deepEqual(await writeVia(mnt, 1 * MiB, data, { how: 'direct' }), { ok: data.length });
  await stopExport(t, first);
  // A second connection sees what the first wrote: the server holds it.
  const second = await exportImage(t, { image: uri, mountpoint: mnt });
  assertBytes(t, await readVia(mnt, 1 * MiB, data.length, { how: 'rdirect' }), data);
  await stopExport(t, second);
});

test.serial('without libnbd an NBD image ends in exit 1 naming the package to install', async (t) => {
  const dir = tmpDir(t);
  const mnt = makeMountpoint(dir);
  const found = (await run(['sh', '-c', 'ldconfig -p | sed -n "s/.*libnbd\\.so\\.0 .*=> //p" | head -n1'])).stdout.trim();
  t.truthy(found, 'libnbd.so.0 is installed on the test machine (npm test installs libnbd0)');
  // Hide the library in a private mount namespace: it reads as an empty file there.
  const library = realpathSync(found);
  const hide = 'mount --bind /dev/null "$0" && exec "$@"';
  const result = await run(
    ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', hide, library, process.execPath, CLI, '--log-format', 'json', 'nbd+unix:///?socket=/nonexistent.sock', mnt],
    { timeout: 30_000 },
  );
  t.is(result.code, 1, result.stderr);
  const message = parseLines(result.stderr).find((l) => l.level === 'error')?.message ?? result.stderr;
  t.regex(message, /libnbd0/, message);
  assertUnmounted(t, mnt);
  t.true(readFileSync(library).length > 0, 'the library itself is untouched outside the namespace');
});
