// The command line: `fuse-export [options] <image> <mountpoint>`.
import { createRequire } from 'node:module';
import yargs, { type Options } from 'yargs';
import {
  CACHE_MODES,
  DEFAULTS,
  FORMATS,
  SWITCHES,
  type CacheMode,
  type ExportOptions,
  type ImageFormat,
  type Switch,
} from '../options.js';
import { LOG_LEVELS, type LogFormat, type LogLevel } from './logger.js';

export interface CliArgs {
  export: ExportOptions;
  logFormat: LogFormat;
  logLevel: LogLevel;
  pidfile?: string;
  /** Seconds between `stats` events; 0 for none. */
  statsInterval: number;
  quiet: boolean;
}

/** The options (all of them take a value but the booleans). */
const OPTIONS = {
  writable: { type: 'boolean', default: DEFAULTS.writable, describe: 'allow writes' },
  growable: { type: 'boolean', default: DEFAULTS.growable, describe: 'writes past the end grow the image' },
  'allow-other': {
    choices: SWITCHES,
    default: DEFAULTS.allowOther,
    describe: 'let other users in (auto: when permitted)',
  },
  'io-uring': {
    choices: SWITCHES,
    default: DEFAULTS.ioUring,
    describe: 'serve over FUSE-over-io_uring (auto: when the kernel offers it)',
  },
  passthrough: {
    choices: SWITCHES,
    default: DEFAULTS.passthrough,
    describe: 'let the kernel read and write the image itself (auto: as root, for read-only or growable raw images)',
  },
  threads: { type: 'number', default: DEFAULTS.threads, describe: 'I/O threads' },
  'queue-depth': { type: 'number', default: DEFAULTS.queueDepth, describe: 'entries per io_uring queue' },
  'poll-max-us': {
    type: 'number',
    default: DEFAULTS.pollMaxUs,
    describe:
      'microseconds an I/O thread may busy-poll before it sleeps, adapted to the load: lower latency at ' +
      'iodepth 1 for CPU, fewer IOPS at depth (0: never; 250 suits a disk at iodepth 1)',
  },
  cache: {
    choices: CACHE_MODES,
    default: DEFAULTS.cache,
    describe: 'direct: O_DIRECT on the image; writeback: through the page cache',
  },
  format: {
    choices: FORMATS,
    default: DEFAULTS.format,
    describe:
      'image format: auto recognises every format QEMU does (qcow2, vmdk, vhdx, vdi, vpc, luks...); raw and ' +
      'qcow2 are served natively, the others through QEMU (qemu-nbd); an image probed as raw refuses writes ' +
      'that would plant a qcow2 header (--format raw lifts that)',
  },
  snapshot: {
    type: 'boolean',
    default: DEFAULTS.snapshot,
    describe: 'writes go to a temporary overlay, thrown away at exit: the image is never written',
  },
  overlay: {
    type: 'string',
    describe: 'writes go to this qcow2 overlay over the image (created when missing, reused when present)',
  },
  'key-file': { type: 'string', describe: 'file holding the key of an encrypted image (LUKS, encrypted qcow2)' },
  'password-file': { type: 'string', describe: "file holding the password of the image's server (HTTP)" },
  'ca-file': { type: 'string', describe: "CA certificate (PEM) to check an HTTPS server's certificate against" },
  'shutdown-timeout': {
    type: 'number',
    default: DEFAULTS.shutdownTimeout / 1000,
    describe: 'seconds a stop may take (drain, connection, references) before it aborts the connection',
  },
  'reconnect-delay': {
    type: 'number',
    default: DEFAULTS.reconnectDelay,
    describe:
      'NBD images and images QEMU serves: seconds requests wait for a lost server (or a restarted qemu-nbd) ' +
      'to come back, then EIO while reconnecting goes on (0: an NBD export halts when the server goes; ' +
      "QEMU's child gets 30 s)",
  },
  'log-format': {
    choices: ['json', 'pretty'] as const,
    default: process.stderr.isTTY ? 'pretty' : 'json',
    describe: 'log lines on stderr',
  },
  'log-level': { choices: LOG_LEVELS, default: 'info' as LogLevel },
  pidfile: { type: 'string', describe: 'write the process id here once ready' },
  'stats-interval': {
    type: 'number',
    default: 0,
    describe: 'log counters (IOPS, bytes, in flight) every S seconds; on a terminal, a live status line',
  },
  quiet: { type: 'boolean', default: false, alias: 'q', describe: 'log only warnings and errors' },
} satisfies Record<string, Options>;

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

