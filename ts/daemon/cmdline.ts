// qemu-storage-daemon's command line, as far as fuse-export-storage-daemon
// serves it: --blockdev, --export type=fuse, --object iothread|secret,
// --chardev socket with --monitor, --pidfile, --daemonize, and our
// --metrics. What we do not serve is refused by name, never ignored.
import { isIP } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { DaemonConfigError, type BlockdevOptions, type DaemonConfig, type FuseExportSpec } from './config.js';
import { parseKeyval, parseKeyvalOrJson } from './keyval.js';
import { childNames, nodeGraph, resolveNode } from './nodes.js';
import { readBlockdev, readChardev, readExport, readMonitor, readObject } from './schema.js';

/** What the command line asks for: a configuration to serve, or a text to print. */
export type DaemonInvocation = { action: 'serve'; config: DaemonConfig } | { action: 'help' } | { action: 'version' };

type Info = Exclude<DaemonInvocation, { action: 'serve' }>;

interface OptionHandler {
  takesValue: boolean;
  apply(config: DaemonConfig, value: string): void;
}

interface Given {
  option: string;
  value: string;
}

const INFO: Readonly<Record<string, Info>> = {
  '-h': { action: 'help' },
  '--help': { action: 'help' },
  '-V': { action: 'version' },
  '--version': { action: 'version' },
};

/** qemu-storage-daemon's options we know and do not serve, with why. */
const REFUSED: Readonly<Record<string, string>> = {
  '--nbd-server': 'exports are FUSE exports only',
  '--trace': 'tracing is QEMU-internal',
  '-T': 'tracing is QEMU-internal',
};

const OPTIONS: Readonly<Record<string, OptionHandler>> = {
  '--blockdev': valued((config, text) => {
    config.blockdevs.push(parsed('--blockdev', text, 'driver', parseKeyvalOrJson, readBlockdev));
  }),
  '--export': valued((config, text) => {
    config.exports.push(parsed('--export', text, 'type', parseKeyvalOrJson, readExport));
  }),
  '--object': valued((config, text) => {
    const object = parsed('--object', text, 'qom-type', parseKeyvalOrJson, readObject);
    if (object['qom-type'] === 'iothread') config.iothreads.push(object.spec);
    else config.secrets.push(object.spec);
  }),
  // --chardev and --monitor are QemuOpts in QEMU: no JSON form.
  '--chardev': valued((config, text) => {
    config.chardevs.push(parsed('--chardev', text, 'backend', parseKeyval, readChardev));
  }),
  '--monitor': valued((config, text) => {
    config.monitors.push(parsed('--monitor', text, 'chardev', parseKeyval, readMonitor));
  }),
  '--pidfile': valued((config, path) => {
    if (path === '') refuse("--pidfile takes a file's path");
    config.pidfile = path;
  }),
  '--metrics': valued((config, address) => {
    config.metrics = metricsAddress(address);
  }),
  '--daemonize': {
    takesValue: false,
    apply: (config) => {
      config.daemonize = true;
    },
  },
};

/**
 * Reads qemu-storage-daemon's arguments (without the program's name).
 * As qsd does, -h and -V win over the options after them, but not over an
 * unknown option before them; references between options are checked once
 * all are read.
 */
export function parseDaemonArgs(argv: readonly string[]): DaemonInvocation {
  const given = readArgs(argv);
  if (!Array.isArray(given)) return given;
  const config: DaemonConfig = {
    blockdevs: [],
    exports: [],
    iothreads: [],
    secrets: [],
    chardevs: [],
    monitors: [],
    daemonize: false,
  };
  for (const { option, value } of given) OPTIONS[option].apply(config, value);
  checkReferences(config);
  return { action: 'serve', config };
}

function valued(apply: OptionHandler['apply']): OptionHandler {
  return { takesValue: true, apply };
}

/** The options in order, each with its value (`--opt value` or `--opt=value`). */
function readArgs(argv: readonly string[]): Given[] | Info {
  const given: Given[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const equals = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const option = equals === -1 ? arg : arg.slice(0, equals);
    const inline = equals === -1 ? undefined : arg.slice(equals + 1);
    const handler = knownOption(arg, option);
    const takesValue = 'action' in handler ? false : handler.takesValue;
    if (!takesValue && inline !== undefined) refuse(`${option} takes no value`);
    if ('action' in handler) return handler;
    const value = takesValue ? (inline ?? argv[++i]) : '';
    if (value === undefined) refuse(`${option} needs a value`);
    given.push({ option, value });
  }
  return given;
}

function knownOption(arg: string, option: string): OptionHandler | Info {
  if (Object.hasOwn(INFO, option)) return INFO[option];
  if (Object.hasOwn(OPTIONS, option)) return OPTIONS[option];
  if (Object.hasOwn(REFUSED, option)) refuse(`${option} is not served: ${REFUSED[option]}`);
  if (arg.startsWith('-') && arg !== '-') refuse(`unknown option "${option}"`);
  return refuse(`unexpected argument "${arg}"`);
}

