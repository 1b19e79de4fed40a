// The servers of test/helpers/servers.ts, read by QEMU itself (qemu-img,
// with its curl, iscsi and ssh block drivers, no export involved): each
// serves the bytes of a raw image (and a qcow2 made from it), and leaves no
// process and no directory behind when closed.
import test, { type ExecutionContext } from 'ava';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assertBytes, check, makeImage, MiB, pattern, run, tmpDir, type Argv } from './helpers/index.js';
import { startHttpServer, startIscsiTarget, startSshServer, withTrustedCa } from './helpers/servers.js';

const SIZE = 4 * MiB;
/**
 * qemu-img's options for reading through QEMU's curl driver: one request at
 * a time. With its default eight in flight, QEMU 7.2's driver now and then
 * (13 converts of 800 here) never sees the last transfer end: every byte
 * has arrived, the socket is no longer polled, no timer is set, and
 * qemu-img waits forever. The same with `Connection: close`; none in 500
 * with -m 1. (Likely: curl_multi_check_completion frees one finished
 * transfer's state per call, so one can stay taken while a request waits
 * for a free state.)
 */
const ONE_AT_A_TIME: Argv = ['-m', 1];

/** The images a server serves, in `dir`: a raw one of random-looking bytes and a qcow2 one made from it. */
interface Images {
  dir: string;
  raw: string;
  qcow2: string;
  bytes: Buffer;
}

async function images(dir: string): Promise<Images> {
  const bytes = pattern(SIZE, 11);
  const raw = makeImage(dir, 'disk.raw', SIZE, [[0, bytes]]);
  const qcow2 = join(dir, 'disk.qcow2');
  await check(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  return { dir, raw, qcow2, bytes };
}

/** What `qemu-img convert OPTIONS -f FORMAT -O raw SOURCE` made of `source` (json: or a URL), and how it went. */
async function convert(dir: string, source: string, { format = 'raw', options = [] as Argv, wrap = (argv: Argv) => argv, env = {} } = {}) {
  const out = join(dir, `out-${Math.random().toString(36).slice(2)}.raw`);
  const result = await run(wrap(['qemu-img', 'convert', ...options, '-f', format, '-O', 'raw', source, out]), { timeout: 60_000, env });
  return { ...result, bytes: () => readFileSync(out) };
}

/** Asserts that a convert() succeeded and gave `expected`. */
function assertConverted(t: ExecutionContext, result: Awaited<ReturnType<typeof convert>>, expected: Buffer, what: string, log = '') {
  t.is(result.code, 0, `${what}: ${result.stderr}${log}`);
  if (result.code === 0) assertBytes(t, result.bytes(), expected, what);
}

/** The server processes running now and the servers' directories, to compare before and after a test. */
function leftovers(): string[] {
  const processes = readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .flatMap((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        const zombie = stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
        return !zombie && ['tgtd', 'sshd', 'ssh-agent', 'qemu-img'].includes(name) ? [`${name} ${pid}`] : [];
      } catch {
        return [];
      }
    });
  const dirs = readdirSync(tmpdir()).filter((name) => /^fuse-export-(https|iscsi|ssh)-/.test(name));
  return [...processes, ...dirs].sort();
}

/**
 * A test of one server: started on a directory holding the images, given to
 * `body`, closed, and then nothing of it may be left.
 */
function serverTest<S extends { close(): Promise<void> }>(
  title: string,
  start: (images: Images) => Promise<S>,
  body: (t: ExecutionContext, server: S, images: Images) => Promise<void>,
) {
  test.serial(title, async (t) => {
    const before = leftovers();
    const made = await images(tmpDir(t));
    const server = await start(made);
    try {
      await body(t, server, made);
    } finally {
      await server.close();
    }
    t.deepEqual(leftovers(), before, 'no server process or directory is left');
  });
}

serverTest(
  'http: HEAD gives the size, GET one byte range (206, Content-Range); qemu-img reads raw and qcow2 images',
  ({ dir }) => startHttpServer({ root: dir }),
  async (t, server, { dir, bytes }) => {
    const head = await fetch(server.url('disk.raw'), { method: 'HEAD' });
    t.is(head.status, 200);
    t.is(head.headers.get('content-length'), String(SIZE));
    t.is(head.headers.get('accept-ranges'), 'bytes');
    const part = await fetch(server.url('disk.raw'), { headers: { Range: 'bytes=1000-1999' } });
    t.is(part.status, 206);
    t.is(part.headers.get('content-range'), `bytes 1000-1999/${SIZE}`);
    assertBytes(t, Buffer.from(await part.arrayBuffer()), bytes.subarray(1000, 2000), 'the range');
    const tail = await fetch(server.url('disk.raw'), { headers: { Range: 'bytes=-16' } });
    assertBytes(t, Buffer.from(await tail.arrayBuffer()), bytes.subarray(SIZE - 16), 'the last 16 bytes');
    t.is((await fetch(server.url('disk.raw'), { headers: { Range: `bytes=${SIZE}-` } })).status, 416);
    t.is((await fetch(server.url('missing.raw'))).status, 404);
    t.is((await fetch(server.url('../etc/passwd'))).status, 404);
    t.is((await fetch(server.url('disk.raw').replace('disk.raw', '%E0%A4%A'))).status, 404, 'an undecodable path');

    assertConverted(t, await convert(dir, server.url('disk.raw'), { options: ONE_AT_A_TIME }), bytes, 'raw over http');
    const qcow2 = await convert(dir, server.url('disk.qcow2'), { format: 'qcow2', options: ONE_AT_A_TIME });
    assertConverted(t, qcow2, bytes, 'qcow2 over http');
  },
);

