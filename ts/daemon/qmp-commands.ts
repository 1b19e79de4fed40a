// The QMP commands of qemu-storage-daemon that concern FUSE exports, on
// the daemon: each states its arguments once (checkArguments), and the
// daemon's refusals come back as QMP errors in qsd's words.
import { createRequire } from 'node:module';
import { DaemonConfigError, type BlockdevOptions } from './config.js';
import type { StorageDaemon } from './daemon.js';
import { checkArguments, QmpError, type QmpHandler } from './qmp-handler.js';
import { readBlockdev, readExport } from './schema.js';

const { version: packageVersion } = createRequire(import.meta.url)('../../package.json') as { version: string };

/** The QEMU whose QMP and command line we follow. */
export const QEMU_VERSION = { major: 7, minor: 2, micro: 0 };
export const PACKAGE = `fuse-export-storage-daemon ${packageVersion}`;

/** A daemon refusal is the client's error; anything else is ours and stays an Error. */
async function refusalsAsQmp<T>(body: () => Promise<T> | T): Promise<T> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof DaemonConfigError) throw new QmpError(error.message);
    throw error;
  }
}

/** Everything a QMP client may ask of `daemon`; `quit` calls `onQuit` once its answer is out. */
export function qmpCommands(daemon: StorageDaemon, onQuit: () => void): Record<string, QmpHandler> {
  const commands: Record<string, QmpHandler> = {
    'query-version': () => ({ qemu: QEMU_VERSION, package: PACKAGE }),
    'query-commands': () => Object.keys(commands).map((name) => ({ name })),
    'blockdev-add': (args) => refusalsAsQmp(() => daemon.addBlockdev(readBlockdev(args))).then(() => ({})),
    'blockdev-del': (args) => {
      const { 'node-name': name } = checkArguments(args, { 'node-name': 'str' });
      return refusalsAsQmp(() => daemon.deleteBlockdev(name)).then(() => ({}));
    },
    'block-export-add': (args) => refusalsAsQmp(() => daemon.addExport(readExport(args))).then(() => ({})),
    'block-export-del': (args) => {
      const { id } = checkArguments(args, { id: 'str', mode: { values: ['safe', 'hard'], optional: true } });
      // The answer comes at once; BLOCK_EXPORT_DELETED follows the unmount.
      return refusalsAsQmp(() => void daemon.removeExport(id)).then(() => ({}));
    },
    'query-block-exports': () => daemon.list(),
    'query-named-block-nodes': (args) => {
      checkArguments(args, { flat: 'bool?' });
      return [...daemon.nodes.entries()].map(([name, options]) => nodeInfo(daemon, name, options));
    },
    block_resize: (args) => {
      const { 'node-name': name, device, size } = checkArguments(args, { 'node-name': 'str?', device: 'str?', size: 'int' });
      const node = name ?? device;
      if (node === undefined) throw new QmpError("Parameter 'node-name' is missing");
      return refusalsAsQmp(() => daemon.resize(node, size)).then(() => ({}));
    },
    'query-blockstats': () =>
      daemon.counters().map((c) => ({
        'node-name': c.nodeName,
        stats: {
          rd_bytes: c.bytesRead,
          wr_bytes: c.bytesWritten,
          rd_operations: c.latencies.find((l) => l.op === 'read')?.counts.reduce((a, b) => a + b, 0) ?? 0,
          wr_operations: c.latencies.find((l) => l.op === 'write')?.counts.reduce((a, b) => a + b, 0) ?? 0,
          requests: c.legacyRequests + c.ringRequests,
          errors: c.errors,
          in_flight: c.inFlight,
        },
      })),
    quit: () => {
      setImmediate(onQuit);
      return {};
    },
  };
  return commands;
}

/** A node as `query-named-block-nodes` shows it (the fields scripts read). */
function nodeInfo(daemon: StorageDaemon, name: string, options: BlockdevOptions) {
  const exp = daemon.exportOf(name);
  return {
    'node-name': name,
    drv: options.driver,
    ro: options['read-only'] === true,
    encrypted: false,
    detect_zeroes: 'off',
    file: typeof options.filename === 'string' ? options.filename : name,
    ...(exp ? { image: { filename: exp.info.image, format: exp.info.format, 'virtual-size': exp.info.size } } : {}),
  };
}
