// The keys qemu-storage-daemon's options take, as far as we serve them, and
// their types. Key=value gives strings ("on", "64"), JSON (and QMP) typed
// values; both come out typed. A key we do not serve is refused by name,
// never dropped: a drop-in must not quietly do less than it was told.
import { MAX_POLL_US, MAX_QUEUE_DEPTH, SWITCHES } from '../options.js';
import {
  DaemonConfigError,
  type BlockdevOptions,
  type ChardevSpec,
  type FuseExportSpec,
  type IothreadSpec,
  type MonitorSpec,
  type SecretSpec,
} from './config.js';

/** Reads one key's value; `key` is its dotted path, for messages. */
type Read = (value: unknown, key: string) => unknown;

/** A group of keys: each read by a function, or a nested group. */
interface Shape {
  readonly keys: Readonly<Record<string, Read | Shape>>;
  readonly required?: readonly string[];
}

/** What `--object` / `object-add` makes. */
export type ObjectSpec = { 'qom-type': 'iothread'; spec: IothreadSpec } | { 'qom-type': 'secret'; spec: SecretSpec };

const string: Read = (value, key) => {
  if (typeof value !== 'string') refuse(`"${key}" must be a string`);
  return value;
};

/** QEMU's well-formed ids (node names, export and object ids). */
const id: Read = (value, key) => {
  const text = string(value, key) as string;
  if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(text)) {
    refuse(`"${key}" must start with a letter and hold only letters, digits, "-", "." and "_", not "${text}"`);
  }
  return text;
};

const TRUE = ['on', 'yes', 'true', 'y'];
const FALSE = ['off', 'no', 'false', 'n'];

const bool: Read = (value, key) => {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'string' && TRUE.includes(value)) return true;
  if (typeof value === 'string' && FALSE.includes(value)) return false;
  return refuse(`"${key}" must be on or off, not ${JSON.stringify(value)}`);
};

/** A boolean we serve one way only. */
function only(expected: boolean, why: string): Read {
  return (value, key) => {
    if (bool(value, key) !== expected) refuse(`${key}=${expected ? 'off' : 'on'} is not served: ${why}`);
    return expected;
  };
}

/** Integers as QEMU reads them from key=value: decimal, 0x hex, 0 octal. */
function integer(min: number, max: number): Read {
  return (value, key) => {
    const number = typeof value === 'string' ? parseInteger(value) : value;
    if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < min || number > max) {
      refuse(`"${key}" must be a whole number from ${min} to ${max}, not ${JSON.stringify(value)}`);
    }
    return number;
  };
}

function parseInteger(text: string): number {
  if (/^0x[0-9a-f]+$/i.test(text)) return Number.parseInt(text.slice(2), 16);
  if (/^0[0-7]+$/.test(text)) return Number.parseInt(text.slice(1), 8);
  return /^(0|[1-9][0-9]*)$/.test(text) ? Number(text) : Number.NaN;
}

function oneOf(allowed: readonly string[]): Read {
  return (value, key) => {
    if (typeof value !== 'string' || !allowed.includes(value)) {
      refuse(`"${key}" must be one of ${allowed.join(', ')}, not ${JSON.stringify(value)}`);
    }
    return value;
  };
}

const onOffAuto = oneOf(SWITCHES);
const count = integer(0, Number.MAX_SAFE_INTEGER);

/** `iothread=a` or `iothread.0=a,iothread.1=b`. */
const strings: Read = (value, key) =>
  Array.isArray(value) ? value.map((item, i) => string(item, `${key}.${i}`)) : string(value, key);

/** A child node: a node name, or a node given in place. */
const child: Read = (value, key) => (typeof value === 'string' ? value : blockdev(value, key));

/** `backing`: as `file`, or null (JSON) for none. */
const backing: Read = (value, key) => (value === null ? null : child(value, key));

/**
 * A group whose keys depend on one of them (`driver`, `type`, `qom-type`).
 * `tag` is that key; `shapes` the shape of each value we serve.
 */
function union(tag: string, shapes: Readonly<Record<string, Shape>>): Read {
  return (value, path) => {
    const name = isRecord(value) ? value[tag] : undefined;
    const tagKey = dotted(path, tag);
    if (name === undefined) refuse(`"${tagKey}" is required`);
    if (typeof name !== 'string' || !Object.hasOwn(shapes, name)) {
      refuse(`${tagKey} ${JSON.stringify(name)} is not served`);
    }
    return readShape(value, shapes[name], path);
  };
}

function readShape(value: unknown, shape: Shape, path: string): Record<string, unknown> {
  if (!isRecord(value)) refuse(`"${path}" must be a group of keys`);
  const read = Object.entries(value).map(([key, item]): [string, unknown] => {
    const field = Object.hasOwn(shape.keys, key) ? shape.keys[key] : undefined;
    const name = dotted(path, key);
    if (field === undefined) refuse(`unknown key "${name}"`);
    return [key, typeof field === 'function' ? field(item, name) : readShape(item, field, name)];
  });
  const missing = shape.required?.find((key) => !Object.hasOwn(value, key));
  if (missing !== undefined) refuse(`"${dotted(path, missing)}" is required`);
  return Object.fromEntries(read);
}

