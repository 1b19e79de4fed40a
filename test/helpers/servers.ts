// Servers that QEMU's block layer reads remote images from: HTTP(S) (a node
// server in this process), iSCSI (tgtd) and SSH (sshd). Each listens on
// 127.0.0.1 only, keeps its state in a temporary directory of its own and is
// started and stopped by its caller: close() ends every process it started
// and removes that directory. A server that does not come up in time is
// killed, and its start rejects with what it printed.
import { once } from 'node:events';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { writeFileSync } from 'node:fs';
import { createServer as createHttp, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { createServer as createTcp, type AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { tmpdir, userInfo } from 'node:os';
import { join, relative, resolve, sep } from 'node:path';
import { check, run, sleep, spawnChild, waitUntil, type Argv, type Child } from './proc.js';

/** How long a server may take to come up. */
const STARTUP_TIMEOUT = 15_000;
const LOCALHOST = '127.0.0.1';

/** A fresh directory for one server's files (removed by its close()). */
function serverDir(kind: string): string {
  return mkdtempSync(join(tmpdir(), `fuse-export-${kind}-`));
}

// ---------------------------------------------------------------------------
// Ports and processes

/** A port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed). */
export async function freePort(): Promise<number> {
  const probe = createTcp();
  probe.listen(0, LOCALHOST);
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  probe.close();
  await once(probe, 'close');
  return port;
}

/** A server that found its port taken (by someone who bound it after freePort()). */
class PortTaken extends Error {}

/** What sshd and tgtd print when their port is taken (tgtd then runs on, without the portal). */
const PORT_TAKEN = /address already in use|cannot bind/i;

/**
 * Calls `start(port)` with a free port; once more with another one when
 * the port was taken in between (`start` threw PortTaken).
 */
async function onFreePort<T>(start: (port: number) => Promise<T>, tries = 5): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(await freePort());
    } catch (error) {
      if (!(error instanceof PortTaken) || attempt >= tries) throw error;
    }
  }
}

/** The processes below `pid`, each with its parent (zombies left out: they run nothing). */
function descendants(pid: number): Map<number, number> {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // pid (comm) state ppid ...: comm may hold spaces and parentheses.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (state !== 'Z') parentOf.set(Number(entry), Number(ppid));
    } catch {
      // Gone meanwhile.
    }
  }
  const below = new Map<number, number>();
  const frontier = [pid];
  while (frontier.length > 0) {
    const parent = frontier.shift()!;
    for (const [child, ppid] of parentOf) {
      if (ppid === parent) {
        below.set(child, ppid);
        frontier.push(child);
      }
    }
  }
  return below;
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // Gone.
  }
}

/**
 * Stops a daemon we started and every process it forked (sshd forks one per
 * connection, in a session of its own, so out of its process group). The
 * leaves of its process tree get `how` first, and their parents only once
 * they are gone, so that each is reaped by its own parent rather than left
 * a zombie for init; after `grace` ms the rest get SIGKILL the same way.
 * Resolves once the daemon and all below it are gone.
 */
async function stopDaemon(daemon: Child, how: NodeJS.Signals = 'SIGTERM', grace = 5_000): Promise<void> {
  const pid = daemon.child.pid!;
  let name = how;
  let deadline = Date.now() + grace;
  for (;;) {
    const tree = descendants(pid);
    if (!daemon.done) tree.set(pid, process.pid);
    if (tree.size === 0) return;
    if (Date.now() > deadline) {
      if (name === 'SIGKILL') throw new Error(`${daemon.child.spawnfile} and its children outlived SIGKILL: ${[...tree.keys()]}`);
      name = 'SIGKILL';
      deadline = Date.now() + grace;
    }
    const parents = new Set(tree.values());
    for (const each of tree.keys()) if (!parents.has(each)) signal(each, name);
    await sleep(20);
  }
}