/** Parses argv; bad usage goes to `fail` with the message to print. */
export function parseArgs(argv: string[], fail: (message: string) => never): CliArgs {
  const unknown = unknownOption(argv);
  if (unknown !== undefined) fail(`Unknown option: ${unknown}`);
  const parsed = yargs(argv)
    .scriptName('fuse-export')
    .usage('$0 [options] <image> <mountpoint>\n\nPresent a disk image or block device as one regular file through FUSE.')
    .command('$0 <image> <mountpoint>', false)
    .positional('image', {
      type: 'string',
      describe:
        'disk image file or block device to export, nbd://HOST[:PORT][/EXPORT], nbd+unix:///EXPORT?socket=PATH, ' +
        "or a place QEMU reads: http(s)://, ssh://, iscsi://, nfs://, rbd:, json:{...}",
    })
    .positional('mountpoint', { type: 'string', describe: 'existing regular file that becomes the image' })
    .options(OPTIONS)
    .strict()
    .version(version)
    .help()
    .alias('h', 'help')
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .fail((message, error) => fail(message ?? error?.message ?? 'invalid command line'))
    .parseSync();

  const number = (name: string, value: number) =>
    Number.isNaN(value) ? fail(`--${name} takes a number`) : value;
  return {
    export: {
      image: String(parsed.image),
      mountpoint: String(parsed.mountpoint),
      writable: parsed.writable,
      growable: parsed.growable,
      allowOther: parsed['allow-other'] as Switch,
      ioUring: parsed['io-uring'] as Switch,
      passthrough: parsed.passthrough as Switch,
      threads: number('threads', parsed.threads),
      queueDepth: number('queue-depth', parsed['queue-depth']),
      pollMaxUs: number('poll-max-us', parsed['poll-max-us']),
      cache: parsed.cache as CacheMode,
      format: parsed.format as ImageFormat,
      shutdownTimeout: Math.round(number('shutdown-timeout', parsed['shutdown-timeout']) * 1000),
      reconnectDelay: number('reconnect-delay', parsed['reconnect-delay']),
      snapshot: parsed.snapshot,
      overlay: parsed.overlay,
      keyFile: parsed['key-file'],
      passwordFile: parsed['password-file'],
      caFile: parsed['ca-file'],
    },
    logFormat: parsed['log-format'] as LogFormat,
    logLevel: parsed.quiet ? 'warn' : parsed['log-level'],
    pidfile: parsed.pidfile,
    statsInterval: number('stats-interval', parsed['stats-interval']),
    quiet: parsed.quiet,
  };
}

const camel = (name: string): string => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/**
 * The first option on the command line that is not ours. Checked before
 * yargs parses: yargs would take `--bogus image mnt` as --bogus=image and
 * then complain about a missing positional instead.
 */
export function unknownOption(argv: readonly string[]): string | undefined {
  const takesValue = new Set<string>();
  const known = new Set(['help', 'h', 'version']);
  for (const [name, option] of Object.entries(OPTIONS) as [string, Options][]) {
    const names = [name, camel(name), ...[option.alias ?? []].flat()];
    for (const n of names) {
      known.add(n);
      if (option.type === 'boolean') known.add(`no-${n}`);
      else takesValue.add(n);
    }
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (!arg.startsWith('-') || arg === '-' || /^-\d/.test(arg)) continue;
    const long = arg.startsWith('--');
    const [name, value] = long ? arg.slice(2).split(/=(.*)/s, 2) : [arg.slice(1), undefined];
    const names = long ? [name!] : [...name!];
    for (const n of names) if (!known.has(n)) return long ? `--${n}` : `-${n}`;
    // Its value is the next argument (which may start with a dash).
    if (long && value === undefined && takesValue.has(name!)) i++;
  }
  return undefined;
}