/** One option's argument read, its refusals prefixed with the option (and the id or node name it gives). */
function parsed<T>(
  option: string,
  text: string,
  impliedKey: string,
  parse: (text: string, impliedKey: string) => Record<string, unknown>,
  read: (options: Record<string, unknown>) => T,
): T {
  const options = within(option, () => parse(text, impliedKey));
  return within(label(option, options), () => read(options));
}

function label(option: string, options: Record<string, unknown>): string {
  for (const key of ['id', 'node-name']) {
    const name = options[key];
    if (typeof name === 'string') return `${option} ${key}=${name}`;
  }
  return option;
}

function within<T>(where: string, run: () => T): T {
  try {
    return run();
  } catch (error) {
    if (error instanceof DaemonConfigError) throw new DaemonConfigError(`${where}: ${error.message}`);
    throw error;
  }
}

/** `HOST:PORT` (an IP address or localhost; IPv6 in brackets) or `unix:PATH`. */
function metricsAddress(address: string): string {
  if (address.startsWith('unix:') && address.length > 'unix:'.length) return address;
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  const host = match?.[1] ?? match?.[2] ?? '';
  const hostOk = match?.[1] !== undefined ? isIP(host) === 6 : isIP(host) === 4 || host === 'localhost';
  if (!hostOk || !(port >= 1 && port <= 65535)) {
    refuse(`--metrics takes HOST:PORT (an IP address or localhost, IPv6 in brackets) or unix:PATH, not "${address}"`);
  }
  return address;
}

/** qsd needs a thing defined before an option names it; we check once all are read. */
function checkReferences(config: DaemonConfig): void {
  const nodes = within('--blockdev', () => nodeGraph(config.blockdevs));
  config.blockdevs.forEach((node) => checkChildren(node, nodes));
  checkUnique(config);
  checkMonitors(config);
  config.exports.forEach((spec) => checkExport(spec, nodes, config));
}

/** Each id names one thing (iothreads and secrets share QOM's), each mountpoint serves one export. */
function checkUnique(config: DaemonConfig): void {
  const objectIds = [...config.iothreads, ...config.secrets].map((object) => object.id);
  refuseTwice('--object', 'id', objectIds);
  const chardevIds = config.chardevs.map((chardev) => chardev.id);
  refuseTwice('--chardev', 'id', chardevIds);
  const exportIds = config.exports.map((spec) => spec.id);
  refuseTwice('--export', 'id', exportIds);
  // ./disk.img and disk.img are one mountpoint.
  const twice = config.exports[secondOf(config.exports.map((spec) => resolvePath(spec.mountpoint)))];
  if (twice) refuse(`--export id=${twice.id}: mountpoint "${twice.mountpoint}" is used twice`);
}

/** A monitor needs its chardev, which serves one monitor. */
function checkMonitors(config: DaemonConfig): void {
  const used = config.monitors.map((monitor) => monitor.chardev);
  refuseTwice('--monitor', 'chardev', used);
  const chardevs = new Set(config.chardevs.map((chardev) => chardev.id));
  const unknown = used.find((chardev) => !chardevs.has(chardev));
  if (unknown !== undefined) refuse(`--monitor chardev=${unknown}: chardev "${unknown}" is not defined`);
}

function checkChildren(node: BlockdevOptions, nodes: ReadonlyMap<string, BlockdevOptions>): void {
  const missing = childNames(node).find((name) => !nodes.has(name));
  if (missing !== undefined) {
    refuse(`--blockdev node-name=${node['node-name']}: node "${missing}" is not defined`);
  }
}

function refuseTwice(option: string, key: string, values: readonly string[]): void {
  const twice = secondOf(values);
  if (twice !== -1) refuse(`${option}: ${key} "${values[twice]}" is used twice`);
}

/** The index of the first value that was already given, or -1. */
function secondOf(values: readonly string[]): number {
  return values.findIndex((value, i) => values.indexOf(value) !== i);
}

/** What an export names must exist, and its node must be one we can serve as asked. */
function checkExport(spec: FuseExportSpec, nodes: ReadonlyMap<string, BlockdevOptions>, config: DaemonConfig): void {
  const where = `--export id=${spec.id}`;
  const node = within(where, () => resolveNode(nodes, spec['node-name']));
  if (node.readOnly && spec.writable === true) {
    refuse(`${where}: node "${spec['node-name']}" is read-only, so writable=on is not served`);
  }
  if (node.keySecret !== undefined && !config.secrets.some((secret) => secret.id === node.keySecret)) {
    refuse(`${where}: its image's key-secret "${node.keySecret}" is no --object secret`);
  }
  const iothreads = new Set(config.iothreads.map((iothread) => iothread.id));
  const missing = [spec.iothread ?? []].flat().find((name) => !iothreads.has(name));
  if (missing !== undefined) refuse(`${where}: iothread "${missing}" is not defined`);
}

function refuse(message: string): never {
  throw new DaemonConfigError(message);
}