/**
 * Starts `argv` and waits up to STARTUP_TIMEOUT for `ready()`. Rejects, with
 * the daemon stopped, when it exits first, stays unready, or says that its
 * port is taken (with PortTaken then).
 */
async function startDaemon(
  argv: Argv,
  ready: (daemon: Child) => boolean | Promise<boolean>,
  { env, stop = 'SIGTERM' }: { env?: NodeJS.ProcessEnv; stop?: NodeJS.Signals } = {},
): Promise<Child> {
  const daemon = spawnChild(argv, { env });
  const taken = () => PORT_TAKEN.test(daemon.output());
  let up = false;
  try {
    await waitUntil(async () => daemon.done || taken() || (up = await ready(daemon)), {
      timeout: STARTUP_TIMEOUT,
      what: `${argv[0]} to start`,
    });
  } catch {
    // Timed out: said below.
  }
  if (up && !daemon.done && !taken()) return daemon;
  await stopDaemon(daemon, stop);
  const message = `${argv.join(' ')} did not start within ${STARTUP_TIMEOUT} ms:\n${daemon.output()}`;
  throw taken() ? new PortTaken(message) : new Error(message);
}

// ---------------------------------------------------------------------------
// HTTP and HTTPS

export interface HttpServerOptions {
  /** The directory whose files are served (by their path under it). */
  root: string;
  /** TLS with a certificate for 127.0.0.1 from a throwaway CA (`caFile`). */
  https?: boolean;
  /** Basic authentication: without these credentials every request gets 401. */
  auth?: { user: string; password: string };
}

export interface HttpServer {
  port: number;
  /** The URL of `name` (a path under root). */
  url(name: string): string;
  /** The CA that signed the server's certificate (PEM), with https. */
  caFile?: string;
  /** Stops listening, drops open connections, removes the certificates. */
  close(): Promise<void>;
}

/**
 * A throwaway CA and a server certificate signed by it for 127.0.0.1 (an IP
 * subject alternative name), made with the openssl command in `dir`.
 */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca.key');
  const cert = join(dir, 'server.pem');
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const extensions = join(dir, 'server.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const caExtensions = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
  await check(['openssl', 'req', '-x509', ...ec, '-keyout', caKey, '-out', ca, '-days', 2, '-subj', '/CN=fuse-export test CA', ...caExtensions]);
  await check(['openssl', 'req', ...ec, '-keyout', key, '-out', csr, '-subj', `/CN=${LOCALHOST}`]);
  writeFileSync(
    extensions,
    `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:${LOCALHOST}\n`,
  );
  const serial = `0x${createHash('sha256').update(dir).digest('hex').slice(0, 16)}`;
  await check(['openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-set_serial', serial, '-days', 2, '-extfile', extensions, '-out', cert]);
  return { ca, cert, key };
}

/** [start, end] (inclusive) of a `Range: bytes=...` header for a file of `size` bytes; null: unsatisfiable. */
function byteRange(header: string, size: number): [number, number] | null {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return null;
  if (match[1] === '') {
    // The last N bytes.
    const length = Math.min(Number(match[2]), size);
    return length === 0 ? null : [size - length, size - 1];
  }
  const start = Number(match[1]);
  const end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  return start > end || start >= size ? null : [start, end];
}

/** The path under `root` that a request's URL names; undefined for one outside it or not decodable. */
function fileUnder(root: string, url: string): string | undefined {
  let name: string;
  try {
    name = decodeURIComponent(new URL(url, 'http://localhost').pathname);
  } catch {
    return undefined;
  }
  const path = resolve(root, `.${name}`);
  const up = relative(root, path);
  return up === '..' || up.startsWith(`..${sep}`) ? undefined : path;
}

