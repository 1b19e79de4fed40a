// The options of an export, shared by the CLI and the Node API: defaults,
// and validation with messages that name the option and the fix.
import { availableParallelism } from 'node:os';

export type Switch = 'on' | 'off' | 'auto';
export type CacheMode = 'direct' | 'writeback';
/**
 * How the image's bytes are laid out. `auto` recognises every format QEMU's
 * probe does; raw and qcow2 (chains imago follows) are served natively,
 * the rest through QEMU's block layer (a qemu-nbd child).
 */
export type ImageFormat = (typeof FORMATS)[number];

export interface ExportOptions {
  /**
   * Disk image file or block device to export, or an NBD URI
   * (`nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///EXPORT?socket=PATH`, `nbds://`).
   */
  image: string;
  /** Existing regular file that becomes the image. */
  mountpoint: string;
  writable?: boolean;
  growable?: boolean;
  allowOther?: Switch;
  ioUring?: Switch;
  /** FUSE passthrough: the kernel reads and writes the image itself. */
  passthrough?: Switch;
  threads?: number;
  queueDepth?: number;
  /**
   * Microseconds an I/O thread may busy-poll for its next completion before
   * it sleeps, adapted to how soon completions come (0: never poll). Cuts
   * the latency of shallow I/O at the cost of CPU while it lasts, and costs
   * deep I/O its batching: off (0) unless asked for. 250 suits a disk.
   */
  pollMaxUs?: number;
  cache?: CacheMode;
  /** `auto` (default): qcow2 when the header says so, else raw. */
  format?: ImageFormat;
  /** Milliseconds a stop waits for in-flight requests before it aborts. */
  shutdownTimeout?: number;
  /**
   * NBD images and images QEMU serves: seconds requests wait for a lost
   * server (or a restarted qemu-nbd) to come back before they fail with
   * EIO; 0 (the default) halts an NBD export when its server goes, and
   * gives QEMU's child 30 s.
   */
  reconnectDelay?: number;
  /** The key of an encrypted image (LUKS, encrypted qcow2); one trailing newline is dropped. */
  keyFile?: string;
  /** The password of the image's server (HTTP authentication). */
  passwordFile?: string;
  /** The CA that signed an HTTPS server's certificate (instead of the system's). */
  caFile?: string;
  /** Writes go to a temporary overlay, thrown away at exit; the image is never written. */
  snapshot?: boolean;
  /** Writes go to this qcow2 overlay over the image, created when missing. */
  overlay?: string;
}

/** The file options stay optional: they are absent unless given. */
type FileOptions = 'keyFile' | 'passwordFile' | 'caFile' | 'overlay';
export type ResolvedOptions = Required<Omit<ExportOptions, FileOptions>> & Pick<ExportOptions, FileOptions>;

/** How `start()` reports what happens before it resolves. */
export interface StartHooks {
  /**
   * Warnings raised while starting (a dead mount cleared, a fallback taken),
   * as they happen. Without it they are emitted as 'warning' events right
   * after `start()` resolves.
   */
  onWarning?: (warning: { message: string; event?: string; [field: string]: unknown }) => void;
  /**
   * I/O threads shared with other exports (`Core.startIoThreads`; the
   * storage daemon's). Without them the export starts `threads` of its own.
   */
  ioThreads?: IoThreadSet[];
}

/** Started I/O threads that exports share; closed, they end once their exports have left them. */
export interface IoThreadSet {
  close(): void;
}

export const SWITCHES: readonly Switch[] = ['on', 'off', 'auto'];
export const CACHE_MODES: readonly CacheMode[] = ['direct', 'writeback'];
export const FORMATS = [
  'auto',
  'raw',
  'qcow2',
  'bochs',
  'cloop',
  'dmg',
  'luks',
  'parallels',
  'qcow',
  'qed',
  'vdi',
  'vhdx',
  'vmdk',
  'vpc',
] as const;
export const MAX_THREADS = 1024;
export const MAX_QUEUE_DEPTH = 4096;
export const MAX_POLL_US = 10_000;

export const DEFAULTS = {
  writable: false,
  growable: false,
  allowOther: 'auto' as Switch,
  ioUring: 'auto' as Switch,
  passthrough: 'auto' as Switch,
  threads: availableParallelism(),
  queueDepth: 64,
  pollMaxUs: 0,
  cache: 'direct' as CacheMode,
  format: 'auto' as ImageFormat,
  shutdownTimeout: 10_000,
  reconnectDelay: 0,
  snapshot: false,
};

/** Whether the image argument names an NBD server rather than a file. */
export function isNbdUri(image: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(image);
}

/** Whether the image lives on a server (NBD, or a place QEMU reads) rather than in a local file. */
export function isRemoteImage(image: string): boolean {
  return isNbdUri(image) || /^((https?|ftps?|ssh|iscsi|nfs):\/\/|rbd:|json:)/.test(image);
}

export class OptionError extends Error {
  override name = 'OptionError';
}

/** An I/O thread count, refused in the words of the `threads` option. */
export function checkThreads(value: number): number {
  return integerIn('threads', value, 1, MAX_THREADS);
}

function integerIn(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new OptionError(`${name} must be a whole number from ${min} to ${max}, not ${value}`);
  }
  return value;
}

function oneOf<T extends string>(name: string, value: T, allowed: readonly T[]): T {
  if (!allowed.includes(value)) {
    throw new OptionError(`${name} must be one of ${allowed.join(', ')}, not ${JSON.stringify(value)}`);
  }
  return value;
}

export function resolveOptions(options: ExportOptions): ResolvedOptions {
  if (typeof options.image !== 'string' || options.image === '') {
    throw new OptionError('an image path is required');
  }
  if (typeof options.mountpoint !== 'string' || options.mountpoint === '') {
    throw new OptionError('a mountpoint path is required');
  }
  const merged = { ...DEFAULTS, ...stripUndefined(options) } as ResolvedOptions;
  if (merged.snapshot && merged.overlay !== undefined) {
    throw new OptionError('--snapshot and --overlay exclude each other: one overlay takes the writes');
  }
  // The image itself is never written: the overlay is.
  if (merged.snapshot || merged.overlay !== undefined) merged.writable = true;
  if (merged.growable && !merged.writable) {
    throw new OptionError('--growable needs --writable');
  }
  oneOf('allow-other', merged.allowOther, SWITCHES);
  oneOf('io-uring', merged.ioUring, SWITCHES);
  oneOf('passthrough', merged.passthrough, SWITCHES);
  oneOf('cache', merged.cache, CACHE_MODES);
  oneOf('format', merged.format, FORMATS);
  checkThreads(merged.threads);
  integerIn('queue-depth', merged.queueDepth, 1, MAX_QUEUE_DEPTH);
  integerIn('poll-max-us', merged.pollMaxUs, 0, MAX_POLL_US);
  integerIn('shutdown-timeout', merged.shutdownTimeout, 0, 24 * 3600 * 1000);
  if (!Number.isFinite(merged.reconnectDelay) || merged.reconnectDelay < 0 || merged.reconnectDelay > 3600) {
    throw new OptionError(`reconnect-delay must be from 0 to 3600 seconds, not ${merged.reconnectDelay}`);
  }
  for (const name of ['keyFile', 'passwordFile', 'caFile', 'overlay'] as const) {
    const value = merged[name];
    if (value !== undefined && (typeof value !== 'string' || value === '')) {
      throw new OptionError(`${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} takes a file's path`);
    }
  }
  return merged;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
