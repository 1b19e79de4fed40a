// A normal user exports an image of their own: the mount goes through the
// setuid fusermount3 helper. /dev/fuse is 0600 on the test machine, so it
// is opened up for the duration of these tests and put back afterwards.
import test, { type ExecutionContext } from 'ava';
import { chmodSync, chownSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Extent,
  type LogLine,
  type User,
  assertBytes,
  assertUnmounted,
  errorText,
  exportImage,
  fsop,
  fsopOk,
  makeImage,
  makeMountpoint,
  MiB,
  mountOn,
  NOBODY,
  pattern,
  qemuIo,
  readFile,
  readVia,
  run,
  runCli,
  stopExport,
  tmpDir,
  waitUntil,
} from './helpers/index.js';

/** Opens /dev/fuse to everyone for this test; the teardown restores its mode. */
function openDevFuse(t: ExecutionContext): void {
  const mode = statSync('/dev/fuse').mode & 0o7777;
  chmodSync('/dev/fuse', 0o666);
  t.teardown(() => chmodSync('/dev/fuse', mode));
}

/** A directory, image and mountpoint owned by `user`. */
function userFiles(t: ExecutionContext, user: User, extents: Extent[] = []) {
  const dir = tmpDir(t, { owner: user });
  const image = makeImage(dir, 'disk.img', 4 * MiB, extents);
  const mnt = makeMountpoint(dir);
  for (const path of [image, mnt]) chownSync(path, user.uid, user.gid);
  return { dir, image, mnt };
}

const userAllowOther = () => /^\s*user_allow_other\s*$/m.test(readFileSync('/etc/fuse.conf', 'utf8'));

test.serial('a normal user exports their own image through fusermount3, reads, writes, stops cleanly', async (t) => {
  openDevFuse(t);
  const data = pattern(4 * MiB, 60);
  const { dir, image, mnt } = userFiles(t, NOBODY, [[0, data]]);
  const pidfile = join(dir, 'export.pid');
  const exp = await exportImage(t, { image, mountpoint: mnt, writable: true, pidfile, user: NOBODY });
  t.is(exp.ready.writable, true);
  // (That it already exists when the ready line is read is cli.test.ts's business.)
  await waitUntil(() => existsSync(pidfile), { timeout: 2000, what: 'the pidfile' });

  const entry = mountOn(mnt)!;
  t.truthy(entry, 'mounted');
  t.true(entry.superOptions.includes(`user_id=${NOBODY.uid}`), `the mount belongs to the user: ${entry.superOptions}`);
  for (const option of ['nosuid', 'nodev', 'noatime']) t.true(entry.mountOptions.includes(option), option);
  t.true(entry.superOptions.includes('default_permissions'));

  if (!userAllowOther()) {
    // allow-other auto: fusermount3 refuses allow_other, the export falls back and says so.
    t.false(exp.ready.allowOther);
    t.false(entry.superOptions.includes('allow_other'));
    const fallback = (l: LogLine) => l.level === 'warn' && /user_allow_other/.test(l.message);
    await waitUntil(() => exp.lines.some(fallback), { timeout: 5000, what: 'the fallback warning' }).catch(() => {});
    t.true(exp.lines.some(fallback), `the fallback is logged:\n${exp.stderr()}`);
    t.is((await fsop('stat', [mnt])).errno, 'EACCES', 'without allow_other even root is kept out');
  }

  const st = await fsopOk('stat', [mnt], { user: NOBODY });
  t.is(st.uid, NOBODY.uid, 'owned by the exporting user');
  t.is(st.gid, NOBODY.gid);
  t.is(st.mode, 0o100600);
  t.is(st.size, 4 * MiB);
  assertBytes(t, await readVia(mnt, MiB, 64 * 1024, { user: NOBODY }), data.subarray(MiB, MiB + 64 * 1024));
  const q = await qemuIo(mnt, ['write -P 0xe1 2M 128k', 'read -P 0xe1 2M 128k'], { user: NOBODY });
  t.true(q.ok, q.out);

  const stopped = await stopExport(t, exp, 'SIGTERM');
  t.is(stopped.reason, 'signal');
  t.false(existsSync(pidfile), 'the pidfile is removed');
  assertBytes(t, readFile(image, 2 * MiB, 128 * 1024), Buffer.alloc(128 * 1024, 0xe1), 'the write is in the image');
});

test.serial('a normal user with --allow-other on and no user_allow_other: exit 1 naming the fix, nothing mounted', async (t) => {
  if (userAllowOther()) {
    t.pass('user_allow_other is set in /etc/fuse.conf here: nothing to refuse');
    return;
  }
  openDevFuse(t);
  const { image, mnt } = userFiles(t, NOBODY);
  const result = await runCli(['--io-uring', 'off', '--allow-other', 'on', image, mnt], { user: NOBODY });
  t.is(result.code, 1, result.stderr);
  t.regex(errorText(result), /user_allow_other/);
  t.regex(errorText(result), /\/etc\/fuse\.conf/);
  assertUnmounted(t, mnt);
});

test.serial('a normal user with --allow-other off: no allow_other, no warning; their fusermount3 -u ends it', async (t) => {
  openDevFuse(t);
  const { image, mnt } = userFiles(t, NOBODY, [[0, Buffer.from('mine')]]);
  const exp = await exportImage(t, { image, mountpoint: mnt, allowOther: 'off', user: NOBODY });
  t.false(exp.ready.allowOther);
  t.false(mountOn(mnt)!.superOptions.includes('allow_other'));
  t.true(mountOn(mnt)!.mountOptions.includes('ro'), 'read-only export: mounted ro');
  assertBytes(t, await readVia(mnt, 0, 4, { user: NOBODY }), Buffer.from('mine'));
  const unmount = await run(['fusermount3', '-u', mnt], { user: NOBODY });
  t.is(unmount.code, 0, unmount.stderr);
  t.is((await exp.wait()).code, 0, exp.stderr());
  t.is(exp.lines.find((l) => l.event === 'stopped')?.reason, 'unmounted');
  assertUnmounted(t, mnt);
  t.false(exp.lines.some((l) => l.level === 'warn'), 'nothing to warn about');
});
