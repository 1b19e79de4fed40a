#!/usr/bin/env node
// The `fuse-export` command: parse, start, log the life of the export,
// stop on signals; exit 0 (clean stop), 1 (bad usage or set-up), 2 (halted).
// The export is the one export of a StorageDaemon, as the Node API's are.
import { hideBin } from 'yargs/helpers';
import type winston from 'winston';
import { StorageDaemon } from '../daemon/daemon.js';
import type { FuseExport, StoppedEvent } from '../lifecycle/export.js';
import { parseArgs, type CliArgs } from './args.js';
import { createLogger, flush } from './logger.js';
import { removePidfile, writePidfile } from './pidfile.js';
import { statusLine, watchStats } from './status.js';

const EXIT_OK = 0;
const EXIT_SETUP = 1;
const EXIT_HALTED = 2;
/** The export's id in the daemon: never shown, there being only the one. */
const EXPORT_ID = 'fuse-export';

function usageError(message: string): never {
  process.stderr.write(`fuse-export: ${message}\nRun 'fuse-export --help' for usage.\n`);
  process.exit(EXIT_SETUP);
}

/** SIGINT / SIGTERM: the first drains and stops, the second aborts. */
function handleSignals(
  log: winston.Logger,
  daemon: StorageDaemon,
  target: () => FuseExport | undefined,
): { received: () => boolean } {
  let count = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    count += 1;
    if (count === 1) {
      log.info(`Received ${signal}: draining and unmounting`, { event: 'signal', signal });
      void daemon.shutdown('signal');
    } else {
      log.warn(`Received ${signal} again: aborting the connection`, { event: 'abort', signal });
      target()?.abort();
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return { received: () => count > 0 };
}

function logReady(log: winston.Logger, exp: FuseExport): void {
  const { info } = exp;
  const passthrough = `passthrough ${info.passthrough ? 'on' : 'off'} (${info.passthroughReason})`;
  log.info(`Transport: ${info.transport} (${info.transportReason}); ${passthrough}`, {
    event: 'transport',
    transport: info.transport,
    reason: info.transportReason,
    passthrough: info.passthrough,
    passthroughReason: info.passthroughReason,
  });
  log.info(`Exporting ${info.image} (${info.format}) on ${info.mountpoint} (${info.transport})`, {
    event: 'ready',
    mountpoint: info.mountpoint,
    image: info.image,
    format: info.format,
    backend: info.backend,
    ...(info.qemuVersion ? { qemuVersion: info.qemuVersion } : {}),
    size: info.size,
    writable: info.writable,
    growable: info.growable,
    transport: info.transport,
    threads: info.threads,
    ringQueues: info.ringQueues,
    ...(info.transport === 'io_uring' ? { queueDepth: info.queueDepth } : {}),
    allowOther: info.allowOther,
    directIo: info.directIo,
    passthrough: info.passthrough,
  });
}

function showStats(args: CliArgs, log: winston.Logger, exp: FuseExport): () => void {
  if (args.statsInterval <= 0) return () => {};
  const live = process.stderr.isTTY && args.logFormat === 'pretty' && !args.quiet;
  const stop = watchStats(() => exp.stats(), args.statsInterval, (r) => {
    if (live) process.stderr.write(`\r\x1b[K${statusLine(r)}`);
    else log.info(statusLine(r), { event: 'stats', ...r });
  });
  return () => {
    stop();
    if (live) process.stderr.write('\r\x1b[K');
  };
}

async function main(): Promise<number> {
  const args = parseArgs(hideBin(process.argv), usageError);
  const log = createLogger(args.logFormat, args.logLevel);
  const daemon = new StorageDaemon({ defaultThreads: args.export.threads });
  // The daemon names the export in its warnings; the CLI's lines never did.
  daemon.on('warning', ({ message, id: _id, ...fields }) => log.warn(message, fields));
  let exp: FuseExport | undefined;
  const signals = handleSignals(log, daemon, () => exp);
  try {
    exp = await daemon.addImageExport(EXPORT_ID, args.export);
  } catch (error) {
    log.error((error as Error).message, { event: 'failed' });
    await flush(log);
    return EXIT_SETUP;
  }
  exp.on('state', ({ from, to }) => log.info(`State ${from} -> ${to}`, { event: 'state', from, to }));
  exp.on('halted', ({ reason }) => log.error(`Export halted: ${reason}`, { event: 'halted', reason }));
  const stopped = new Promise<StoppedEvent>((resolve) => exp.once('stopped', resolve));

  // The pidfile is in place by the time a script sees the ready line.
  if (args.pidfile) {
    try {
      writePidfile(args.pidfile);
    } catch (error) {
      log.error(`Failed to write the pidfile ${args.pidfile}: ${(error as Error).message}`, { event: 'failed' });
      await daemon.shutdown('pidfile');
      await flush(log);
      return EXIT_SETUP;
    }
  }
  logReady(log, exp);
  // A signal that came while we were starting stops us now.
  if (signals.received()) void daemon.shutdown('signal');
  const stopStats = showStats(args, log, exp);

  const result = await stopped;
  stopStats();
  if (args.pidfile) removePidfile(args.pidfile);
  const { reason, ...counters } = result;
  log.info(`Export stopped (${reason})`, { event: 'stopped', reason, ...counters });
  await flush(log);
  return reason === 'halted' ? EXIT_HALTED : EXIT_OK;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`fuse-export: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(EXIT_SETUP);
  },
);
