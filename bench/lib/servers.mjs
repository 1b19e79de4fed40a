// The servers of the benchmark: the FUSE exports under test (fuse-export,
// qemu-storage-daemon, nbdfuse, the minimal C reference server) and the NBD
// servers (nbdkit behind the NBD section, a bare qemu-nbd as the formats
// section's limit). Each is started once per section and stopped with
// SIGTERM, then SIGKILL after a timeout, then `umount -l`.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { nbdkitCommand } from '../../test/helpers/nbdkit.mjs';
import { isMounted, killPid, run, sleep, track, umountLazy } from './proc.mjs';

class Server {
  constructor({ target, kind, mountpoint, command, args, env }) {
    this.target = target;
    this.kind = kind;
    /** The mount to unmount when the server leaves it behind (none for nbdkit). */
    this.mountpoint = mountpoint;
    this.command = command;
    this.args = args;
    this.env = env;
    this.events = [];
    this.stderr = [];
    this.notes = [];
    this.dead = false;
    this.stopped = undefined;
    this.exit = undefined;
    /** The command name of the server's own child processes whose CPU time and memory count with its own (measure.mjs). */
    this.helper = undefined;
  }

  spawn() {
    const env = this.env ? { ...process.env, ...this.env } : process.env;
    this.child = track(spawn(this.command, this.args, { detached: true, env, stdio: ['ignore', 'ignore', 'pipe'] }));
    this.pid = this.child.pid;
    this.closed = new Promise((resolve) => {
      this.child.on('error', (error) => {
        this.stderr.push(`spawn failed: ${error.message}`);
        this.exit = { code: null, signal: null, error: error.message };
        resolve(this.exit);
      });
      this.child.on('close', (code, signal) => {
        this.exit = { code, signal };
        this.dead = true;
        resolve(this.exit);
      });
    });
    createInterface({ input: this.child.stderr }).on('line', (line) => {
      if (this.stderr.length < 2000) this.stderr.push(line);
      if (!line.startsWith('{')) return;
      try {
        const event = JSON.parse(line);
        this.events.push(event);
        this.onEvent?.(event);
      } catch {
        // Not a log line.
      }
    });
  }

  get alive() {
    return this.exit === undefined;
  }

  /** Warnings and errors the server logged (JSON log levels warn / error). */
  get complaints() {
    return this.events.filter((e) => e.level === 'warn' || e.level === 'error');
  }

  /**
   * SIGTERM, wait; SIGKILL, wait; `umount -l` when something is still
   * mounted. Records what it had to do in `notes`.
   */
  async stop({ termTimeout = 20_000, killTimeout = 5_000 } = {}) {
    const started = Date.now();
    if (this.alive && this.pid !== undefined) {
      killPid(this.pid, 'SIGTERM');
      const exited = await Promise.race([this.closed.then(() => true), sleep(termTimeout).then(() => false)]);
      if (!exited) {
        this.notes.push(`did not exit within ${termTimeout / 1000} s of SIGTERM: sent SIGKILL`);
        killPid(this.pid, 'SIGKILL');
        await Promise.race([this.closed, sleep(killTimeout)]);
      }
    }
    this.stopMs = Date.now() - started;
    if (this.mountpoint && isMounted(this.mountpoint)) {
      const count = umountLazy(this.mountpoint);
      this.notes.push(`${this.mountpoint} was still mounted after the server exited: umount -l (${count})`);
    }
    this.dead = true;
    return this.exit;
  }
}

/**
 * Starts fuse-export and waits for its "ready" event. Rejects (after
 * cleaning up) when it logs "failed", exits, or takes too long.
 */
