// The storage daemon's state, in qemu-storage-daemon's terms: block nodes
// and the FUSE exports of them, added and removed while it runs (from the
// command line, QMP or the Node API), with qsd's refusals. Each export is
// a FuseExport; the daemon knows which node it serves and tells when it is
// gone.
import { EventEmitter } from 'node:events';
import { statSync, truncateSync } from 'node:fs';
import { resolve } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { availableParallelism } from 'node:os';
import { FuseExport, type ExportStats, type StoppedEvent, type StopReason } from '../lifecycle/export.js';
import type { Core } from '../lifecycle/export.js';
import type { ExportWarning } from '../lifecycle/export.js';
import type { NativeLatency } from '../native.js';
import { native } from '../native.js';
import { checkThreads, type ExportOptions, type IoThreadSet } from '../options.js';
import {
  DaemonConfigError,
  type BlockdevOptions,
  type FuseExportSpec,
  type IothreadSpec,
  type SecretSpec,
} from './config.js';
import { nodeGraph, nodeUsers, resolveNode, type ResolvedNode } from './nodes.js';
import { SecretFiles } from './secrets.js';

const run = promisify(execFile);

/** One export the daemon serves. */
export interface DaemonExport {
  id: string;
  /** The block node it serves; none for an image given by its options. */
  nodeName?: string;
  mountpoint: string;
  export: FuseExport;
  /** A stop under way (block-export-del, shutdown). */
  stopping?: Promise<StoppedEvent>;
}

/** What `query-block-exports` says of an export. */
export interface ExportSummary {
  type: 'fuse';
  id: string;
  'node-name': string;
  'shutting-down': boolean;
}

export interface ExportCounters extends ExportStats {
  id: string;
  nodeName: string;
  transport: string;
  latencies: NativeLatency[];
}

export interface StorageDaemonEvents {
  /** An export stopped and unmounted: `BLOCK_EXPORT_DELETED`. */
  exportDeleted: [{ id: string; stopped: StoppedEvent }];
  warning: [ExportWarning & { id?: string }];
}

export interface StorageDaemonOptions {
  iothreads?: readonly IothreadSpec[];
  secrets?: readonly SecretSpec[];
  /**
   * The I/O threads shared by the exports that name no iothread and by
   * every image export (default: one per CPU, as the CLI's).
   */
  defaultThreads?: number;
  /** The Rust core (a fake one in unit tests). */
  core?: Core;
}

export class StorageDaemon extends EventEmitter<StorageDaemonEvents> {
  /** The nodes added at the top (blockdev-add, --blockdev), and every named node in them. */
  readonly #blockdevs: BlockdevOptions[] = [];
  #nodes = new Map<string, BlockdevOptions>();
  readonly #exports = new Map<string, DaemonExport>();
  /** Each iothread object's thread, started when first used. */
  readonly #iothreads = new Map<string, IoThreadSet | undefined>();
  /** The threads of the exports that name no iothread, started when first used. */
  #defaultSet: IoThreadSet | undefined;
  readonly #secrets: SecretFiles;
  readonly #defaultThreads: number;
  readonly #core: Core | undefined;

  constructor({ iothreads = [], secrets = [], defaultThreads, core }: StorageDaemonOptions = {}) {
    super();
    for (const iothread of iothreads) this.#iothreads.set(iothread.id, undefined);
    this.#secrets = new SecretFiles(secrets);
    this.#defaultThreads = defaultThreads ?? availableParallelism();
    this.#core = core;
  }

