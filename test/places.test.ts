// Images on servers, read through QEMU's protocol drivers in the export's
// qemu-nbd child: HTTP (range requests, basic authentication), HTTPS with
// the CA given by --ca-file, iSCSI (tgtd) and ssh (sshd), all on 127.0.0.1,
// started and stopped here (test/helpers/servers.ts). A format over a place
// is that format; a read-only place refuses --writable and takes
// --snapshot; credentials stay out of the logs, the mount table and ps.
import test, { type ExecutionContext } from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  assertBytes,
  check,
  digest,
  eachTransport,
  errorText,
  exportImage,
  makeImage,
  makeMountpoint,
  MiB,
  KiB,
  mountTable,
  pattern,
  readVia,
  run,
  runCli,
  stopExport,
  tmpDir,
  writeVia,
} from './helpers/index.js';
import { startHttpServer, startIscsiTarget, startSshServer } from './helpers/servers.js';

const SIZE = 8 * MiB;

/** A raw disk of patterned bytes, and the same disk as a VMDK and a qcow2, in `dir`. */
async function images(dir: string): Promise<{ raw: string; bytes: Buffer }> {
  const bytes = pattern(SIZE, 21);
  const raw = makeImage(dir, 'disk.raw', SIZE, [[0, bytes]]);
  await check(['qemu-img', 'convert', '-O', 'vmdk', raw, join(dir, 'disk.vmdk')]);
  await check(['qemu-img', 'convert', '-O', 'qcow2', raw, join(dir, 'disk.qcow2')]);
  return { raw, bytes };
}

/** The whole exported file equals `bytes`. */
async function assertExported(t: ExecutionContext, mnt: string, raw: string, what: string): Promise<void> {
  const cmp = await run(['cmp', mnt, raw], { timeout: 60_000 });
  t.is(cmp.code, 0, `${what}: ${cmp.stdout}${cmp.stderr}`);
}

eachTransport(test, 'http: a VMDK and a qcow2 on a web server are those formats; --writable exits 1 with the reason; --snapshot takes writes and leaves the server\'s file alone', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { raw } = await images(dir);
  const server = await startHttpServer({ root: dir });
  t.teardown(() => server.close());
  const mnt = makeMountpoint(dir);
  for (const format of ['vmdk', 'qcow2']) {
    const exp = await exportImage(t, { image: server.url(`disk.${format}`), mountpoint: mnt, ioUring });
    t.is(exp.ready.format, format);
    t.is(exp.ready.backend, 'qemu');
    await assertExported(t, mnt, raw, `${format} over http`);
    await stopExport(t, exp);
  }
  const writable = await runCli(['--writable', server.url('disk.qcow2'), mnt]);
  t.is(writable.code, 1);
  t.regex(errorText(writable), /read-only.*without --writable.*--snapshot/);
  const before = digest(join(dir, 'disk.vmdk'));
  const snapshot = await exportImage(t, { image: server.url('disk.vmdk'), mountpoint: mnt, ioUring, args: ['--snapshot'] });
  const data = pattern(64 * KiB, 5);
  t.deepEqual(await writeVia(mnt, 1 * MiB, data), { ok: data.length });
  assertBytes(t, await readVia(mnt, 1 * MiB, data.length), data, 'the write reads back from the snapshot');
  await stopExport(t, snapshot);
  t.is(digest(join(dir, 'disk.vmdk')), before, 'the served file is unchanged');
});

eachTransport(test, 'https: --ca-file trusts the server\'s CA (a qcow2 reads right); without it the certificate is refused, exit 1', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { raw } = await images(dir);
  const server = await startHttpServer({ root: dir, https: true });
  t.teardown(() => server.close());
  const mnt = makeMountpoint(dir);
  const untrusted = await runCli([server.url('disk.qcow2'), mnt], { timeout: 60_000 });
  t.is(untrusted.code, 1);
  t.regex(errorText(untrusted), /certificate/i);
  const exp = await exportImage(t, { image: server.url('disk.qcow2'), mountpoint: mnt, ioUring, args: ['--ca-file', server.caFile!] });
  t.is(exp.ready.format, 'qcow2');
  await assertExported(t, mnt, raw, 'qcow2 over https');
  await stopExport(t, exp);
});

