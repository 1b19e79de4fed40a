#!/usr/bin/env node
// The `fuse-export` command: parse, start, log the life of the export,
// stop on signals, exit 0 (clean stop), 1 (bad usage or set-up), 2 (halted).
import { hideBin } from 'yargs/helpers';
import { FuseExport, type StoppedEvent } from '../lifecycle/export.js';
import { parseArgs } from './args.js';
import { createLogger, flush } from './logger.js';
import { removePidfile, writePidfile } from './pidfile.js';

const EXIT_OK = 0;
const EXIT_SETUP = 1;
const EXIT_HALTED = 2;

function usageError(message: string): never {
  process.stderr.write(`fuse-export: ${message}\nRun 'fuse-export --help' for usage.\n`);
  process.exit(EXIT_SETUP);
}

async function main(): Promise<number> {
  const args = parseArgs(hideBin(process.argv), usageError);
  const log = createLogger(args.logFormat, args.logLevel);
  let exp: FuseExport;
  try {
    exp = await FuseExport.start(args.export);
  } catch (error) {
    log.error((error as Error).message, { event: 'failed' });
    await flush(log);
    return EXIT_SETUP;
  }
  exp.on('warning', ({ message, ...fields }) => log.warn(message, fields));
  exp.on('state', ({ from, to }) => log.debug(`State ${from} -> ${to}`, { event: 'state', from, to }));
  exp.on('halted', ({ reason }) => log.error(`Export halted: ${reason}`, { event: 'halted', reason }));

  const stopped = new Promise<StoppedEvent>((resolve) => exp.once('stopped', resolve));
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      log.warn(`Second ${signal}: exiting without waiting for the drain`, { event: 'forced' });
      process.exit(EXIT_SETUP);
    }
    log.info(`Received ${signal}: draining and unmounting`, { event: 'signal', signal });
    void exp.stop('signal');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const { info } = exp;
  log.info(`Transport: ${info.transport} (${info.transportReason})`, {
    event: 'transport',
    transport: info.transport,
    reason: info.transportReason,
  });
  log.info(`Exporting ${info.image} on ${info.mountpoint} (${info.transport})`, {
    event: 'ready',
    mountpoint: info.mountpoint,
    image: info.image,
    size: info.size,
    writable: info.writable,
    growable: info.growable,
    transport: info.transport,
    threads: info.threads,
    ringQueues: info.ringQueues,
    ...(info.transport === 'io_uring' ? { queueDepth: info.queueDepth } : {}),
    allowOther: info.allowOther,
    directIo: info.directIo,
  });
  if (args.pidfile) {
    try {
      writePidfile(args.pidfile);
    } catch (error) {
      log.error(`Failed to write the pidfile ${args.pidfile}: ${(error as Error).message}`, { event: 'failed' });
      await exp.stop('pidfile');
      await flush(log);
      return EXIT_SETUP;
    }
  }

  const result = await stopped;
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