  /** `--blockdev`, `blockdev-add`: a node, checked as far as it can be without opening it. */
  addBlockdev(options: BlockdevOptions): void {
    const name = options['node-name'];
    if (typeof name !== 'string' || name === '') {
      throw new DaemonConfigError("'node-name' must be specified for the root node");
    }
    const nodes = nodeGraph([...this.#blockdevs, options]);
    resolveNode(nodes, name);
    this.#blockdevs.push(options);
    this.#nodes = nodes;
  }

  /** `blockdev-del`: a node added at the top, refused while an export or another node uses it. */
  deleteBlockdev(name: string): void {
    const index = this.#blockdevs.findIndex((node) => node['node-name'] === name);
    if (index < 0) throw new DaemonConfigError(`Failed to find node with node-name='${name}'`);
    const exporter = this.#exporterOf(name);
    if (exporter) throw new DaemonConfigError(`Node '${name}' is busy: block device is in use by block export '${exporter.id}'`);
    const user = nodeUsers(this.#nodes, name)[0];
    if (user !== undefined) throw new DaemonConfigError(`Node '${name}' is busy: node is used as child of '${user}'`);
    this.#blockdevs.splice(index, 1);
    this.#nodes = nodeGraph(this.#blockdevs);
  }

  /** `--export`, `block-export-add`: mounts and serves before it resolves. */
  async addExport(spec: FuseExportSpec): Promise<FuseExport> {
    this.#checkId(spec.id);
    const nodeName = spec['node-name'];
    if (!this.#nodes.has(nodeName)) {
      throw new DaemonConfigError(`Cannot find device='${nodeName}' nor node-name='${nodeName}'`);
    }
    checkRegularFile(spec.mountpoint);
    this.#checkMountpoint(spec.mountpoint);
    const iothreads = spec.iothread === undefined ? [] : [spec.iothread].flat();
    for (const id of iothreads) {
      if (!this.#iothreads.has(id)) throw new DaemonConfigError(`Cannot find iothread ${id}`);
    }
    const node = resolveNode(this.#nodes, nodeName);
    if (spec.writable && node.readOnly) {
      throw new DaemonConfigError(`Block node is read-only: export ${spec.id} cannot be writable`);
    }
    return this.#serve(spec.id, nodeName, {
      ...this.#imageOptions(node),
      mountpoint: spec.mountpoint,
      writable: spec.writable ?? false,
      growable: spec.growable ?? false,
      allowOther: spec['allow-other'] ?? 'auto',
      ioUring: spec['io-uring'],
      passthrough: spec.passthrough,
      queueDepth: spec['queue-depth'],
      pollMaxUs: spec['poll-max-us'],
    }, iothreads);
  }

  /**
   * An export of an image given by its options, as the CLI takes them,
   * rather than of a block node: listed with its image as the node. Its
   * threads are the daemon's default ones. Its mountpoint is refused in the
   * CLI's words, not qsd's, so that the CLI says what it always said.
   */
  async addImageExport(id: string, options: Omit<ExportOptions, 'threads'>): Promise<FuseExport> {
    this.#checkId(id);
    this.#checkMountpoint(options.mountpoint);
    return this.#serve(id, undefined, options, []);
  }

  /** `block-export-del`: drains and unmounts; `exportDeleted` follows. */
  removeExport(id: string, reason: StopReason = 'api'): Promise<StoppedEvent> {
    const entry = this.#exports.get(id);
    if (!entry) throw new DaemonConfigError(`Export '${id}' is not found`);
    entry.stopping ??= entry.export.stop(reason);
    return entry.stopping;
  }

  /** `block_resize`: the live export's file when the node has one, else the image itself. */
  async resize(nodeName: string, size: number): Promise<void> {
    if (!this.#nodes.has(nodeName)) {
      throw new DaemonConfigError(`Cannot find device='${nodeName}' nor node-name='${nodeName}'`);
    }
    if (!Number.isSafeInteger(size) || size < 0) throw new DaemonConfigError(`Invalid size ${size}`);
    const exporter = this.#exporterOf(nodeName);
    if (exporter) return exporter.export.resize(size);
    const node = resolveNode(this.#nodes, nodeName);
    if (node.readOnly) throw new DaemonConfigError(`Node '${nodeName}' is read-only`);
    if (node.format === 'raw' && !node.image.includes('://')) return truncateSync(node.image, size);
    await run('qemu-img', ['resize', '-q', '-f', node.format, node.image, String(size)]);
  }

  get nodes(): ReadonlyMap<string, BlockdevOptions> {
    return this.#nodes;
  }

  list(): ExportSummary[] {
    return [...this.#exports.values()].map((entry) => ({
      type: 'fuse',
      id: entry.id,
      'node-name': nodeOf(entry),
      'shutting-down': entry.stopping !== undefined,
    }));
  }

  /** Every export's counters and latencies (metrics, query-blockstats). */
  counters(): ExportCounters[] {
    return [...this.#exports.values()].map((entry) => ({
      ...entry.export.stats(),
      id: entry.id,
      nodeName: nodeOf(entry),
      transport: entry.export.info.transport,
      latencies: entry.export.latencies(),
    }));
  }