function dotted(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function refuse(message: string): never {
  throw new DaemonConfigError(message);
}

// Block nodes: the keys every driver takes, then each driver's own.
const NODE = {
  driver: string,
  'node-name': id,
  'read-only': bool,
  'auto-read-only': bool,
  discard: oneOf(['ignore', 'unmap']),
  'detect-zeroes': oneOf(['off', 'on', 'unmap']),
  cache: { keys: { direct: bool, 'no-flush': bool } },
};

const POSIX_FILE: Shape = {
  // aio only picks how QEMU would issue I/O; ours is chosen by io-uring.
  keys: { ...NODE, filename: string, aio: oneOf(['threads', 'native', 'io_uring']), locking: onOffAuto },
  required: ['filename'],
};

const SOCKET_ADDRESS = union('type', {
  unix: { keys: { type: string, path: string }, required: ['path'] },
  inet: { keys: { type: string, host: string, port: string }, required: ['host', 'port'] },
});

const FORMAT: Shape = { keys: { ...NODE, file: child }, required: ['file'] };
/** The formats whose images may have a backing file. */
const COW_FORMAT: Shape = { keys: { ...FORMAT.keys, backing }, required: ['file'] };

const DRIVERS: Readonly<Record<string, Shape>> = {
  file: POSIX_FILE,
  host_device: POSIX_FILE,
  nbd: { keys: { ...NODE, server: SOCKET_ADDRESS, export: string }, required: ['server'] },
  raw: FORMAT,
  qcow2: {
    keys: { ...COW_FORMAT.keys, encrypt: { keys: { format: oneOf(['aes', 'luks']), 'key-secret': string } } },
    required: ['file'],
  },
  qcow: COW_FORMAT,
  qed: COW_FORMAT,
  vmdk: COW_FORMAT,
  luks: { keys: { ...FORMAT.keys, 'key-secret': string }, required: ['file', 'key-secret'] },
  vhdx: FORMAT,
  vdi: FORMAT,
  vpc: FORMAT,
  parallels: FORMAT,
  bochs: FORMAT,
  cloop: FORMAT,
  dmg: FORMAT,
};

const blockdev = union('driver', DRIVERS);

/** `--blockdev` / `blockdev-add`: a top-level node, which must be named. */
export function readBlockdev(options: unknown): BlockdevOptions {
  const node = blockdev(options, '') as BlockdevOptions;
  if (node['node-name'] === undefined) refuse('"node-name" is required');
  return node;
}

const FUSE_EXPORT: Shape = {
  keys: {
    type: string,
    id,
    'node-name': string,
    mountpoint: string,
    writable: bool,
    growable: bool,
    'allow-other': onOffAuto,
    iothread: strings,
    'io-uring': onOffAuto,
    passthrough: onOffAuto,
    'queue-depth': integer(1, MAX_QUEUE_DEPTH),
    'poll-max-us': integer(0, MAX_POLL_US),
  },
  required: ['id', 'node-name', 'mountpoint'],
};

const EXPORT = union('type', { fuse: FUSE_EXPORT });

/** `--export` / `block-export-add`: FUSE exports only. */
export function readExport(options: unknown): FuseExportSpec {
  return EXPORT(options, '') as FuseExportSpec;
}

const OBJECTS = union('qom-type', {
  iothread: {
    keys: {
      'qom-type': string,
      id,
      'poll-max-ns': count,
      'poll-grow': count,
      'poll-shrink': count,
      'aio-max-batch': count,
    },
    required: ['id'],
  },
  secret: { keys: { 'qom-type': string, id, data: string, file: string }, required: ['id'] },
});

/** `--object` / `object-add`: iothreads and secrets. */
export function readObject(options: unknown): ObjectSpec {
  const { 'qom-type': type, ...spec } = OBJECTS(options, '') as { 'qom-type': string; id: string };
  if (type === 'iothread') return { 'qom-type': type, spec: spec as IothreadSpec };
  if (['data', 'file'].filter((key) => key in spec).length !== 1) {
    refuse('a secret takes exactly one of "data" and "file"');
  }
  return { 'qom-type': 'secret', spec: spec as SecretSpec };
}

const CHARDEV = union('backend', {
  socket: {
    keys: {
      backend: string,
      id,
      path: string,
      server: only(true, 'the daemon listens on the socket'),
      // QEMU would wait for a client before going on; we never do.
      wait: only(false, 'the daemon does not wait for a client before serving'),
    },
    required: ['id', 'path', 'server'],
  },
});

/** `--chardev socket,...`: a listening Unix socket, what the QMP monitor uses. */
export function readChardev(options: unknown): ChardevSpec {
  const { id: chardevId, path } = CHARDEV(options, '') as ChardevSpec;
  return { id: chardevId, path };
}

const MONITOR: Shape = {
  keys: {
    chardev: string,
    mode: oneOf(['control']),
    pretty: only(false, 'QMP replies are one line each'),
    id: string,
  },
  required: ['chardev'],
};

/** `--monitor`: a QMP monitor on a chardev. */
export function readMonitor(options: unknown): MonitorSpec {
  const { chardev } = readShape(options, MONITOR, '') as unknown as MonitorSpec;
  return { chardev };
}