eachTransport(test, 'http basic authentication: --password-file (or the URL\'s password) lets it in, never shown in the log, the mount table or ps; without it exit 1', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { raw } = await images(dir);
  const password = 'open sesame';
  const server = await startHttpServer({ root: dir, auth: { user: 'alice', password } });
  t.teardown(() => server.close());
  const mnt = makeMountpoint(dir);
  const url = server.url('disk.vmdk').replace('://', '://alice@');
  const anonymous = await runCli([url, mnt]);
  t.is(anonymous.code, 1);
  t.regex(errorText(anonymous), /401|auth/i);
  const passwordFile = join(dir, 'password');
  writeFileSync(passwordFile, `${password}\n`);
  for (const [image, args] of [[url, ['--password-file', passwordFile]], [url.replace('alice@', `alice:${encodeURIComponent('sesame')}@`), []]] as const) {
    if (args.length === 0) {
      // The URL's own password (a wrong one here): moved into a secret, never shown.
      const wrong = await runCli([image, mnt]);
      t.is(wrong.code, 1);
      t.false(wrong.stderr.includes(':sesame@'), 'the password is not in the log');
      continue;
    }
    const exp = await exportImage(t, { image, mountpoint: mnt, ioUring, args: [...args] });
    t.is(exp.ready.image, url.replace(/^http:\/\/alice@/, 'http://alice@'));
    await assertExported(t, mnt, raw, 'vmdk behind basic authentication');
    t.false(exp.stderr().includes(password), 'not in the log');
    t.false(JSON.stringify(mountTable()).includes(password), 'not in the mount table');
    t.false((await run(['ps', '-eo', 'args='])).stdout.includes(password), 'not on a command line');
    await stopExport(t, exp);
  }
});

eachTransport(test, 'iSCSI (tgtd): a raw LUN reads right and takes writes, which land in the target\'s file', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { raw, bytes } = await images(dir);
  const target = await startIscsiTarget({ image: raw });
  t.teardown(() => target.close());
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: target.url, mountpoint: mnt, ioUring, writable: true });
  t.is(exp.ready.format, 'raw');
  t.is(exp.ready.backend, 'qemu');
  const head = await readVia(mnt, 0, 1 * MiB);
  assertBytes(t, head, bytes.subarray(0, 1 * MiB), 'the LUN reads as the file');
  const data = pattern(128 * KiB, 7);
  t.deepEqual(await writeVia(mnt, 2 * MiB, data), { ok: data.length });
  await stopExport(t, exp);
  assertBytes(t, readFileSync(raw).subarray(2 * MiB, 2 * MiB + data.length), data, 'the write is in the target\'s file');
});

eachTransport(test, 'ssh (sshd, key in an agent): a qcow2 on the server reads right and takes writes; qemu-img check passes after', async (t, ioUring) => {
  const dir = tmpDir(t);
  const { raw } = await images(dir);
  const server = await startSshServer({ root: dir });
  t.teardown(() => server.close());
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image: server.url('disk.qcow2'), mountpoint: mnt, ioUring, writable: true, env: server.env });
  t.is(exp.ready.format, 'qcow2');
  await assertExported(t, mnt, raw, 'qcow2 over ssh');
  const data = pattern(64 * KiB, 8);
  t.deepEqual(await writeVia(mnt, 3 * MiB, data), { ok: data.length });
  await stopExport(t, exp);
  const checked = await run(['qemu-img', 'check', join(dir, 'disk.qcow2')]);
  t.is(checked.code, 0, checked.stdout + checked.stderr);
  const io = await run(['qemu-io', '-f', 'qcow2', '-c', `read -P 0x${data[0]!.toString(16)} ${3 * MiB} 1`, join(dir, 'disk.qcow2')]);
  t.is(io.code, 0, `the write is in the file on the server: ${io.stdout}`);
});