/** Serves GET and HEAD of the files under `root`, whole or one byte range. */
function serveFile(root: string, auth: HttpServerOptions['auth'], request: IncomingMessage, response: ServerResponse): void {
  if (auth) {
    const expected = `Basic ${Buffer.from(`${auth.user}:${auth.password}`).toString('base64')}`;
    if (request.headers.authorization !== expected) {
      response.writeHead(401, { 'WWW-Authenticate': 'Basic realm="fuse-export test"', 'Content-Length': 0 }).end();
      return;
    }
  }
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { Allow: 'GET, HEAD', 'Content-Length': 0 }).end();
    return;
  }
  const path = fileUnder(root, request.url ?? '/');
  const stat = path === undefined || !existsSync(path) ? undefined : statSync(path);
  if (path === undefined || !stat?.isFile()) {
    response.writeHead(404, { 'Content-Length': 0 }).end();
    return;
  }
  const headers: OutgoingHttpHeaders = { 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
  let range = stat.size === 0 ? null : ([0, stat.size - 1] as [number, number]);
  if (request.headers.range !== undefined) {
    range = byteRange(request.headers.range, stat.size);
    if (range === null) {
      response.writeHead(416, { ...headers, 'Content-Range': `bytes */${stat.size}`, 'Content-Length': 0 }).end();
      return;
    }
    headers['Content-Range'] = `bytes ${range[0]}-${range[1]}/${stat.size}`;
  }
  headers['Content-Length'] = range === null ? 0 : range[1] - range[0] + 1;
  response.writeHead(request.headers.range === undefined ? 200 : 206, headers);
  if (request.method === 'HEAD' || range === null) {
    response.end();
    return;
  }
  createReadStream(path, { start: range[0], end: range[1] })
    .on('error', () => response.destroy())
    .pipe(response);
}

/**
 * An HTTP (or HTTPS) server on 127.0.0.1 serving the files under `root`
 * with what QEMU's curl driver needs: HEAD for the size, GET of byte ranges
 * (206, Content-Range, Accept-Ranges: bytes).
 */