export async function startFuseExport({ cli, target, image, format, mountpoint, transport, threads, cache, queueDepth, timeout = 30_000 }) {
  // The FUSE path with passthrough off; passthrough on a growable export,
  // the kind it serves (fio stays inside the image).
  const passthrough = transport === 'passthrough';
  const args = [
    cli,
    '--writable',
    // Named, not probed: a probed raw image keeps writes on the FUSE path.
    ...(format ? ['--format', format] : []),
    ...(passthrough ? ['--growable'] : []),
    '--passthrough',
    passthrough ? 'on' : 'off',
    '--io-uring',
    transport === 'io_uring' ? 'on' : 'off',
    '--threads',
    String(threads),
    '--cache',
    cache,
    '--log-format',
    'json',
    ...(queueDepth ? ['--queue-depth', String(queueDepth)] : []),
    image,
    mountpoint,
  ];
  const server = await startLogged({ target, kind: 'fuse-export', mountpoint, args, readyEvent: 'ready', timeout });
  server.transport = transport;
  // An image served through QEMU: the export's qemu-nbd child does the I/O.
  if (server.info.backend === 'qemu') server.helper = 'qemu-nbd';
  return server;
}

/**
 * One raw image exported by fuse-export-storage-daemon, as a script for
 * qemu-storage-daemon would ask for it (its own command line), over
 * FUSE-over-io_uring with `threads` I/O threads (iothreads).
 */
export async function startDaemonExport({ daemon, target, image, mountpoint, threads, cache, timeout = 30_000 }) {
  const iothreads = daemonIothreads(threads);
  const args = [
    ...iothreads.args,
    ...daemonExportArgs({ node: 'disk', id: 'exp0', image, mountpoint, cache, iothreads: iothreads.ids, uring: true }),
  ];
  const server = await startDaemon({ daemon, target, mountpoint, args, timeout });
  server.transport = 'io_uring';
  return server;
}

/** `count` iothreads for the daemon's exports: their ids and the `--object` arguments that make them. */
export function daemonIothreads(count) {
  const ids = Array.from({ length: count }, (_, i) => `io${i}`);
  return { ids, args: ids.flatMap((id) => ['--object', `iothread,id=${id}`]) };
}

/**
 * One export's `--blockdev` and `--export` on the daemon's command line: the
 * raw `image` as block node `node`, exported as `id` onto `mountpoint`,
 * writable, over FUSE-over-io_uring when `uring` (else /dev/fuse), without
 * passthrough, with the I/O threads of `iothreads`.
 */
export function daemonExportArgs({ node, id, image, mountpoint, cache, iothreads, uring }) {
  return [
    '--blockdev',
    `driver=file,node-name=${node},filename=${image},cache.direct=${cache === 'direct' ? 'on' : 'off'}`,
    '--export',
    `type=fuse,id=${id},node-name=${node},mountpoint=${mountpoint},writable=on,io-uring=${uring ? 'on' : 'off'},passthrough=off,${iothreads.map((t, i) => `iothread.${i}=${t}`).join(',')}`,
  ];
}

/** fuse-export-storage-daemon with the command line `args`, once it serves (its `serving` line); `mountpoint`: the one to unmount should it leave it behind. */
export function startDaemon({ daemon, target, mountpoint, args, timeout = 30_000 }) {
  return startLogged({ target, kind: 'fuse-export-storage-daemon', mountpoint, args: [daemon, ...args], readyEvent: 'serving', timeout });
}

/** Starts one of our commands (node, JSON log lines) and waits for `readyEvent`. */
async function startLogged({ target, kind, mountpoint, args, readyEvent, timeout }) {
  const server = new Server({ target, kind, mountpoint, command: process.execPath, args });
  const ready = new Promise((resolve, reject) => {
    server.onEvent = (event) => {
      if (event.event === readyEvent) resolve(event);
      else if (event.event === 'failed') reject(new Error(`${kind} failed to start: ${event.message}`));
      else if (event.event === 'stopped') server.stopped = event;
    };
  });
  server.spawn();
  const outcome = await Promise.race([
    ready.then((event) => ({ event })),
    server.closed.then((exit) => ({ error: new Error(`${kind} exited before it was ready (${JSON.stringify(exit)})`) })),
    sleep(timeout).then(() => ({ error: new Error(`${kind} was not ready within ${timeout / 1000} s`) })),
  ]).catch((error) => ({ error }));
  if (outcome.error) {
    await server.stop({ termTimeout: 5_000 });
    outcome.error.stderr = server.stderr.join('\n');
    throw outcome.error;
  }
  server.info = outcome.event;
  return server;
}