  /** The export serving `nodeName`, if any. */
  exportOf(nodeName: string): FuseExport | undefined {
    return this.#exporterOf(nodeName)?.export;
  }

  /** Stops every export (drain, unmount), then ends the I/O threads and forgets the secrets' files. */
  async shutdown(reason: StopReason = 'api'): Promise<void> {
    await Promise.allSettled([...this.#exports.keys()].map((id) => this.removeExport(id, reason)));
    for (const set of [this.#defaultSet, ...this.#iothreads.values()]) set?.close();
    this.#defaultSet = undefined;
    for (const id of this.#iothreads.keys()) this.#iothreads.set(id, undefined);
    this.#secrets.remove();
  }

  #coreInUse(): Core {
    return this.#core ?? native();
  }

  /**
   * The shared threads of an export: its iothreads' (one thread each, as
   * qsd's), else the default set; each started on first use, so that a
   * daemon serving nothing runs none.
   */
  #threadsFor(iothreads: string[]): IoThreadSet[] {
    if (iothreads.length === 0) {
      this.#defaultSet ??= this.#coreInUse().startIoThreads(checkThreads(this.#defaultThreads), 'fuse-export-io');
      return [this.#defaultSet];
    }
    return iothreads.map((id) => {
      const set = this.#iothreads.get(id) ?? this.#coreInUse().startIoThreads(1, `iothread-${id}-`);
      this.#iothreads.set(id, set);
      return set;
    });
  }

  #exporterOf(nodeName: string): DaemonExport | undefined {
    return [...this.#exports.values()].find((e) => e.nodeName === nodeName);
  }

  #checkId(id: string): void {
    if (this.#exports.has(id)) throw new DaemonConfigError(`Block export id '${id}' is already in use`);
  }

  /** No two exports on one file: the second mount would hide the first. */
  #checkMountpoint(mountpoint: string): void {
    const other = [...this.#exports.values()].find((e) => resolve(e.mountpoint) === resolve(mountpoint));
    if (other) throw new DaemonConfigError(`'${mountpoint}' is already the mountpoint of export '${other.id}'`);
  }

  /** Mounts, serves on shared threads, and keeps the export until it stops, however it stops. */
  async #serve(
    id: string,
    nodeName: string | undefined,
    options: Omit<ExportOptions, 'threads'>,
    iothreads: string[],
  ): Promise<FuseExport> {
    const forward = (warning: ExportWarning) => this.emit('warning', { ...warning, id });
    const hooks = { onWarning: forward, ioThreads: this.#threadsFor(iothreads) };
    const exp = await FuseExport.start(options, hooks, this.#coreInUse());
    this.#exports.set(id, { id, nodeName, mountpoint: options.mountpoint, export: exp });
    exp.on('warning', forward);
    // An export that ends by itself (unmounted from outside, halted) is gone too.
    exp.on('stopped', (stopped) => this.#forget(id, stopped));
    return exp;
  }

  #imageOptions(node: ResolvedNode) {
    return {
      image: node.image,
      format: node.format,
      cache: node.cache,
      ...(node.keySecret === undefined ? {} : { keyFile: this.#secrets.fileOf(node.keySecret) }),
    };
  }

  #forget(id: string, stopped: StoppedEvent): void {
    if (!this.#exports.delete(id)) return;
    this.emit('exportDeleted', { id, stopped });
  }
}

/** What an export lists as its node: an image export's image stands for the node it has none of. */
function nodeOf(entry: DaemonExport): string {
  return entry.nodeName ?? entry.export.info.image;
}

/** qsd's mountpoint rule: an existing regular file. */
function checkRegularFile(mountpoint: string): void {
  let stat;
  try {
    stat = statSync(mountpoint);
  } catch (error) {
    throw new DaemonConfigError(`Failed to stat '${mountpoint}': ${(error as Error).message}`);
  }
  if (!stat.isFile()) throw new DaemonConfigError(`'${mountpoint}' is not a regular file`);
}