serverTest(
  'https: verified against the throwaway CA with withTrustedCa, refused without it',
  ({ dir }) => startHttpServer({ root: dir, https: true }),
  async (t, server, { dir, bytes }) => {
    const ca = server.caFile!;
    t.regex(readFileSync(ca, 'utf8'), /BEGIN CERTIFICATE/);
    const untrusted = await convert(dir, server.url('disk.raw'), { options: ONE_AT_A_TIME });
    t.not(untrusted.code, 0);
    t.regex(untrusted.stderr, /certificate/i);
    const source = `json:${JSON.stringify({ file: { driver: 'https', url: server.url('disk.qcow2'), sslverify: true } })}`;
    const trusted = await convert(dir, source, { format: 'qcow2', options: ONE_AT_A_TIME, wrap: (argv) => withTrustedCa(ca, argv) });
    assertConverted(t, trusted, bytes, 'qcow2 over https');
  },
);

serverTest(
  'http with basic authentication: 401 without the credentials, the image with them (password-secret)',
  ({ dir }) => startHttpServer({ root: dir, auth: { user: 'alice', password: 'open sesame' } }),
  async (t, server, { dir, bytes }) => {
    const anonymous = await convert(dir, server.url('disk.raw'), { options: ONE_AT_A_TIME });
    t.not(anonymous.code, 0);
    t.regex(anonymous.stderr, /401/);
    const secret = join(dir, 'password');
    writeFileSync(secret, 'wrong', { mode: 0o600 });
    const source = `json:${JSON.stringify({ file: { driver: 'http', url: server.url('disk.raw'), username: 'alice', 'password-secret': 'pw' } })}`;
    const options = [...ONE_AT_A_TIME, '--object', `secret,id=pw,file=${secret}`];
    t.not((await convert(dir, source, { options })).code, 0, 'a wrong password is refused');
    writeFileSync(secret, 'open sesame');
    assertConverted(t, await convert(dir, source, { options }), bytes, 'raw over http with basic authentication');
  },
);

serverTest(
  'iscsi: tgtd serves the image as LUN 1 on 127.0.0.1',
  ({ raw }) => startIscsiTarget({ image: raw }),
  async (t, target, { dir, bytes }) => {
    t.regex(target.url, /^iscsi:\/\/127\.0\.0\.1:\d+\/iqn\.[^/]+\/1$/);
    assertConverted(t, await convert(dir, target.url), bytes, 'raw over iscsi', `\ntgtd:\n${target.output()}`);
  },
);

serverTest(
  'ssh: sshd serves the images over SFTP to a client with the agent’s key; a wrong host key is refused',
  ({ dir }) => startSshServer({ root: dir }),
  async (t, server, { dir, raw, bytes }) => {
    const env = server.env;
    const viaUrl = await convert(dir, server.url('disk.qcow2'), { format: 'qcow2', env });
    assertConverted(t, viaUrl, bytes, 'qcow2 over ssh (URL)', `\nsshd:\n${server.output()}`);

    const file = {
      driver: 'ssh',
      server: { host: '127.0.0.1', port: String(server.port) },
      path: raw,
      user: server.user,
      'host-key-check': { mode: 'hash', type: 'sha256', hash: server.hostKeySha256 },
    };
    assertConverted(t, await convert(dir, `json:${JSON.stringify({ file })}`, { env }), bytes, 'raw over ssh (json)');

    const forged = { ...file, 'host-key-check': { mode: 'hash', type: 'sha256', hash: '00'.repeat(32) } };
    const wrongKey = await convert(dir, `json:${JSON.stringify({ file: forged })}`, { env });
    t.not(wrongKey.code, 0);
    t.regex(wrongKey.stderr, /does not match/);
    const noAgent = await convert(dir, server.url('disk.raw'), { env: { SSH_AUTH_SOCK: '' } });
    t.not(noAgent.code, 0, 'without the agent there is no key to log in with');
  },
);