/** Polls `ready()` while `server` lives; stops it and throws when it dies or times out. */
async function awaitReady(server, ready, what, timeout) {
  const deadline = Date.now() + timeout;
  while (server.alive && !ready() && Date.now() < deadline) await sleep(20);
  if (server.alive && ready()) return server;
  await server.stop({ termTimeout: 5_000 });
  const error = new Error(`${what} ${server.alive ? `was not ready within ${timeout / 1000} s` : `exited (${JSON.stringify(server.exit)})`}`);
  error.stderr = server.stderr.join('\n');
  throw error;
}

/**
 * qemu-storage-daemon's FUSE export of `image`, in the first of these
 * configurations that starts: one iothread per CPU (the multi-queue FUSE
 * export of newer QEMU: `iothread.N=`), then QEMU's default (the main loop);
 * aio=`firstAio` (io_uring unless told), then aio=threads. Ready when the
 * mount appears.
 */
export async function startQsd({ target, image, format = 'raw', nbdSocket, mountpoint, threads, directIo, firstAio = 'io_uring', timeout = 30_000 }) {
  const iothreads = Array.from({ length: threads }, (_, i) => `iot${i}`);
  const attempts = [];
  // An NBD client has no aio mode of its own: one attempt each.
  for (const aio of nbdSocket ? ['io_uring'] : [...new Set([firstAio, 'threads'])]) {
    if (threads > 1) attempts.push({ aio, iothreads, label: `${threads} iothreads (multi-queue), aio=${aio}` });
    attempts.push({ aio, iothreads: [], label: `default (main loop, no iothread), aio=${aio}` });
  }
  const tried = [];
  for (const attempt of attempts) {
    const source = nbdSocket
      ? `driver=nbd,node-name=file0,server.type=unix,server.path=${nbdSocket}`
      : `driver=file,node-name=file0,filename=${image},cache.direct=${directIo ? 'on' : 'off'},aio=${attempt.aio}`;
    const args = [
      ...attempt.iothreads.flatMap((id) => ['--object', `iothread,id=${id}`]),
      '--blockdev',
      source,
      '--blockdev',
      `driver=${format},node-name=fmt0,file=file0`,
      '--export',
      [
        'type=fuse,id=exp0,node-name=fmt0',
        `mountpoint=${mountpoint}`,
        'writable=on',
        ...attempt.iothreads.map((id, i) => `iothread.${i}=${id}`),
      ].join(','),
    ];
    const server = new Server({ target, kind: 'qemu-storage-daemon', mountpoint, command: 'qemu-storage-daemon', args });
    server.spawn();
    try {
      await awaitReady(server, () => isMounted(mountpoint), 'qemu-storage-daemon', timeout);
    } catch (error) {
      tried.push({ config: attempt.label, stderr: error.stderr.trim() });
      continue;
    }
    const label = nbdSocket ? attempt.label.replace(/, aio=.*/, ', nbd driver') : attempt.label;
    server.info = { config: label, aio: attempt.aio, iothreads: attempt.iothreads.length, cacheDirect: directIo, args };
    server.rejected = tried;
    return server;
  }
  const error = new Error(`qemu-storage-daemon did not start in any configuration`);
  error.stderr = tried.map((t) => `${t.config}: ${t.stderr}`).join('\n');
  throw error;
}

