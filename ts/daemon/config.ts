// What `fuse-export-storage-daemon` is asked to serve, in qemu-storage-
// daemon's own terms: block nodes (--blockdev, blockdev-add), FUSE exports
// of them (--export type=fuse, block-export-add), iothreads, the QMP
// monitor's socket. The command line (cmdline.ts) and QMP (qmp.ts) both
// produce these; the daemon (daemon.ts) serves them.
import type { Switch } from '../options.js';

/**
 * A block node as QEMU's blockdev options: `driver`, `node-name`, and the
 * driver's keys, nested where QEMU nests them (`file`, `backing`,
 * `server`, `cache`). A child given by name is a string (`file: "disk0"`).
 */
export interface BlockdevOptions {
  driver: string;
  'node-name'?: string;
  [key: string]: unknown;
}

/** `--export type=fuse,...` / `block-export-add` with `type: "fuse"`: qsd's keys, then ours. */
export interface FuseExportSpec {
  type: 'fuse';
  id: string;
  'node-name': string;
  mountpoint: string;
  writable?: boolean;
  growable?: boolean;
  'allow-other'?: Switch;
  /** The iothread (or iothreads) whose threads serve the export. */
  iothread?: string | string[];
  'io-uring'?: Switch;
  passthrough?: Switch;
  'queue-depth'?: number;
  'poll-max-us'?: number;
}

/** `--object iothread,id=ID[,poll-max-ns=...]`: a named set of I/O threads. */
export interface IothreadSpec {
  id: string;
  'poll-max-ns'?: number;
  /** QEMU's adaptive polling and batching knobs: kept so they can be reported back. */
  'poll-grow'?: number;
  'poll-shrink'?: number;
  'aio-max-batch'?: number;
}

/**
 * `--object secret,id=ID,data=...` or `...,file=PATH`: a key an encrypted
 * image names by id (luks `key-secret`, qcow2 `encrypt.key-secret`).
 */
export type SecretSpec = { id: string; data: string } | { id: string; file: string };

/** `--chardev socket,id=ID,path=PATH,server=on,wait=off`: where QMP listens. */
export interface ChardevSpec {
  id: string;
  path: string;
}

/** `--monitor chardev=ID[,mode=control]`. */
export interface MonitorSpec {
  chardev: string;
}

export interface DaemonConfig {
  blockdevs: BlockdevOptions[];
  exports: FuseExportSpec[];
  iothreads: IothreadSpec[];
  secrets: SecretSpec[];
  chardevs: ChardevSpec[];
  monitors: MonitorSpec[];
  pidfile?: string;
  daemonize: boolean;
  /** `--metrics 127.0.0.1:PORT` or `unix:PATH`: Prometheus text there. */
  metrics?: string;
}

/** A refusal of the command line or of a QMP command, in words that name the option and the key. */
export class DaemonConfigError extends Error {
  override name = 'DaemonConfigError';
}
