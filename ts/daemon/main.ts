#!/usr/bin/env node
// The `fuse-export-storage-daemon` command: qemu-storage-daemon's command
// line and QMP for FUSE exports. Serves the command line's exports, then
// whatever QMP adds, until SIGINT / SIGTERM or `quit`: every export drains
// and unmounts, exit 0. A bad command line or an export that cannot start:
// exit 1 with the reason.
import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import type winston from 'winston';
import { createLogger, flush } from '../cli/logger.js';
import { removePidfile, writePidfile } from '../cli/pidfile.js';
import { native } from '../native.js';
import { parseDaemonArgs } from './cmdline.js';
import { DaemonConfigError, type DaemonConfig } from './config.js';
import { StorageDaemon } from './daemon.js';
import { daemonRegistry, metricsAddress, serveMetrics } from './metrics.js';
import { QmpServer } from './qmp.js';
import { PACKAGE, QEMU_VERSION, qmpCommands } from './qmp-commands.js';
import { USAGE } from './usage.js';

const NAME = 'fuse-export-storage-daemon';
const EXIT_OK = 0;
const EXIT_SETUP = 1;
/** Set in the child of `--daemonize`: the descriptor it says "ready" (or why not) on. */
const READY_FD_VARIABLE = 'FUSE_EXPORT_DAEMON_READY_FD';

/** `--daemonize`: the same command in the background; this process exits once it serves (0) or failed (1). */
async function daemonize(argv: readonly string[]): Promise<number> {
  const child = spawn(process.execPath, [process.argv[1]!, ...argv.filter((a) => a !== '--daemonize')], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [READY_FD_VARIABLE]: '3' },
  });
  let said = '';
  child.stdio[3]!.on('data', (chunk: Buffer) => (said += chunk.toString()));
  const code = await new Promise<number>((resolve) => {
    child.stdio[3]!.on('close', () => resolve(said.startsWith('ready') ? EXIT_OK : EXIT_SETUP));
    child.on('exit', () => resolve(EXIT_SETUP));
  });
  if (code !== EXIT_OK) process.stderr.write(`${NAME}: ${said.replace(/^error: /, '') || 'the daemon ended while starting'}\n`);
  child.unref();
  return code;
}

/** Tells the `--daemonize` parent how the start went, once. */
function tellParent(message: string): void {
  const fd = Number(process.env[READY_FD_VARIABLE]);
  if (!Number.isInteger(fd)) return;
  delete process.env[READY_FD_VARIABLE];
  writeSync(fd, message);
  closeSync(fd);
}

/** Everything the daemon runs besides its exports, stopped in reverse order. */
class Services {
  readonly #closers: (() => Promise<void> | void)[] = [];

  add(close: () => Promise<void> | void): void {
    this.#closers.unshift(close);
  }

  async close(): Promise<void> {
    for (const close of this.#closers) await close();
  }
}

async function serve(config: DaemonConfig, log: winston.Logger): Promise<number> {
  const daemon = new StorageDaemon({ iothreads: config.iothreads, secrets: config.secrets });
  const services = new Services();
  const monitors: QmpServer[] = [];
  let stopping: Promise<void> | undefined;
  let stopped!: () => void;
  const finished = new Promise<void>((resolve) => (stopped = resolve));
  const stop = (reason: string) => {
    stopping ??= (async () => {
      log.info(`Shutting down (${reason}): draining and unmounting every export`, { event: 'shutdown', reason });
      native().sdNotify('STOPPING=1');
      for (const monitor of monitors) monitor.emit('SHUTDOWN', { guest: false, reason });
      await daemon.shutdown();
      await services.close();
      stopped();
    })();
    return stopping;
  };
  daemon.on('warning', ({ message, ...fields }) => log.warn(message, fields));
  daemon.on('exportDeleted', ({ id, stopped }) => {
    log.info(`Export ${id} deleted (${stopped.reason})`, { event: 'export-deleted', id, ...stopped });
    for (const monitor of monitors) monitor.emit('BLOCK_EXPORT_DELETED', { id });
  });
  process.on('SIGINT', () => void stop('host-signal'));
  process.on('SIGTERM', () => void stop('host-signal'));
  try {
    for (const blockdev of config.blockdevs) daemon.addBlockdev(blockdev);
    for (const spec of config.exports) {
      const exp = await daemon.addExport(spec);
      log.info(`Exporting ${exp.info.image} (${exp.info.format}) on ${exp.info.mountpoint} (${exp.info.transport})`, {
        event: 'ready',
        id: spec.id,
        ...exp.info,
      });
    }
    const handlers = qmpCommands(daemon, () => void stop('host-qmp-quit'));
    for (const monitor of config.monitors) {
      const chardev = config.chardevs.find((c) => c.id === monitor.chardev)!;
      const server = await QmpServer.listen({ path: chardev.path, version: { qemu: QEMU_VERSION, package: PACKAGE }, handlers, logger: log });
      monitors.push(server);
      services.add(() => server.close());
    }
    if (config.metrics !== undefined) {
      const registry = daemonRegistry(() => daemon.counters(), native().latencyBounds());
      const metrics = await serveMetrics(metricsAddress(config.metrics), registry);
      services.add(() => metrics.close());
    }
    if (config.pidfile !== undefined) {
      writePidfile(config.pidfile);
      const pidfile = config.pidfile;
      services.add(() => removePidfile(pidfile));
    }
  } catch (error) {
    const message = (error as Error).message;
    log.error(message, { event: 'failed' });
    tellParent(`error: ${message}`);
    await stop('failed');
    return EXIT_SETUP;
  }
  log.info(`Serving ${config.exports.length} export(s); QMP on ${config.chardevs.map((c) => c.path).join(', ') || 'no socket'}`, {
    event: 'serving',
  });
  tellParent('ready');
  native().sdNotify('READY=1');
  await finished;
  log.info('Stopped', { event: 'stopped' });
  return EXIT_OK;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  let invocation;
  try {
    invocation = parseDaemonArgs(argv);
  } catch (error) {
    if (!(error instanceof DaemonConfigError)) throw error;
    process.stderr.write(`${NAME}: ${error.message}\nRun '${NAME} --help' for usage.\n`);
    return EXIT_SETUP;
  }
  if (invocation.action === 'help') {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (invocation.action === 'version') {
    process.stdout.write(`${PACKAGE} (qemu-storage-daemon ${Object.values(QEMU_VERSION).join('.')} compatible)\n`);
    return EXIT_OK;
  }
  if (invocation.config.daemonize && process.env[READY_FD_VARIABLE] === undefined) return daemonize(argv);
  const log = createLogger(process.stderr.isTTY ? 'pretty' : 'json', 'info');
  const code = await serve(invocation.config, log);
  await flush(log);
  return code;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`${NAME}: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(EXIT_SETUP);
  },
);