export async function startHttpServer({ root, https = false, auth }: HttpServerOptions): Promise<HttpServer> {
  const certDir = https ? serverDir('https') : undefined;
  try {
    const handler = (request: IncomingMessage, response: ServerResponse) => serveFile(resolve(root), auth, request, response);
    let server: Server;
    let caFile: string | undefined;
    if (certDir !== undefined) {
      const { ca, cert, key } = await makeCertificates(certDir);
      caFile = ca;
      server = createHttps({ cert: readFileSync(cert), key: readFileSync(key) }, handler);
    } else {
      server = createHttp(handler);
    }
    server.listen(0, LOCALHOST);
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    const scheme = https ? 'https' : 'http';
    return {
      port,
      caFile,
      url: (name) => `${scheme}://${LOCALHOST}:${port}/${name.split('/').map(encodeURIComponent).join('/')}`,
      async close() {
        const closed = once(server, 'close');
        server.close();
        server.closeAllConnections();
        await closed;
        if (certDir !== undefined) rmSync(certDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    if (certDir !== undefined) rmSync(certDir, { recursive: true, force: true });
    throw error;
  }
}

/**
 * `argv` run where libcurl trusts the CA in `caFile` (PEM) besides the
 * system's: QEMU's curl driver has no CA option, and libcurl reads no
 * environment variable for one (CURL_CA_BUNDLE, SSL_CERT_FILE and
 * SSL_CERT_DIR are read by the curl command, not by the library: with them
 * set, qemu-img still fails to verify). Debian's libcurl3-gnutls is built
 * with --with-ca-path=/etc/ssl/certs and no bundle, and GnuTLS loads every
 * PEM file in that directory: so in a private mount namespace (gone with
 * the command) `caFile` is bound over /etc/ssl/certs/ca-certificates.crt,
 * one file among them, and the command sees the test CA there. (unshare
 * and mount need root, as the suite has.)
 */
export function withTrustedCa(caFile: string, argv: Argv): Argv {
  const trust = 'mount --bind "$0" /etc/ssl/certs/ca-certificates.crt && exec "$@"';
  return ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', trust, caFile, ...argv];
}

// ---------------------------------------------------------------------------
// iSCSI

export interface IscsiTarget {
  port: number;
  /** The target's name. */
  iqn: string;
  /** iscsi://127.0.0.1:PORT/IQN/1: LUN 1, the image. */
  url: string;
  /** Everything tgtd printed. */
  output: () => string;
  /** Kills tgtd, waits for it, removes its directory. */
  close(): Promise<void>;
}

let targets = 0;

/**
 * tgtd in the foreground serving `image` (a raw file) as LUN 1 of one target
 * on a portal at 127.0.0.1 only, open to initiators on 127.0.0.1. Its
 * management socket is private (TGT_IPC_SOCKET, which tgtd and tgtadm both
 * read), in the server's directory, so it never meets a system tgtd.
 */
export async function startIscsiTarget({ image }: { image: string }): Promise<IscsiTarget> {
  const dir = serverDir('iscsi');
  // tgtd adds ".0" (its control port) to the path, and ".0.lock" for its lock.
  const env = { TGT_IPC_SOCKET: join(dir, 'tgtd.ipc') };
  const iqn = `iqn.2024-01.test.fuse-export:target${process.pid}.${targets++}`;
  const tgtadm = (...args: Argv) => run(['tgtadm', '--lld', 'iscsi', ...args], { env, timeout: 10_000 });
  const configure = async (...args: Argv) => {
    const result = await tgtadm(...args);
    if (result.code !== 0) throw new Error(`tgtadm ${args.join(' ')} exited ${result.code}: ${result.stdout}${result.stderr}`);
  };
  try {
    return await onFreePort(async (port) => {
      // Up once its management socket answers and lists the portal (one
      // whose port was taken is not listed, and tgtd runs on without it).
      // It ignores SIGTERM: stopped with SIGKILL (it holds nothing to save).
      const portal = `Portal: ${LOCALHOST}:${port},`;
      const tgtd = await startDaemon(
        ['tgtd', '--foreground', '--iscsi', `portal=${LOCALHOST}:${port}`],
        async () => existsSync(`${env.TGT_IPC_SOCKET}.0`) && (await tgtadm('--mode', 'portal', '--op', 'show')).stdout.includes(portal),
        { env, stop: 'SIGKILL' },
      );
      try {
        await configure('--mode', 'target', '--op', 'new', '--tid', 1, '--targetname', iqn);
        await configure('--mode', 'logicalunit', '--op', 'new', '--tid', 1, '--lun', 1, '--backing-store', resolve(image));
        await configure('--mode', 'target', '--op', 'bind', '--tid', 1, '--initiator-address', LOCALHOST);
      } catch (error) {
        await stopDaemon(tgtd, 'SIGKILL');
        throw new Error(`${error instanceof Error ? error.message : error}\ntgtd:\n${tgtd.output()}`);
      }
      return {
        port,
        iqn,
        url: `iscsi://${LOCALHOST}:${port}/${iqn}/1`,
        output: tgtd.output,
        async close() {
          await stopDaemon(tgtd, 'SIGKILL');
          rmSync(dir, { recursive: true, force: true });
        },
      };
    });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

// ---------------------------------------------------------------------------
// SSH

export interface SshServer {
  port: number;
  /** Who logs in: the user running the tests. */
  user: string;
  /** The host key's SHA-256 fingerprint in hex, as QEMU's host_key_check takes it (sha256:HEX). */
  hostKeySha256: string;
  /**
   * ssh://USER@127.0.0.1:PORT/ABSOLUTE/PATH?host_key_check=sha256:HEX for
   * `name` under root: QEMU checks the server's key against that.
   */
  url(name: string): string;
  /** The environment that gives the client its key: SSH_AUTH_SOCK of an agent holding it. */
  env: Record<string, string>;
  /** Everything sshd printed. */
  output: () => string;
  /** Stops sshd, its connections and the agent; removes the directory. */
  close(): Promise<void>;
}

/** How many of our sshd use /run/sshd, and whether we made it. */
const privsep = { users: 0, made: false };

/** sshd refuses to start without its privilege separation directory, /run/sshd (made by its service otherwise). */
function holdPrivsepDir(): void {
  if (privsep.users++ === 0 && !existsSync('/run/sshd')) {
    mkdirSync('/run/sshd', { mode: 0o755 });
    privsep.made = true;
  }
}

function releasePrivsepDir(): void {
  if (--privsep.users === 0 && privsep.made) {
    privsep.made = false;
    try {
      rmdirSync('/run/sshd');
    } catch {
      // Someone else's sshd put something there.
    }
  }
}

/**
 * sshd in the foreground (logging to stderr) on 127.0.0.1, letting the
 * current user in with a throwaway key only, serving the files under `root`
 * over SFTP (the subsystem QEMU's ssh driver uses).
 *
 * libssh 0.10, which QEMU's ssh driver uses, looks for the client's keys and
 * known_hosts in the home directory of the passwd entry (getpwuid), not in
 * $HOME (seen with strace: /root/.ssh even with HOME set elsewhere). So the
 * client key is handed over in an ssh-agent of ours (SSH_AUTH_SOCK in `env`),
 * which libssh asks first, and the host key is checked by QEMU against its
 * fingerprint (host_key_check=sha256:..., in the URL), leaving ~/.ssh alone.
 */
export async function startSshServer({ root }: { root: string }): Promise<SshServer> {
  const dir = serverDir('ssh');
  const user = userInfo().username;
  const hostKey = join(dir, 'host_ed25519');
  const clientKey = join(dir, 'client_ed25519');
  const agentSocket = join(dir, 'agent.sock');
  const env = { SSH_AUTH_SOCK: agentSocket };
  let agent: Child | undefined;
  holdPrivsepDir();
  try {
    for (const key of [hostKey, clientKey]) {
      await check(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'fuse-export test', '-f', key]);
    }
    const authorized = join(dir, 'authorized_keys');
    writeFileSync(authorized, readFileSync(`${clientKey}.pub`));
    const hostPublic = readFileSync(`${hostKey}.pub`, 'utf8').split(' ')[1];
    const hostKeySha256 = createHash('sha256').update(Buffer.from(hostPublic, 'base64')).digest('hex');

    agent = await startDaemon(['ssh-agent', '-D', '-a', agentSocket], () => existsSync(agentSocket));
    await check(['ssh-add', '-q', clientKey], { env });

    const server = await onFreePort(async (port) => {
      const config = join(dir, 'sshd_config');
      writeFileSync(
        config,
        [
          `ListenAddress ${LOCALHOST}:${port}`,
          `HostKey ${hostKey}`,
          `AuthorizedKeysFile ${authorized}`,
          `AllowUsers ${user}`,
          'AuthenticationMethods publickey',
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'PermitRootLogin prohibit-password',
          'StrictModes no',
          'UsePAM no',
          'PidFile none',
          'PrintMotd no',
          'Subsystem sftp internal-sftp',
          '',
        ].join('\n'),
      );
      const sshd = await startDaemon(['/usr/sbin/sshd', '-D', '-e', '-f', config], (d) => /Server listening on/.test(d.output()));
      return { port, sshd };
    });
    const { port, sshd } = server;
    const stopAgent = agent;
    return {
      port,
      user,
      hostKeySha256,
      env,
      output: sshd.output,
      url: (name) => `ssh://${user}@${LOCALHOST}:${port}${resolve(root, name)}?host_key_check=sha256:${hostKeySha256}`,
      async close() {
        await stopDaemon(sshd);
        await stopDaemon(stopAgent);
        releasePrivsepDir();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    if (agent !== undefined) await stopDaemon(agent);
    releasePrivsepDir();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