/** libnbd's FUSE client: `nbdfuse DIR/FILE URI` serves the export as DIR/FILE. */
export async function startNbdfuse({ target, dir, uri, timeout = 30_000 }) {
  const mountpoint = `${dir}/nbd`;
  const server = new Server({ target, kind: 'nbdfuse', mountpoint: dir, command: 'nbdfuse', args: [mountpoint, uri] });
  server.spawn();
  await awaitReady(server, () => isMounted(dir), 'nbdfuse', timeout);
  server.info = { config: 'nbdfuse (libnbd), its default connections' };
  server.file = mountpoint;
  return server;
}

/**
 * The minimal C FUSE server (FUSE-over-io_uring, an in-memory 64 MiB image):
 * the transport's ceiling. `queues` ring queues of `depth` entries each.
 */
export async function startReference({ target, binary, mountpoint, queues, depth, timeout = 30_000 }) {
  const env = { PROTO_URING: '1', PROTO_NQ: String(queues), PROTO_DEPTH: String(depth) };
  const server = new Server({ target, kind: 'reference', mountpoint, command: binary, args: [mountpoint], env });
  server.spawn();
  await awaitReady(server, () => isMounted(mountpoint) && server.stderr.some((l) => /serving/.test(l)), 'the reference server', timeout);
  // Its image starts as an untouched anonymous mapping: every read would
  // copy the one shared zero page, always in cache, where a real image's
  // reads copy distinct pages. Filled with data, as the image files are.
  const fill = await run('dd', ['if=/dev/urandom', `of=${mountpoint}`, 'bs=1M', 'count=64', 'oflag=direct', 'conv=notrunc', 'status=none'], { timeout: 60_000 });
  if (fill.code !== 0) {
    await server.stop({ termTimeout: 5_000 });
    throw new Error(`filling the reference server's image failed: ${fill.stderr}`);
  }
  server.info = { config: `C reference server, ${queues} ring queues x ${depth}, in-memory 64 MiB image filled with data` };
  return server;
}

/** nbdkit as the tests start it (test/helpers/nbdkit.mjs), with its socket under `dir`. */
export async function startNbdkit({ target, dir, plugin, filters = [], params = [], timeout = 30_000 }) {
  const nbdkit = nbdkitCommand(dir, { plugin, filters, params });
  const server = new Server({ target, kind: 'nbdkit', mountpoint: undefined, command: nbdkit.argv[0], args: nbdkit.argv.slice(1) });
  server.spawn();
  await awaitReady(server, nbdkit.listening, 'nbdkit', timeout);
  server.info = { config: `nbdkit ${[...plugin, ...filters.map((f) => `--filter=${f}`), ...params].join(' ')}` };
  server.uri = nbdkit.uri;
  server.socket = nbdkit.address;
  return server;
}

/**
 * The options fuse-export gives its qemu-nbd child for a local image
 * (child_args in crates/core/src/image/qemu/mod.rs), for a bare qemu-nbd to
 * be measured against: `cache` is `none` (--cache direct: Linux AIO) or
 * `writeback` (io_uring).
 */
export const qemuAio = (cache) => (cache === 'none' ? 'native' : 'io_uring');
export function qemuNbdOptions(cache) {
  return ['--persistent', '--shared=1026', '--discard=unmap', `--cache=${cache}`, `--aio=${qemuAio(cache)}`];
}

/** A bare qemu-nbd serving `image` on the Unix socket `socket`; ready when its pid file appears (it has opened the image). */
export async function startQemuNbd({ target, image, format, socket, cache, timeout = 30_000 }) {
  const pidFile = `${socket}.pid`;
  const args = [...qemuNbdOptions(cache), '-f', format, '-k', socket, `--pid-file=${pidFile}`, image];
  const server = new Server({ target, kind: 'qemu-nbd', mountpoint: undefined, command: 'qemu-nbd', args });
  server.spawn();
  await awaitReady(server, () => existsSync(pidFile) && existsSync(socket), 'qemu-nbd', timeout);
  server.info = { config: `qemu-nbd ${[...qemuNbdOptions(cache), '-f', format].join(' ')}` };
  server.uri = `nbd+unix:///?socket=${socket}`;
  return server;
}
